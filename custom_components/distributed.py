"""torch.distributed for the ``multi_gpu_*.json`` overlays: start-up, each rank's data, which handlers run where.

Every overlay says the same four things with these helpers, one line each::

    "device": "$custom_components.distributed.local_device()",
    "network": {"_target_": "torch.nn.parallel.DistributedDataParallel", "module": "...",
                "device_ids": "$custom_components.distributed.device_ids(@device)"},
    "train#dataset#data": "$custom_components.distributed.rank_partition(@train_data, seed=@seed)",
    "train#trainer#train_handlers": "$custom_components.distributed.handlers_for_rank(@train#handlers)",
    "initialize": ["$custom_components.distributed.initialize(@device, seed=@seed)"],
    "finalize": ["$custom_components.distributed.finalize()"]

A device may be given as a ``torch.device`` or a string (``--device cpu`` on the command line) everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from monai.data import partition_dataset
from monai.handlers import ClassificationSaver, CheckpointLoader, LrScheduleHandler, MetricsSaver, ValidationHandler
from monai.utils import set_determinism

from custom_components.config_checks import check_cli_overrides

__all__ = [
    "EVERY_RANK", "device_ids", "finalize", "handlers_for_rank", "initialize", "is_distributed", "local_device",
    "rank", "rank_partition", "sync_batch_norm",
]

#: MONAI handlers that every rank must run: they step schedules, start validation, load weights or gather across
#: ranks (``MetricsSaver`` and ``ClassificationSaver`` all-gather the per-case results). Handlers of this package say
#: it themselves with a class attribute ``every_rank = True`` (``SeedEachEpoch`` seeds each rank's stream,
#: ``ConfusionMatrixSaver`` sums the counts), so this module need not import them. The others (logging, saving,
#: previews) run on rank 0.
EVERY_RANK = (LrScheduleHandler, ValidationHandler, CheckpointLoader, MetricsSaver, ClassificationSaver)


def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (torchrun sets ``LOCAL_RANK``; 0 without it), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def initialize(device: torch.device | str, seed: int = 0, seed_per_rank: bool = False) -> None:
    """Start a multi-process run: check the command-line overrides, join the process group (NCCL for a CUDA
    device, gloo otherwise; the ``torchrun`` environment variables say where the others are), select the CUDA
    device, and seed (``seed + rank`` with ``seed_per_rank``, so random crops and masks differ between ranks).

    Args:
        device: this rank's device, ``torch.device`` or a string such as ``"cpu"`` or ``"cuda:1"``.
        seed: base random seed.
        seed_per_rank: add the rank to the seed.
    """
    check_cli_overrides()
    device = torch.device(device)
    if not is_distributed():
        if "RANK" not in os.environ:
            raise RuntimeError("the multi_gpu_*.json overlays run under torchrun, which sets RANK, WORLD_SIZE and "
                               "MASTER_ADDR: torchrun --nproc_per_node=G -m monai.bundle run ...")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_determinism(seed=seed + (rank() if seed_per_rank else 0))


def finalize() -> None:
    """Wait for every rank, then leave the process group (nothing without one)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def device_ids(device: torch.device | str) -> list[torch.device] | None:
    """``DistributedDataParallel``'s ``device_ids``: ``[device]`` for a CUDA device, None for the CPU."""
    device = torch.device(device)
    return [device] if device.type == "cuda" else None


def sync_batch_norm(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module`` with its batch norms (e.g. a ``head_batch_norm`` DINO head) made ``SyncBatchNorm`` on a CUDA
    device, so their statistics span every rank's batch, as DINO does; unchanged on the CPU, where PyTorch has no
    ``SyncBatchNorm`` (each rank then normalises by its own batch). Without batch norms it changes nothing."""
    if torch.device(device).type != "cuda":
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def rank_partition(data: Sequence, seed: int = 0, shuffle: bool = True, even_divisible: bool = True) -> list:
    """This rank's partition of ``data`` (MONAI ``partition_dataset`` over the world size), so each rank caches only
    its own cases; the whole list without a process group. ``even_divisible`` pads the shorter partitions with
    repeated cases so every rank runs the same number of iterations."""
    if not is_distributed():
        return list(data)
    partitions = partition_dataset(data=data, num_partitions=dist.get_world_size(), shuffle=shuffle,
                                   even_divisible=even_divisible, seed=seed)
    return partitions[dist.get_rank()]


def handlers_for_rank(handlers: list) -> list:
    """All ``handlers`` on rank 0 (or without a process group); on other ranks only those in ``EVERY_RANK`` and
    those whose ``every_rank`` attribute is true."""
    if rank() == 0:
        return list(handlers)
    return [h for h in handlers if isinstance(h, EVERY_RANK) or getattr(h, "every_rank", False)]
