"""Global-to-global and global-to-local consistency between the teacher's intact global views and student views."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DINOConsistencyLoss", "CosineConsistencyLoss"]


def _check_pairs(teacher: torch.Tensor, student: torch.Tensor) -> None:
    if teacher.ndim != 3 or student.ndim != 3 or teacher.shape[0] != student.shape[0] or teacher.shape[2] != student.shape[2]:
        raise ValueError(
            f"expected teacher [B, p, K] and student [B, n, K] embeddings, got {tuple(teacher.shape)} and "
            f"{tuple(student.shape)}."
        )


class DINOConsistencyLoss(nn.Module):
    """DINO cross-entropy between the centred, sharpened teacher distribution and the student distribution.

    ``H(t, s) = -sum_k softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k``, averaged over every pair
    (teacher global view i, student view j) of the same volume, same-crop pairs included: the intact view is the
    anchor of its own masked copy.

    The centre ``c`` is an EMA (``center_momentum``) of the batch mean of teacher outputs, averaged over ranks
    under ``torch.distributed``. Call :meth:`update_center` once per step, after every term that uses it.

    Args:
        out_dim: K, the number of logits.
        student_temp: tau_s (0.1).
        teacher_temp: tau_t (0.04).
        center_momentum: centre EMA momentum (0.9).

    Shapes: ``teacher: [B, p, K]``, ``student: [B, n, K]`` -> scalar.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        if student_temp <= 0 or teacher_temp <= 0:
            raise ValueError(f"temperatures must be positive, got {student_temp} and {teacher_temp}.")
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        _check_pairs(teacher, student)
        teacher_probs = F.softmax((teacher.float() - self.center) / self.teacher_temp, dim=-1).detach()
        student_logp = F.log_softmax(student.float() / self.student_temp, dim=-1)
        # [B, p, n]: cross-entropy of every (teacher i, student j) pair of one volume
        cross = -torch.einsum("bik,bjk->bij", teacher_probs, student_logp)
        return cross.mean()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``teacher: [..., K]`` outputs of this step."""
        batch_center = teacher.float().reshape(-1, teacher.shape[-1]).mean(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center.view_as(self.center), alpha=1 - self.center_momentum)


class CosineConsistencyLoss(nn.Module):
    """BYOL-style loss ``2 - 2 cos(t, s)`` averaged over every (teacher global i, student view j) pair of a volume.

    Shapes: ``teacher: [B, p, K]``, ``student: [B, n, K]`` (student already through its predictor) -> scalar.
    """

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        _check_pairs(teacher, student)
        t = F.normalize(teacher.float().detach(), dim=-1)
        s = F.normalize(student.float(), dim=-1)
        return (2 - 2 * torch.einsum("bik,bjk->bij", t, s)).mean()

    def update_center(self, teacher: torch.Tensor) -> None:
        """No state to update (kept so both forms share one interface)."""
