"""Optimiser helpers: the pre-training learning rate for an effective batch, weight-decay parameter groups, and the
fine-tuning groups with layer-wise learning-rate decay over a ViT encoder."""

from __future__ import annotations

import logging
import re

import torch.distributed as dist
import torch.nn as nn

__all__ = ["scaled_learning_rate", "param_groups_weight_decay", "param_groups_layer_decay", "encoder_layer_id"]

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
        (no_decay if _no_weight_decay(name, param) else decay).append(param)
    out = []
    for prefix, (decay, no_decay) in groups.items():
        lr = {} if prefix is None else {"lr": base_lr * lr_scales[prefix]}
        out += [{"params": decay, "weight_decay": weight_decay, **lr}, {"params": no_decay, "weight_decay": 0.0, **lr}]
    return out


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, 1-D parameters, tokens and position embeddings take no weight decay (MAE, DINO)."""
    return param.ndim <= 1 or name.endswith(".bias") or "token" in name or "position_embeddings" in name


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def encoder_layer_id(name: str, num_layers: int, encoder: str = "vit") -> int:
    """The depth of parameter ``name`` for layer-wise learning-rate decay, as MAE's fine-tuning numbers it.

    Under the ``encoder`` module (``UNETR.vit``, ``ViTClassifier.vit``; a ``module.`` prefix of
    DistributedDataParallel is ignored): the patch embedding (conv, position embeddings) and the CLS token are
    layer 0, transformer block ``i`` is layer ``i + 1``. Everything else (the encoder's final norm, UNETR's
    convolutional decoder, a classification head) is layer ``num_layers + 1``, the top.
    """
    inner = _under(name, encoder)
    if inner is None:
        return num_layers + 1
    if inner.startswith(("patch_embedding.", "cls_token")):
        return 0
    block = _BLOCK.match(inner)
    return int(block.group(1)) + 1 if block else num_layers + 1


def _under(name: str, encoder: str) -> str | None:
    """``name`` relative to the ``encoder`` module (a DistributedDataParallel ``module.`` prefix ignored), or None."""
    name = name.removeprefix("module.")
    return name[len(encoder) + 1:] if name.startswith(f"{encoder}.") else None


def param_groups_layer_decay(network: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float = 1.0,
                             encoder_learning_rate: float | None = None, encoder: str = "vit") -> list[dict]:
    """Fine-tuning parameter groups: layer-wise learning-rate decay over a ViT encoder, its own encoder rate, and
    weight decay on weight matrices only.

    The recipe of MAE / BEiT fine-tuning: a parameter at depth ``layer_id`` (:func:`encoder_layer_id`) of an
    encoder with ``L`` blocks trains at ``encoder_learning_rate * layer_decay ** (L + 1 - layer_id)``, so block
    ``L`` gets ``layer_decay`` times the encoder rate and the patch embedding ``layer_decay ** (L + 1)`` times.
    The rest of the network (UNETR's convolutional decoder, a classification head, the encoder's final norm) trains
    at ``learning_rate``. With ``layer_decay = 1`` and no ``encoder_learning_rate`` every group gets
    ``learning_rate``. Frozen parameters (``requires_grad=False``, e.g. a frozen encoder) are left out.

    Each group carries ``lr`` (a warm-up / cosine schedule then scales every group alike), ``weight_decay`` (0 for
    biases, norms, tokens and position embeddings) and ``layer_id``. Logs the rate of the patch embedding, the top
    block and the decoder.

    Args:
        network: the fine-tuned network (``UNETR``, ``ViTClassifier``, or either inside DistributedDataParallel).
        learning_rate: the decoder / head rate, and the encoder's when ``encoder_learning_rate`` is None.
        weight_decay: AdamW weight decay of weight matrices.
        layer_decay: the factor per block, in (0, 1]; MAE fine-tunes ViT-B with 0.65, ViT-L and ViT-H with 0.75.
        encoder_learning_rate: the rate the decay starts from (the top of the encoder).
        encoder: the attribute that holds the ViT encoder.

    Raises:
        ValueError: a rate or ``layer_decay`` out of range, or no encoder (``blocks.<i>``) under ``encoder``.
    """
    encoder_learning_rate = learning_rate if encoder_learning_rate is None else encoder_learning_rate
    if learning_rate <= 0 or encoder_learning_rate <= 0 or not 0 < layer_decay <= 1:
        raise ValueError(f"need learning rates > 0 and 0 < layer_decay <= 1, got learning_rate={learning_rate}, "
                         f"encoder_learning_rate={encoder_learning_rate}, layer_decay={layer_decay}.")
    named = list(network.named_parameters())
    blocks = {int(m.group(1)) for name, _ in named if (m := _BLOCK.match(_under(name, encoder) or ""))}
    if not blocks:
        raise ValueError(f"{type(getattr(network, 'module', network)).__name__} has no ViT encoder with transformer "
                         f"blocks under '{encoder}.' for layer-wise learning-rate decay.")
    num_layers = max(blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        layer_id = encoder_layer_id(name, num_layers, encoder)
        no_decay = _no_weight_decay(name, param)
        if (layer_id, no_decay) not in groups:
            lr = (learning_rate if layer_id > num_layers
                  else encoder_learning_rate * layer_decay ** (num_layers + 1 - layer_id))
            groups[layer_id, no_decay] = {"params": [], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay,
                                          "layer_id": layer_id}
        groups[layer_id, no_decay]["params"].append(param)
    if not groups:
        raise ValueError(f"every parameter of {type(network).__name__} is frozen: there is nothing to train.")
    rates = {layer_id: group["lr"] for (layer_id, _), group in sorted(groups.items())}
    encoder_rates = [rates[i] for i in (0, num_layers) if i in rates]
    logger.info("learning rates: " + (f"encoder {' .. '.join(f'{r:.3g}' for r in encoder_rates)} (patch embedding .. "
                f"block {num_layers}, layer_decay {layer_decay:g})" if encoder_rates else "encoder frozen")
                + f", decoder and head {learning_rate:.3g}")
    return [groups[key] for key in sorted(groups)]
