"""A checkpoint saver that can resume the run: it saves the trainer it is attached to as well."""

from __future__ import annotations

from ignite.engine import Engine
from monai.handlers import CheckpointSaver

__all__ = ["TrainingCheckpointSaver"]


class TrainingCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` that adds the engine it is attached to under ``"trainer"`` (epoch, iteration).

    A bundle config cannot put ``@train#trainer`` into ``save_dict`` of a handler that the trainer itself is built
    with (a circular reference), so the trainer joins the saved objects when the handler is attached.
    Arguments are those of ``CheckpointSaver``.
    """

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine
        super().attach(engine)
