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

    The teacher temperature can be warmed up (DINO): linear from ``warmup_teacher_temp`` at epoch 0 to
    ``teacher_temp`` at ``warmup_teacher_temp_epochs``, then constant; call :meth:`set_epoch` as epochs go by.

    Args:
        out_dim: K, the number of logits.
        student_temp: tau_s (0.1).
        teacher_temp: tau_t (0.04) after the warm-up.
        center_momentum: centre EMA momentum (0.9).
        warmup_teacher_temp: tau_t at epoch 0 (None: ``teacher_temp`` throughout).
        warmup_teacher_temp_epochs: length of the warm-up in epochs.

    Shapes: ``teacher: [B, p, K]``, ``student: [B, n, K]`` -> scalar.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, warmup_teacher_temp: float | None = None,
                 warmup_teacher_temp_epochs: int = 0) -> None:
        super().__init__()
        self.final_teacher_temp = teacher_temp
        self.warmup_teacher_temp = teacher_temp if warmup_teacher_temp is None else warmup_teacher_temp
        if min(student_temp, teacher_temp, self.warmup_teacher_temp) <= 0:
            raise ValueError(f"temperatures must be positive, got student {student_temp}, teacher {teacher_temp}, "
                             f"warm-up teacher {warmup_teacher_temp}.")
        if warmup_teacher_temp_epochs < 0:
            raise ValueError(f"warmup_teacher_temp_epochs must be >= 0, got {warmup_teacher_temp_epochs}.")
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Set the teacher temperature of (0-based) ``epoch`` from the warm-up schedule."""
        progress = min(epoch / self.warmup_teacher_temp_epochs, 1.0) if self.warmup_teacher_temp_epochs else 1.0
        self.teacher_temp = self.warmup_teacher_temp + progress * (self.final_teacher_temp - self.warmup_teacher_temp)

    def teacher_probs(self, teacher: torch.Tensor) -> torch.Tensor:
        """The centred, sharpened teacher distribution ``softmax((t - c) / tau_t)``, ``[..., K]``, float32."""
        return F.softmax((teacher.detach().float() - self.center.flatten()) / self.teacher_temp, dim=-1)

    @torch.no_grad()
    def teacher_entropy(self, teacher: torch.Tensor) -> torch.Tensor:
        """Mean entropy (nats) of the teacher distribution; ``log K`` when it is uniform (collapse)."""
        return self.teacher_monitors(teacher)["teacher_entropy"]

    @torch.no_grad()
    def teacher_monitors(self, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's collapse monitors of one step, as device tensors (no host transfer).

        Args:
            teacher: ``[..., K]`` teacher outputs (before :meth:`update_center`).

        Returns:
            ``teacher_entropy``: mean over samples of the entropy (nats) of each sample's centred, sharpened
            distribution; ``log K`` when every output is uniform (the uniform collapse).
            ``teacher_marginal``: ``[K]``, the mean of those distributions over the samples. Pooled over an epoch, its
            entropy minus the mean per-sample entropy is the mutual information between input and prototype, ~0 in
            either collapse (uniform, or every input on the same few prototypes).
            ``teacher_logit_spread``: mean over samples of the standard deviation over K of the centred logits
            ``(t - c)``, in units of ``tau_t``. Below ~1 the distribution is within ~0.5 nats of uniform, where the
            consistency gradient is ~0 (entropy ~ ``log K - spread**2 / 2``).
            ``teacher_logit_spread_batch``: the same around the batch's mean logits instead of the centre: how much
            the logits differ between the inputs of the batch, what is left once the centre has caught up with the
            part every input shares.
        """
        logits = teacher.detach().float().reshape(-1, teacher.shape[-1]) / self.teacher_temp
        centred = logits - self.center.flatten() / self.teacher_temp
        probs = F.softmax(centred, dim=-1)
        return {
            "teacher_entropy": -(probs * F.log_softmax(centred, dim=-1)).sum(-1).mean(),
            "teacher_marginal": probs.mean(0),
            "teacher_logit_spread": centred.std(dim=-1).mean(),
            "teacher_logit_spread_batch": (logits - logits.mean(0)).std(dim=-1).mean(),
        }

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        _check_pairs(teacher, student)
        teacher_probs = self.teacher_probs(teacher)
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

    def set_epoch(self, epoch: int) -> None:
        """No schedule (kept so both forms share one interface)."""
