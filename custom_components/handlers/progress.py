"""A progress bar for bundle configs."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """Ignite's tqdm ``ProgressBar`` in the ``attach(engine)`` form that MONAI handler lists expect.

    Args:
        output_transform: maps ``engine.state.output`` to a dict of values shown after the bar (e.g. the losses).
        persist: keep the finished bar of each epoch on screen.
        state_attributes: names of ``engine.state`` attributes shown after the values (e.g. ``consistency``, the
            collapse status that ``TrainingLog`` sets).
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = True,
                 state_attributes: list[str] | None = None) -> None:
        self.output_transform = output_transform
        self.persist = persist
        self.state_attributes = state_attributes

    def attach(self, engine: Engine) -> None:
        ProgressBar(persist=self.persist).attach(engine, output_transform=self.output_transform,
                                                 state_attributes=self.state_attributes)
