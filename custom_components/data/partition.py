"""Each rank's share of a datalist under torch.distributed."""

from __future__ import annotations

from collections.abc import Sequence

import torch.distributed as dist
from monai.data import partition_dataset

__all__ = ["rank_partition"]


def rank_partition(data: Sequence, seed: int = 0, shuffle: bool = True, even_divisible: bool = True) -> list:
    """This rank's partition of ``data`` (MONAI ``partition_dataset`` over the world size), so each rank caches only
    its own cases; the whole list without an initialised process group. ``even_divisible`` pads the shorter
    partitions with repeated cases so every rank runs the same number of iterations."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(data)
    partitions = partition_dataset(data=data, num_partitions=dist.get_world_size(), shuffle=shuffle,
                                   even_divisible=even_divisible, seed=seed)
    return partitions[dist.get_rank()]
