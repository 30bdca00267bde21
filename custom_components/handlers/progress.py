"""Progress for bundle configs: a progress bar on a terminal, and an estimate of the time left for the whole run."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler", "format_duration", "log_epoch_metrics"]

logger = logging.getLogger("custom_components")


def log_epoch_metrics(engine: Engine) -> None:
    """``epoch_print_logger`` for MONAI's ``StatsHandler`` on a trainer: ``Epoch[12] Metrics -- train_mean_dice:
    0.6120`` once per epoch, without the ``Key metric: ... best value ...`` line MONAI repeats after it every epoch
    (the validation handlers report the best model)."""
    metrics = {name: value for name, value in engine.state.metrics.items() if isinstance(value, (int, float))}
    if metrics:
        values = " ".join(f"{name}: {value:.4f}" for name, value in sorted(metrics.items()))
        logger.info(f"Epoch[{engine.state.epoch}] Metrics -- {values}")


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``, ``5400`` -> ``"1 h 30 min"``, ``42.3`` -> ``"42 s"``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class ProgressBarHandler:
    """Ignite's tqdm ``ProgressBar`` in the ``attach(engine)`` form that MONAI handler lists expect, shown only when
    the error stream is a terminal (redirected to a file, a bar rewritten at every iteration only fills the log),
    plus a log line with the time per epoch, the time spent and the estimated time left for the whole run
    (``epoch 12/50: 3.4 s per epoch, 41 s so far, about 2 min 9 s left``) after the first epoch, then at most every
    ``eta_interval`` seconds, and at the last epoch. The estimate includes whatever else runs between epochs (validation, checkpoints) and starts
    from the epoch a resumed run began at.

    Args:
        output_transform: maps ``engine.state.output`` to a dict of values shown after the bar (e.g. the losses).
        persist: keep the finished bar of each epoch on screen.
        state_attributes: names of ``engine.state`` attributes shown after the values (e.g. ``consistency``, the
            collapse status that ``TrainingLog`` sets).
        eta_interval: seconds between two time-left lines; None logs none (e.g. a one-epoch evaluation).
        bar: show the bar: None when the error stream is a terminal, or True / False.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = True,
                 state_attributes: list[str] | None = None, eta_interval: float | None = 30.0,
                 bar: bool | None = None) -> None:
        self.output_transform = output_transform
        self.persist = persist
        self.state_attributes = state_attributes
        self.eta_interval = eta_interval
        self.bar = bar
        self._start: tuple[float, int] = (0.0, 0)  # time and epoch at which the run (or the resumed run) started
        self._last_log = -float("inf")

    def attach(self, engine: Engine) -> None:
        if self.bar if self.bar is not None else sys.stderr.isatty():
            ProgressBar(persist=self.persist).attach(engine, output_transform=self.output_transform,
                                                     state_attributes=self.state_attributes)
        if self.eta_interval is not None:
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start = (time.perf_counter(), engine.state.epoch)

    def _epoch_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        epoch, total = engine.state.epoch, engine.state.max_epochs
        if now - self._last_log < self.eta_interval and epoch < total:
            return
        self._last_log = now
        elapsed = now - self._start[0]
        per_epoch = elapsed / max(epoch - self._start[1], 1)
        left = "done" if epoch >= total else f"about {format_duration(per_epoch * (total - epoch))} left"
        logger.info(f"epoch {epoch}/{total}: {per_epoch:.1f} s per epoch, {format_duration(elapsed)} so far, {left}")
