"""Encoder export for fine-tuning."""

from __future__ import annotations

import logging

import torch.nn as nn
from ignite.engine import Engine, Events

from custom_components.weights import encoder_state_dict, save_state_dict

__all__ = ["EncoderExport"]

logger = logging.getLogger("custom_components")


class EncoderExport:
    """Write the student encoder as ``encoder.pt`` (keys that load into ``UNETR(...).vit``, and strictly into
    ``GLMAEFeatureEncoder``) every ``interval`` epochs and when training completes, atomically, on CPU.

    Args:
        network: the ``GLMAE`` student (DDP-wrapped is fine).
        filepath: destination, e.g. ``models/encoder.pt``.
        interval: epochs between exports; None: only when training completes.
    """

    def __init__(self, network: nn.Module, filepath: str, interval: int | None = 1) -> None:
        if interval is not None and interval < 1:
            raise ValueError(f"interval must be >= 1 or None, got {interval}.")
        self.network = network
        self.filepath = filepath
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        if self.interval is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        save_state_dict(encoder_state_dict(self.network), self.filepath)
        logger.info(f"epoch {engine.state.epoch}: encoder exported to {self.filepath}")
