"""The GL-MAE objective: local + global masked reconstruction, global-to-global and global-to-local consistency."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from custom_components.losses.consistency import CosineConsistencyLoss, DINOConsistencyLoss
from custom_components.losses.reconstruction import MaskedReconstructionLoss

__all__ = ["GLMAELoss", "LOSS_TERMS"]

LOSS_TERMS = ("rec_local", "rec_global", "g2g", "g2l")


class GLMAELoss(nn.Module):
    """``L = w_rl * L_rec^local + w_rg * L_rec^global + w_gg * L_g2g + w_gl * L_g2l``.

    Args:
        patch_size: patch edge of the reconstruction targets.
        consistency: ``"dino"`` (cross-entropy with centring and temperatures) or ``"byol"`` (cosine).
        head_out_dim: K, width of the projected embeddings (DINO centre size).
        loss_weights: weight per term, keys from ``LOSS_TERMS``; missing keys default to 1. A zero weight skips
            the term (it is reported as 0), which is how the ablation variants are expressed.
        norm_pix_loss: normalised-pixel reconstruction target.
        student_temp, teacher_temp, center_momentum, warmup_teacher_temp, warmup_teacher_temp_epochs: DINO
            settings (ignored for BYOL), see ``DINOConsistencyLoss``.

    ``forward`` takes the student's output dict (``GLMAE.forward``), the teacher's embeddings of the intact global
    views ``[B * p, K]`` (or None when no consistency term is used), and the views themselves
    (``[B * p, C, G³]`` and ``[B * q, C, L³]``), plus ``batch_size`` B to group views by volume. It returns
    ``{"loss": total, "loss_rec_local": ..., "loss_rec_global": ..., "loss_g2g": ..., "loss_g2l": ...}``, plus
    the collapse monitors when a DINO consistency term runs: ``teacher_entropy``, ``teacher_logit_spread`` and the
    ``[K]`` vector ``teacher_marginal`` (see ``DINOConsistencyLoss.teacher_monitors``), and ``kl_g2g`` / ``kl_g2l``,
    KL(teacher || student) of each positively weighted branch (its cross-entropy minus the teacher entropy: 0 when
    the student matches the teacher, whatever the teacher's entropy).
    """

    def __init__(
        self,
        patch_size: int = 16,
        consistency: str = "dino",
        head_out_dim: int = 65536,
        loss_weights: Mapping[str, float] | None = None,
        norm_pix_loss: bool = False,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        warmup_teacher_temp: float | None = None,
        warmup_teacher_temp_epochs: int = 0,
    ) -> None:
        super().__init__()
        weights = dict(loss_weights or {})
        unknown = set(weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; expected a subset of {LOSS_TERMS}.")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"loss_weights must be non-negative, got {weights}.")
        self.weights = {term: float(weights.get(term, 1.0)) for term in LOSS_TERMS}
        if sum(self.weights.values()) == 0:
            raise ValueError("at least one loss weight must be positive.")
        self.reconstruction = MaskedReconstructionLoss(patch_size, norm_pix_loss)
        if consistency == "dino":
            self.consistency = DINOConsistencyLoss(head_out_dim, student_temp, teacher_temp, center_momentum,
                                                   warmup_teacher_temp, warmup_teacher_temp_epochs)
        elif consistency == "byol":
            self.consistency = CosineConsistencyLoss()
        else:
            raise ValueError(f"consistency must be 'dino' or 'byol', got {consistency!r}.")

    @property
    def log_k(self) -> float:
        """``log K``, the teacher entropy of a collapsed (uniform) DINO teacher; NaN for BYOL."""
        if isinstance(self.consistency, DINOConsistencyLoss):
            return math.log(self.consistency.center.shape[-1])
        return math.nan

    def set_epoch(self, epoch: int) -> None:
        """Follow the (0-based) epoch in the consistency term's schedules (DINO's teacher-temperature warm-up)."""
        self.consistency.set_epoch(epoch)

    def needs(self, kind: str) -> bool:
        """Whether ``kind`` ("global", "local", "teacher", "global_embedding" or "local_embedding") is used by any
        positively weighted term."""
        w = self.weights
        return {
            "global": w["rec_global"] > 0 or w["g2g"] > 0,
            "local": w["rec_local"] > 0 or w["g2l"] > 0,
            "teacher": w["g2g"] > 0 or w["g2l"] > 0,
            "global_embedding": w["g2g"] > 0,
            "local_embedding": w["g2l"] > 0,
        }[kind]

    def forward(
        self,
        student: Mapping[str, torch.Tensor],
        teacher_embedding: torch.Tensor | None,
        global_views: torch.Tensor | None,
        local_views: torch.Tensor | None,
        batch_size: int,
    ) -> dict[str, torch.Tensor]:
        zero = next(iter(student.values())).new_zeros((), dtype=torch.float32)
        terms = dict.fromkeys(LOSS_TERMS, zero)
        monitors = {}
        if self.weights["rec_local"] > 0:
            terms["rec_local"] = self.reconstruction(student["local_pred"], local_views, student["local_mask"])
        if self.weights["rec_global"] > 0:
            terms["rec_global"] = self.reconstruction(student["global_pred"], global_views, student["global_mask"])
        if teacher_embedding is not None:
            teacher = teacher_embedding.reshape(batch_size, -1, teacher_embedding.shape[-1])
            if self.weights["g2g"] > 0:
                student_global = student["global_embedding"].reshape(batch_size, -1, teacher.shape[-1])
                terms["g2g"] = self.consistency(teacher, student_global)
            if self.weights["g2l"] > 0:
                student_local = student["local_embedding"].reshape(batch_size, -1, teacher.shape[-1])
                terms["g2l"] = self.consistency(teacher, student_local)
            if isinstance(self.consistency, DINOConsistencyLoss):
                monitors = self.consistency.teacher_monitors(teacher_embedding)
                for term in ("g2g", "g2l"):  # KL(teacher || student) = cross-entropy - teacher entropy
                    if self.weights[term] > 0:
                        monitors[f"kl_{term}"] = terms[term].detach() - monitors["teacher_entropy"]
            self.consistency.update_center(teacher_embedding)
        total = sum(self.weights[t] * terms[t] for t in LOSS_TERMS)
        return {"loss": total, **{f"loss_{t}": v for t, v in terms.items()}, **monitors}
