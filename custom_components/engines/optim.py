"""Optimiser helpers: the pre-training learning rate for an effective batch, and weight-decay parameter groups."""

from __future__ import annotations

import logging

import torch.distributed as dist
import torch.nn as nn

__all__ = ["scaled_learning_rate", "param_groups_weight_decay"]

logger = logging.getLogger("custom_components")


def scaled_learning_rate(base_lr: float, batch_size: int, accumulation_steps: int = 1,
                         world_size: int | None = None, reference_batch: int = 32) -> float:
    """The absolute learning rate ``base_lr`` up to an effective batch of ``reference_batch``, linear beyond it:
    ``lr = base_lr * max(1, effective_batch / reference_batch)``.

    3D masked-image pre-training runs at effective batches of a few volumes, where MAE's rule
    (``base_lr * batch / 256``, tuned for thousands of 2D images) gives a learning rate about 100x too small;
    3D practice uses an absolute rate (MAE3D: 3e-4 at 4 volumes per GPU). The linear rule applies only to
    batches larger than ``reference_batch``.

    ``effective_batch = batch_size * accumulation_steps * world_size``; ``world_size`` defaults to the
    initialised process group's size, else 1. Logs the effective batch and the resolved learning rate.
    """
    if base_lr <= 0 or batch_size < 1 or accumulation_steps < 1 or reference_batch < 1:
        raise ValueError(f"need base_lr > 0 and positive sizes, got base_lr={base_lr}, batch_size={batch_size}, "
                         f"accumulation_steps={accumulation_steps}, reference_batch={reference_batch}.")
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    effective = batch_size * accumulation_steps * world_size
    factor = max(1.0, effective / reference_batch)
    lr = base_lr * factor
    rule = (f"{base_lr:.3g} x {effective} / {reference_batch}" if factor > 1
            else f"base_learning_rate {base_lr:.3g}, effective batch <= reference_batch {reference_batch}")
    logger.info(f"effective batch {effective} = {batch_size} per rank x {accumulation_steps} accumulation x "
                f"{world_size} ranks; learning rate {lr:.3g} ({rule})")
    return lr


def param_groups_weight_decay(network: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None,
                              base_lr: float | None = None) -> list[dict]:
    """Parameter groups: decay on weight matrices, none on biases, norms, tokens and 1-D parameters.

    Frozen parameters (``requires_grad=False``, e.g. fixed position embeddings) are left out.

    ``lr_scales`` maps a parameter-name prefix (e.g. ``"head."``, the DINO projection head of ``GLMAE``) to a
    factor on ``base_lr``: the parameters under it get their own two groups with ``lr = base_lr * factor`` (a
    learning-rate schedule then scales every group alike). Without it: two groups, decay first, at the optimiser's
    ``lr``.
    """
    lr_scales = {prefix: scale for prefix, scale in (lr_scales or {}).items() if scale != 1.0}
    if lr_scales and base_lr is None:
        raise ValueError(f"lr_scales {lr_scales} need base_lr, the learning rate they scale.")
    if any(scale <= 0 for scale in lr_scales.values()):
        raise ValueError(f"learning-rate scales must be positive, got {lr_scales}.")
    names = [name for name, _ in network.named_parameters()]
    for prefix in lr_scales:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(f"no parameter of {type(network).__name__} starts with {prefix!r} (lr_scales); its "
                             f"top-level modules: {sorted({n.split('.')[0] for n in names})}.")
    groups: dict[str | None, tuple[list, list]] = {prefix: ([], []) for prefix in [None, *lr_scales]}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        decay, no_decay = groups[next((p for p in lr_scales if name.startswith(p)), None)]
        (no_decay if param.ndim <= 1 or name.endswith(".bias") or "token" in name else decay).append(param)
    out = []
    for prefix, (decay, no_decay) in groups.items():
        lr = {} if prefix is None else {"lr": base_lr * lr_scales[prefix]}
        out += [{"params": decay, "weight_decay": weight_decay, **lr}, {"params": no_decay, "weight_decay": 0.0, **lr}]
    return out
