"""Collapse monitors of the consistency branch, computed from one step's features.

A bottom-layer module: the trainer step computes them on the device every iteration and the training log
recomputes them across an epoch's batches, so both read them from here rather than one from the other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["cross_volume_cosine"]


@torch.no_grad()
def cross_volume_cosine(features: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """Mean cosine similarity between the features of views of *different* volumes.

    A value near 1 means the encoder gives every volume the same embedding (a collapsed consistency branch);
    views of the same volume are left out, since they should agree. Raw features share a large common component
    (0.99 at initialisation), so the raw value near 1 mostly means "has not moved"; ``centred`` subtracts the mean
    over all ``B * n`` views first and compares what distinguishes the views. Centred features sum to zero, so the
    value has a floor that depends on the batch: ``-1 / (B - 1)`` when the views of each volume agree and volumes
    differ, and about ``-1 / (B n - 1)`` when the features carry no information about the volume (they vary from
    view to view only, or not at all).

    Args:
        features: ``[B, n, D]``, the ``n`` views of each of ``B`` volumes.
        centred: subtract the mean feature over all views before the cosine.

    Returns:
        a 0-d float tensor on the features' device (no host transfer): the mean over all pairs of views from
        different volumes, or NaN when ``B < 2``.
    """
    if features.ndim != 3:
        raise ValueError(f"expected features [B, n, D], got shape {tuple(features.shape)}.")
    num_volumes, num_views = features.shape[:2]
    if num_volumes < 2:
        return features.new_tensor(math.nan, dtype=torch.float32)
    flat = features.detach().float().flatten(0, 1)
    unit = F.normalize(flat - flat.mean(0) if centred else flat, dim=-1)
    volume = torch.arange(num_volumes, device=unit.device).repeat_interleave(num_views)
    different = volume[:, None] != volume[None, :]
    return (unit @ unit.T)[different].mean()
