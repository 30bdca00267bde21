"""Fixed 3D sin-cos position embeddings for any token grid (MAE style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

__all__ = ["sincos_position_embedding"]


def sincos_position_embedding(grid_size: Sequence[int], embed_dim: int) -> torch.Tensor:
    """3D sin-cos position embedding of a token grid, as a plain tensor ``[1, prod(grid_size), embed_dim]``.

    Uses MONAI's ``build_sincos_position_embedding`` (which needs ``embed_dim`` divisible by 6); for other widths,
    such as the 512-wide MAE decoder, the embedding is built on the largest multiple of 6 and zero-padded.

    Args:
        grid_size: tokens along each spatial axis, e.g. ``(10, 10, 10)`` for a 160³ view with 16³ patches.
        embed_dim: embedding width.
    """
    if len(grid_size) != 3 or min(grid_size) < 1:
        raise ValueError(f"grid_size must be three positive ints, got {tuple(grid_size)}.")
    if embed_dim < 6:
        raise ValueError(f"embed_dim must be at least 6, got {embed_dim}.")
    usable = embed_dim - embed_dim % 6
    pos = build_sincos_position_embedding(list(grid_size), usable, spatial_dims=3).data
    return F.pad(pos, (0, embed_dim - usable))
