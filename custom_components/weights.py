"""Save GL-MAE encoder weights and load pre-trained encoders into MONAI ``ViT`` / ``UNETR.vit``.

Our encoder file (``encoder.pt``, written by the pre-training bundle) is a plain state dict of CPU tensors:

- ``patch_embedding.*``, ``blocks.*``, ``norm.*``: MONAI ``ViT`` names and shapes (``qkv_bias=True``);
  ``patch_embedding.position_embeddings`` ``[1, N, D]`` is the fixed sin-cos grid of the pre-training ``img_size``.
- ``cls_token`` ``[1, 1, D]``: the pre-trained CLS token (used only by targets that have one).
- ``position_grid`` ``[3]`` int64: the token grid of ``position_embeddings`` (``N = prod(position_grid)``).

``load_encoder`` also reads our full pre-training ``model.pt`` (a ``GLMAE`` state dict, or an Ignite checkpoint
``{"model", "teacher", "optimizer", ...}``), the official GL-MAE release (``{"student": {"module.backbone.*"}}``,
timm names), MONAI ``MaskedAutoEncoderViT`` state dicts and plain MONAI ``ViT`` / ``UNETR`` state dicts. It adapts
the position grid and input channels to the target and reports loaded / missing / unexpected keys.

Build the target with ``qkv_bias=True``: MONAI's ``UNETR`` defaults to False and would leave the pre-trained qkv
biases unused (reported as unexpected). timm checkpoints used LayerNorm eps 1e-6; MONAI's blocks use 1e-5.

Example::

    net = UNETR(1, 14, img_size=96, feature_size=48, qkv_bias=True)
    report = load_encoder(net, "models/encoder.pt")   # LoadReport(source_format="glmae-encoder", ...)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from custom_components.files import atomic_write
from custom_components.networks.vit import MaskedViTEncoder

__all__ = [
    "LoadReport", "encoder_state_dict", "load_encoder", "load_pretrained_encoder", "load_state_dict_file",
    "save_state_dict", "to_vit_state_dict",
]

logger = logging.getLogger("custom_components")

POS_KEY = "patch_embedding.position_embeddings"
PATCH_KEY = "patch_embedding.patch_embeddings.weight"
ENCODER_PREFIXES = ("patch_embedding.", "blocks.", "norm.")
CONTAINER_KEYS = ("state_dict", "model", "student", "network")
# timm (official GL-MAE) -> MONAI names; timm's qkv rows are (3, heads, head_dim), as in MONAI's SABlock.
TIMM_RENAMES = (
    ("patch_embed.proj.", "patch_embedding.patch_embeddings."), (".attn.proj.", ".attn.out_proj."),
    (".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."),
)
MAE_FINAL_NORM = re.compile(r"blocks\.\d+\.(weight|bias)")  # MaskedAutoEncoderViT: blocks[-1] is the LayerNorm
HARMLESS_MISSING = re.compile(r"blocks\.\d+\.norm_cross_attn\.")  # MONAI >= 1.6, unused without cross-attention


@dataclass
class LoadReport:
    """What ``load_encoder`` did: target keys loaded / left as they were, checkpoint keys not used."""

    source_format: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    interpolated: bool
    channels_repeated: int
    #: tensors of the checkpoint that are not the encoder (MAE decoder, projection heads), left out on purpose
    dropped: int = 0
    #: the checkpoint's CLS token was left out because the target has none (UNETR, the mean-pooling classifier)
    cls_dropped: bool = False


class _Converted(NamedTuple):
    vit_state: dict[str, torch.Tensor]
    cls_token: torch.Tensor | None
    source_format: str
    grid: tuple[int, ...] | None
    dropped: int = 0


def encoder_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the encoder of a ``GLMAE`` (or DDP-wrapped one, or ``EMATeacher``) or a ``MaskedViTEncoder``.

    Returns the ``encoder.pt`` keys described in the module docstring, detached and contiguous.
    """
    net = getattr(network, "module", network)
    encoder = net if isinstance(net, MaskedViTEncoder) else getattr(net, "encoder", None)
    if not isinstance(encoder, MaskedViTEncoder):
        raise TypeError(f"expected a GLMAE or MaskedViTEncoder, got {type(net).__name__}.")
    state = {
        key: value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in encoder.state_dict().items()
        if key.startswith(ENCODER_PREFIXES) or key == "cls_token"
    }
    state["position_grid"] = torch.tensor(encoder.grid_size, dtype=torch.int64)
    return state


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict of tensors atomically (temp file in the same folder, fsync, ``os.replace``)."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, only tensors can be saved.")
    atomic_write(path, lambda f: torch.save(dict(state), f))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint with ``weights_only=True`` on CPU and unwrap ``state_dict`` / ``model`` / ``student`` /
    ``network`` containers down to a dict of tensors.

    ``argparse.Namespace`` (the ``args`` entry that DINO/MAE training scripts save next to the weights) is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        raise ValueError(
            f"{path} holds non-tensor objects and torch.load(weights_only=True) refused it"
            f" ({reason.group(1) if reason else e}). Re-save its state dict of tensors only."
        ) from e
    except (RuntimeError, EOFError, KeyError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or not written by torch.save): {e!r}"
        ) from e
    return _unwrap(state, str(path))


def to_vit_state_dict(state: Mapping) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, str]:
    """Convert a known checkpoint layout to MONAI ``ViT`` keys.

    Returns ``(vit_state, cls_token or None, source_format)``; ``source_format`` is one of ``glmae-encoder``,
    ``glmae-model``, ``glmae-official``, ``monai-mae``, ``monai-unetr``, ``monai-vit``. Decoder, head and predictor
    weights are dropped; the official ``pos_embed`` loses its CLS slot.
    """
    return _convert(state, "state dict")[:3]


def _unwrap(state, name: str) -> dict[str, torch.Tensor]:
    """Descend into the single ``CONTAINER_KEYS`` entry until a non-empty dict of tensors is reached."""
    while isinstance(state, Mapping) and not (state and all(isinstance(v, torch.Tensor) for v in state.values())):
        found = [k for k in CONTAINER_KEYS if isinstance(state.get(k), Mapping)]
        if len(found) != 1:
            raise ValueError(
                f"{name} is not a state dict of tensors and does not hold exactly one of {CONTAINER_KEYS}"
                f" (found: {list(state)[:8]})."
            )
        state = state[found[0]]
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} holds a {type(state).__name__}, not a state dict.")
    return dict(state)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm / official GL-MAE backbone -> MONAI ``ViT`` names (MAE decoder dropped).

    timm adds ``pos_embed[:, 0]`` to the CLS token and ``pos_embed[:, 1:]`` to the patch tokens; MONAI's ``ViT``
    (and this project's encoder) add position embeddings to the patch tokens only. So the CLS slot is cut off
    ``pos_embed`` and folded into ``cls_token``: a target with a CLS token computes what the released network does.
    """
    out = {}
    has_cls = "cls_token" in state
    for key, value in state.items():
        if key.startswith(("decoder_", "mask_token")):
            continue
        if key == "pos_embed":
            key, value = POS_KEY, (value[:, 1:].contiguous() if has_cls else value)
        elif key == "cls_token" and "pos_embed" in state:
            value = value + state["pos_embed"][:, :1]
        for old, new in TIMM_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def _convert(state: Mapping, name: str) -> _Converted:
    state = {k.removeprefix("module."): v for k, v in _unwrap(state, name).items()}  # DistributedDataParallel
    keys = list(state)
    num_tensors = len(keys)
    grid = None
    if "position_grid" in state:
        fmt, grid = "glmae-encoder", tuple(int(g) for g in state.pop("position_grid"))
    elif any(k.startswith("encoder.patch_embedding.") for k in keys):  # GLMAE: drop decoder, head, predictor
        fmt, state = "glmae-model", _strip(state, "encoder.")
    elif any(k.startswith(("backbone.", "patch_embed.")) for k in keys):
        fmt = "glmae-official"
        state = _from_timm(_strip(state, "backbone.") if any(k.startswith("backbone.") for k in keys) else state)
    elif any(k.startswith("vit.") for k in keys):
        fmt, state = "monai-unetr", _strip(state, "vit.")
    elif "mask_tokens" in state or any(k.startswith("decoder_") or MAE_FINAL_NORM.fullmatch(k) for k in keys):
        fmt = "monai-mae"
        state = {
            (f"norm.{k.rsplit('.', 1)[1]}" if MAE_FINAL_NORM.fullmatch(k) else k): v
            for k, v in state.items() if not k.startswith(("decoder_", "mask_tokens"))
        }
    elif any(k.startswith(ENCODER_PREFIXES) for k in keys):
        fmt = "monai-vit"
    else:
        raise ValueError(f"{name}: unknown checkpoint layout; found keys such as {keys[:8]}.")
    cls_token = state.pop("cls_token", None)
    dropped = num_tensors - len(state) - (cls_token is not None) - (grid is not None)
    return _Converted(state, cls_token, fmt, grid, dropped)


def _grid_of(num_tokens: int, grid: Sequence[int] | None, what: str) -> tuple[int, ...]:
    """The token grid of ``num_tokens`` position embeddings: ``grid`` when given, else a cube."""
    if grid is None:
        side = round(num_tokens ** (1 / 3))
        if side**3 != num_tokens:
            raise ValueError(f"{what} has {num_tokens} position embeddings, not a cube, and no grid to reshape them.")
        grid = (side,) * 3
    if math.prod(grid) != num_tokens:
        raise ValueError(f"{what}: grid {tuple(grid)} does not hold {num_tokens} position embeddings.")
    return tuple(int(g) for g in grid)


def _adapt_position_embeddings(
    vit_state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], grid: Sequence[int] | None,
    target_grid: Sequence[int] | None, name: str,
) -> bool:
    """Interpolate ``vit_state``'s position embeddings in place to the target grid; True when they were changed.

    An unknown grid with the target's token count is taken to agree; a width mismatch is left for the shape check.
    """
    pos, target_pos = vit_state.get(POS_KEY), target.get(POS_KEY)
    if pos is None or target_pos is None or pos.shape[-1] != target_pos.shape[-1]:
        return False
    grids_differ = grid is not None and target_grid is not None and tuple(grid) != tuple(target_grid)
    if pos.shape[1] == target_pos.shape[1] and not grids_differ:
        return False
    source_grid = _grid_of(pos.shape[1], grid, name)
    target_grid = _grid_of(target_pos.shape[1], target_grid, "target network")
    dim = pos.shape[-1]
    volume = pos.float().reshape(1, *source_grid, dim).permute(0, 4, 1, 2, 3)  # MONAI flattens tokens in h, w, d order
    volume = F.interpolate(volume, size=target_grid, mode="trilinear", align_corners=False)
    vit_state[POS_KEY] = volume.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(pos.dtype).contiguous()
    logger.info("%s: position embeddings interpolated from grid %s to %s.", name, source_grid, target_grid)
    return True


def _repeat_input_channels(vit_state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], name: str) -> int:
    """Repeat the patch-embedding conv weight in place over its input channels to the target's; returns the factor."""
    weight, target_weight = vit_state.get(PATCH_KEY), target.get(PATCH_KEY)
    if weight is None or target_weight is None or weight.ndim != target_weight.ndim:
        return 1
    source, wanted = list(weight.shape), list(target_weight.shape)
    if source[1] == wanted[1] or source[:1] + source[2:] != wanted[:1] + wanted[2:]:  # same, or a width mismatch
        return 1
    if wanted[1] % source[1]:
        raise ValueError(f"{name}: the target's {wanted[1]} input channels are not a multiple of {source[1]}.")
    factor = wanted[1] // source[1]
    vit_state[PATCH_KEY] = weight.repeat(1, factor, *[1] * (weight.ndim - 2))
    return factor


def _names(keys: Sequence[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "") or "none"


def load_encoder(
    vit_module: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    strict_width: bool = True,
    target_grid: Sequence[int] | None = None,
) -> LoadReport:
    """Load a pre-trained encoder into a MONAI ``ViT`` (or the ``.vit`` of a ``UNETR`` / ViT-based classifier).

    The checkpoint's position embeddings are interpolated trilinearly from its grid (``position_grid``, else the
    cube root of N) to the target grid (copied as is when they agree). The CLS token is loaded only when the target
    has a ``cls_token``. When the target has ``k`` times the checkpoint's input channels, the patch-embedding conv
    weight is repeated ``k`` times over the channel dimension (not rescaled, as in the GL-MAE author's loader).

    Args:
        vit_module: the target network; its ``.vit`` is used when present.
        checkpoint: a file path or an already loaded state dict, in any layout ``to_vit_state_dict`` reads.
        strict_width: raise on a shape mismatch (e.g. a 768-wide checkpoint into a 96-wide ViT); when False,
            skip those keys with a warning.
        target_grid: the target's token grid; defaults to ``UNETR.feat_size``, else a cube of the target's N.

    Raises:
        ValueError: on shape mismatches, channel counts that are not a multiple, unknown layouts, or when no
            encoder key matched the target.
    """
    is_path = isinstance(checkpoint, (str, os.PathLike))
    name = str(checkpoint) if is_path else "state dict"
    converted = _convert(load_state_dict_file(checkpoint) if is_path else checkpoint, name)
    vit_state = dict(converted.vit_state)
    vit = getattr(vit_module, "vit", vit_module)
    target = vit.state_dict()
    if converted.cls_token is not None and "cls_token" in target:
        vit_state["cls_token"] = converted.cls_token

    target_grid = target_grid or getattr(vit_module, "feat_size", None) or getattr(vit, "grid_size", None)
    interpolated = _adapt_position_embeddings(vit_state, target, converted.grid, target_grid, name)
    channels_repeated = _repeat_input_channels(vit_state, target, name)

    loadable = {}
    for key, value in vit_state.items():
        if key not in target:
            continue
        if value.shape != target[key].shape:
            message = (
                f"{name}: {key} has shape {tuple(value.shape)} in the checkpoint but {tuple(target[key].shape)} "
                f"in the target network"
            )
            if strict_width:
                raise ValueError(f"{message} (different hidden_size / mlp_dim / patch size?).")
            logger.warning("%s; skipped.", message)
            continue
        loadable[key] = value
    if not loadable:
        raise ValueError(
            f"{name}: no encoder key matched the target network (checkpoint keys: {_names(list(vit_state))}; "
            f"target keys: {_names(list(target))})."
        )
    vit.load_state_dict(loadable, strict=False)

    report = LoadReport(
        source_format=converted.source_format,
        loaded=[k for k in target if k in loadable],
        missing=[k for k in target if k not in loadable],
        unexpected=[k for k in vit_state if k not in loadable],
        interpolated=interpolated,
        channels_repeated=channels_repeated,
        dropped=converted.dropped,
        cls_dropped=converted.cls_token is not None and "cls_token" not in target,
    )
    _log_report(report, name, len(target))
    return report


def _log_report(report: LoadReport, name: str, num_target: int) -> None:
    """One-paragraph summary; ``norm_cross_attn`` keys missing from the checkpoint are counted, not named."""
    missing = [k for k in report.missing if not HARMLESS_MISSING.match(k)]
    adapted = "".join([
        ", position grid interpolated" if report.interpolated else "",
        f", input channels repeated x{report.channels_repeated}" if report.channels_repeated > 1 else "",
        f", {report.dropped} decoder / head tensors dropped" if report.dropped else "",
        ", CLS token dropped (the target has none)" if report.cls_dropped else "",
    ])
    harmless = len(report.missing) - len(missing)
    message = (
        f"Loaded {len(report.loaded)}/{num_target} encoder tensors from {name} ({report.source_format} format"
        f"{adapted}). Missing: {_names(missing)}{f' (+{harmless} unused norm_cross_attn)' if harmless else ''}. "
        f"Unexpected: {_names(report.unexpected)}."
    )
    if any(k.endswith("attn.qkv.bias") for k in report.unexpected):
        message += " The checkpoint has qkv biases: build the target with qkv_bias=True."
    logger.log(logging.WARNING if missing or report.unexpected else logging.INFO, message)


def load_pretrained_encoder(network: nn.Module, checkpoint: str | os.PathLike | Mapping | None,
                            freeze: bool = False) -> nn.Module:
    """Load ``checkpoint`` into ``network`` (its ``.vit`` when present) and return ``network``.

    For bundle configs: ``"$custom_components.weights.load_pretrained_encoder(@network_def, @pretrained_encoder,
    freeze=@freeze_encoder)"``. ``None`` or ``""`` returns the network unchanged (training from scratch).
    ``freeze`` stops the encoder's parameters from training (``requires_grad=False``): the frozen-encoder
    evaluation of a pre-training, where only UNETR's convolutional decoder or a classifier's norm and linear
    layer (a linear probe) learn.
    """
    if checkpoint is None or (isinstance(checkpoint, (str, os.PathLike)) and not str(checkpoint)):
        logger.info("No pretrained encoder given: %s trains from scratch.", type(network).__name__)
    else:
        load_encoder(network, checkpoint)
    if freeze:
        encoder = getattr(network, "vit", network)
        if encoder is network:
            raise ValueError(f"freeze_encoder: {type(network).__name__} has no .vit encoder to freeze.")
        for param in encoder.parameters():
            param.requires_grad_(False)
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        logger.info("Encoder frozen%s: %d parameters of %s train.",
                    "" if checkpoint else " at its random initialisation", trainable, type(network).__name__)
    return network
