"""Per-epoch seeding, so that a resumed run draws the same crops, flips and masks as an uninterrupted one."""

from __future__ import annotations

import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism
from torch.utils.data import Dataset

__all__ = ["SeedEachEpoch"]


class SeedEachEpoch:
    """At the start of every epoch, seed Python, NumPy and PyTorch, and the random transforms of ``dataset``, with a
    value derived from ``(seed, epoch, rank)``.

    The randomness of epoch ``e`` (data order, crops, flips, MAE masks) then depends on the seed and ``e`` only, not
    on what ran before: a run resumed from the checkpoint of epoch ``e - 1`` repeats exactly what the uninterrupted
    run would have done (on CPU; with ``num_workers > 0`` worker seeds also come from this state). Under
    ``torch.distributed`` each rank gets its own stream.

    Args:
        seed: base seed of the run.
        dataset: the training dataset whose random transforms are reseeded (MONAI ``Dataset``/``CacheDataset``).
    """

    #: every rank seeds its own stream (read by ``custom_components.distributed.handlers_for_rank``).
    every_rank = True

    def __init__(self, seed: int = 0, dataset: Dataset | None = None) -> None:
        self.seed = seed
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        epoch_seed = (self.seed + 100_003 * engine.state.epoch + 7_919 * rank) % (2**32)
        set_determinism(seed=epoch_seed)
        if self.dataset is not None:
            set_rnd(self.dataset, epoch_seed)
