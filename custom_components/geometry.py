"""Voxel-grid geometry shared across layers: cutting volumes into the encoder's patch tokens and back, rotations.

A bottom-layer module (it imports nothing else from the package), so that the networks, the losses, the handlers
and the synthetic data generators can all use it without importing one another.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["patchify", "rotation_matrix", "unpatchify"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``[B, C, H, W, D]`` into patches ``[B, N, P³C]`` in the encoder's token order (H-major, then W, then D)."""
    b, c, h, w, d = images.shape
    p = patch_size
    if h % p or w % p or d % p:
        raise ValueError(f"image size {(h, w, d)} must be a multiple of patch_size {p}.")
    x = images.reshape(b, c, h // p, p, w // p, p, d // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, gh, gw, gd, ph, pw, pd, c
    return x.reshape(b, (h // p) * (w // p) * (d // p), p**3 * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int, int], channels: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, P³C]`` -> ``[B, C, H, W, D]`` for a token ``grid``."""
    b = patches.shape[0]
    p = patch_size
    gh, gw, gd = grid
    x = patches.reshape(b, gh, gw, gd, p, p, p, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, gh * p, gw * p, gd * p)


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` from three angles (radians) about x, y and z, applied in that order."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx
