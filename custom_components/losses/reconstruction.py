"""Masked reconstruction loss (MAE ``forward_loss``) for 3D views."""

from __future__ import annotations

import torch
import torch.nn as nn

from custom_components.geometry import patchify

__all__ = ["MaskedReconstructionLoss"]


class MaskedReconstructionLoss(nn.Module):
    """Mean squared error over the masked patches only.

    Per patch the squared error is averaged over its voxels, then averaged over masked patches:
    ``sum(mask * mean_voxels((pred - target)²)) / sum(mask)``.

    Args:
        patch_size: patch edge.
        norm_pix_loss: normalise each target patch by its own mean and variance (MAE's normalised-pixel target).

    Shapes: ``pred: [B, N, P³C]``, ``images: [B, C, H, W, D]``, ``mask: [B, N]`` (1 = masked).
    """

    def __init__(self, patch_size: int = 16, norm_pix_loss: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def target(self, images: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps) ** 0.5
        return target

    def forward(self, pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.target(images)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} does not match the target patches {tuple(target.shape)}.")
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
