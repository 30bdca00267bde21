"""Frozen-encoder probes, as self-supervised papers report them: DINO's token k-NN, a linear probe (MAE, DINO),
few-shot segmentation with a light head on frozen tokens, and a volume-level context probe.

A frozen encoder turns each volume ``[1, H, W, D]`` (HU windowed to [0, 1] as in pre-training) into one feature per
16³ patch, ``[N, hidden_size]`` (the final normed tokens of a MONAI ``ViT``, ``N = H·W·D / 16³``, in MONAI's
token order: h, then w, then d). Every probe is trained on the tokens of a few labelled volumes and scored on
held-out volumes that nothing is trained or chosen on:

- ``knn_classify``: DINO's weighted k-NN (cosine on L2-normalised features, k = 20, votes ``exp(sim / 0.07)``);
- ``linear_classify``: multinomial logistic regression (scikit-learn, fixed ``C``, balanced class weights);
- ``segmentation_probe``: a linear layer from each token to the logits of its patch's voxels, Adam on class-weighted
  cross-entropy plus soft Dice for a fixed number of steps, scored by the voxel Dice of the foreground classes;
- ``context_probe``: volume attributes (thorax in the field of view, contrast phase, which organs are present) from
  the mean of a volume's tokens, by cross-validated logistic regression;
- ``crop_retrieval``: whether the embeddings of two crops of one volume are closer than those of two volumes.

Token probes standardise the features with the training tokens' mean and std first (k-NN then L2-normalises):
without the centring, the cosine of non-negative raw intensities ignores their level and the raw baseline would be
a strawman. Their label is the patch's most frequent organ when it fills at least ``min_fraction`` of the patch
(0.25); by default they train and score organ tokens only (which organ is it?), see ``ProbeSettings``.

``organ_oracle_features`` is the positive control: it reads the labels, so it is no encoder, and shows how high a
probe can score on the data. A probe whose oracle scores near chance cannot rank encoders.

Baselines that a pre-trained encoder must beat before a fine-tuning result means much: ``init_encoder_state`` (the
same architecture at the pre-training's own initialisation, 0 steps), ``raw_position_features`` (the patch's voxels
pooled to 4³ plus its position) and ``position_features`` (where the token is, nothing else).

Example::

    data = synthetic_probe_data(40, (128, 128, 96), num_classes=7)   # shuffled layout, structured organs
    vit = load_frozen_encoder("models/encoder.pt", data.volume_shape, num_heads=4)
    features = encoder_features(vit, data.images)                      # [40, 384, 96]
    rows = list(evaluate_features("glmae", features, data, ProbeSettings()))
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics import DiceMetric
from monai.networks.nets import ViT
from monai.transforms import (Compose, LoadImaged, Orientationd, ResizeWithPadOrCropd, ScaleIntensityRange,
                              ScaleIntensityRanged)
from monai.utils import convert_to_tensor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, jaccard_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from custom_components.data.datalist import load_datalist
from custom_components.networks.pos_embed import sincos_position_embedding
from custom_components.synthetic.ct import make_synthetic_ct, synthetic_ct_profile
from custom_components.weights import (HARMLESS_MISSING, PATCH_KEY, POS_KEY, load_encoder, load_state_dict_file,
                                       to_vit_state_dict)

__all__ = [
    "IGNORE", "PATCH_SIZE", "EncoderSize", "ProbeData", "ProbeSettings", "build_vit", "context_probe",
    "crop_retrieval", "datalist_probe_data", "draw_splits", "encoder_features", "encoder_size", "evaluate_features",
    "init_encoder_state", "knn_classify", "linear_classify", "load_frozen_encoder", "organ_oracle_features",
    "position_features", "raw_position_features", "resolve_num_heads", "segmentation_probe", "synthetic_probe_data",
    "token_grid", "token_labels", "token_positions", "token_scores", "vit_size",
]

PATCH_SIZE = 16
RAW_POOL = 4  # raw baseline: a patch's voxels average-pooled to 4³ values
IGNORE = -1  # token label of a patch that holds a sliver of an organ (see token_labels)
ORACLE_BINS, ORACLE_SPAN = 30, (-0.6, 0.15)  # organ_oracle_features' histogram
PHASE_EDGES = np.linspace(0.4, 1.8, 4)[1:-1]  # thirds of the generator's hu_scale range: contrast-phase bins
ORIENTATION_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # as the pre-training bundle's Orientationd
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class EncoderSize:
    """A MONAI ``ViT``'s size: width, MLP width, depth, heads and whether the qkv projection has a bias."""

    hidden_size: int
    mlp_dim: int
    num_layers: int
    num_heads: int
    qkv_bias: bool = True


@dataclass
class ProbeData:
    """Labelled probe volumes, preprocessed like pre-training input.

    Attributes:
        images: ``[V, 1, H, W, D]`` float32 in [0, 1] (HU window), each side a multiple of 16.
        labels: ``[V, H, W, D]`` int64 class indices ``0..num_classes-1`` (0 background).
        class_names: ``num_classes`` names, background first.
        attributes: volume-level targets of the context probe, each ``[V]`` (a class per volume) or ``[V, K]``
            (K yes/no targets, e.g. which organs are present).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    attributes: dict[str, np.ndarray]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])


@dataclass(frozen=True)
class ProbeSettings:
    """What every probe run shares; nothing here is chosen on the held-out volumes.

    Attributes:
        budgets: labelled training volumes per probe fit.
        num_splits: random draws of the labelled volumes per budget (budgets are nested within a draw).
        num_test: held-out volumes (the last ``num_test`` of the data), never trained or chosen on.
        k, temperature: DINO's k-NN (20 neighbours, votes ``exp(sim / 0.07)``).
        linear_c: inverse L2 strength of the logistic regressions (scikit-learn's default 1.0, not tuned).
        min_fraction: the part of a patch an organ must fill to label the token (see ``token_labels``).
        background_fraction: with ``organs_only`` off, below this part of a patch the token is background, and
            tokens between the two fractions are left out of the token probes (``IGNORE``).
        organs_only: the token probes train and score organ tokens only (which organ is this?, chance
            1 / organs). Background tokens outnumber organ tokens 30 to 1 in the default probe data; with them in,
            the k-NN votes background everywhere and its score says little about what a feature knows of organs.
        seg_steps, seg_lr: Adam steps (full batch) and learning rate of the segmentation head.
        seg_stride: voxels per logit edge of the segmentation head: 1 gives every voxel its own logit, 4 one logit
            per 4³ voxels (nearest-upsampled; 64 times less work).
        context_folds: folds of the context probe's cross-validation (fewer when a class has fewer volumes).
        seed: base seed of the draws (split ``s`` uses ``seed + s``).
    """

    budgets: Sequence[int] = (1, 2, 4, 8)
    num_splits: int = 5
    num_test: int = 16
    k: int = 20
    temperature: float = 0.07
    linear_c: float = 1.0
    min_fraction: float = 0.25
    background_fraction: float | None = 0.02
    organs_only: bool = True
    seg_steps: int = 100
    seg_lr: float = 1e-2
    seg_stride: int = 4
    context_folds: int = 5
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------------
# Token grid, positions and labels


def token_grid(volume_shape: Sequence[int]) -> tuple[int, int, int]:
    """The token grid of a volume: ``volume_shape // 16``; raises unless every side is a positive multiple of 16."""
    shape = tuple(int(s) for s in volume_shape)
    if len(shape) != 3 or any(s <= 0 or s % PATCH_SIZE for s in shape):
        raise ValueError(f"volume shape {tuple(volume_shape)} must be three positive multiples of {PATCH_SIZE} "
                         f"(the patch size), e.g. 64 64 48.")
    return tuple(s // PATCH_SIZE for s in shape)


def _to_tokens(x: torch.Tensor, block: int) -> torch.Tensor:
    """``[V, C, H, W, D]`` -> ``[V, N, C, block³]``: the ``block³`` cells of each token, in MONAI's token order."""
    v, c, h, w, d = x.shape
    gh, gw, gd = h // block, w // block, d // block
    x = x.reshape(v, c, gh, block, gw, block, gd, block).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(v, gh * gw * gd, c, block**3)


def _from_tokens(x: torch.Tensor, grid: Sequence[int], block: int) -> torch.Tensor:
    """Inverse of ``_to_tokens`` for one channel: ``[V, N, block³]`` -> ``[V, gh·block, gw·block, gd·block]``."""
    gh, gw, gd = grid
    x = x.reshape(x.shape[0], gh, gw, gd, block, block, block).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(x.shape[0], gh * block, gw * block, gd * block)


def token_positions(grid: Sequence[int]) -> torch.Tensor:
    """Normalised centre ``(x, y, z)`` of every token, ``[N, 3]`` in (-1, 1), in MONAI's token order."""
    axes = [(torch.arange(g, dtype=torch.float32) + 0.5) / g * 2.0 - 1.0 for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def token_labels(labels: torch.Tensor, num_classes: int, min_fraction: float = 0.5,
                 background_fraction: float | None = None) -> torch.Tensor:
    """Label of every token: its patch's most frequent organ when that organ fills at least ``min_fraction`` of the
    patch's 16³ voxels; background (0) when no organ fills ``background_fraction`` of it; ``IGNORE`` (-1) between
    the two, for tokens that hold a sliver of an organ and are neither (probes neither train nor score them).

    ``min_fraction=0.5`` labels a token with an organ only where the organ is the patch's majority.
    ``background_fraction=None`` (the same as ``min_fraction``) ignores nothing.

    Args:
        labels: ``[V, H, W, D]`` class indices.
        num_classes: classes including background.
        min_fraction: in (0, 1].
        background_fraction: in (0, min_fraction], or None.

    Returns:
        ``[V, N]`` int64.
    """
    background_fraction = min_fraction if background_fraction is None else background_fraction
    if not 0.0 < background_fraction <= min_fraction <= 1.0:
        raise ValueError(f"need 0 < background_fraction <= min_fraction <= 1, got min_fraction={min_fraction}, "
                         f"background_fraction={background_fraction}.")
    token_grid(labels.shape[1:])
    cells = _to_tokens(labels.unsqueeze(1).long(), PATCH_SIZE)[:, :, 0]  # [V, N, 16³]
    counts = torch.zeros(*cells.shape[:2], num_classes, dtype=torch.int64)
    counts.scatter_add_(2, cells, torch.ones_like(cells))
    organ_voxels, organ = counts[..., 1:].max(dim=-1)
    fraction = organ_voxels.float() / PATCH_SIZE**3
    return torch.where(fraction >= min_fraction, organ + 1,
                       torch.where(fraction < background_fraction, 0, IGNORE))


# ---------------------------------------------------------------------------------------------------------------
# Probe data


def synthetic_probe_data(
    num_volumes: int = 40, volume_shape: Sequence[int] = (128, 128, 96), num_classes: int = 7, seed: int = 1000,
    hu_range: Sequence[float] = (-1000.0, 1000.0), shuffle_layout: bool = True, organ_texture: bool = True,
) -> ProbeData:
    """Labelled varied synthetic CT volumes (``make_synthetic_ct(..., varied=True)``, seeds ``seed + i``), HU
    windowed to [0, 1], with their drawn attributes for the context probe.

    Attributes: ``lungs`` ``[V]`` (thorax in the field of view, 0/1), ``phase`` ``[V]`` (contrast-phase third of
    ``hu_scale``, 0..2) and ``organs`` ``[V, num_classes - 1]`` (which organs are painted).

    ``shuffle_layout`` and ``organ_texture`` (both on) make which organ a token holds a matter of its appearance:
    not of where it is, and not of its HU alone, which the contrast phase scrambles (see ``make_synthetic_ct``).
    ``seed`` defaults to 1000, away from the seeds of the pre-training volumes (0, 1, ...).
    """
    if num_volumes < 1:
        raise ValueError(f"num_volumes must be positive, got {num_volumes}.")
    token_grid(volume_shape)
    window = ScaleIntensityRange(hu_range[0], hu_range[1], 0.0, 1.0, clip=True)
    images, labels, profiles = [], [], []
    for index in range(num_volumes):
        image, label = make_synthetic_ct(volume_shape, num_classes, seed + index, varied=True,
                                         shuffle_layout=shuffle_layout, organ_texture=organ_texture)
        images.append(convert_to_tensor(window(image.astype(np.float32)[None]), track_meta=False))
        labels.append(torch.from_numpy(label.astype(np.int64)))
        profiles.append(synthetic_ct_profile(seed + index, num_classes))
    attributes = {
        "lungs": np.array([p["lungs"] for p in profiles], dtype=np.int64),
        "phase": np.digitize([p["hu_scale"] for p in profiles], PHASE_EDGES),
        "organs": np.stack([p["present"] for p in profiles]).astype(np.int64),
    }
    names = ["background", *(f"organ_{k}" for k in range(1, num_classes))]
    return ProbeData(torch.stack(images).float(), torch.stack(labels), names, attributes)


def datalist_probe_data(
    datalist: str | os.PathLike, volume_shape: Sequence[int] = (64, 64, 48),
    hu_range: Sequence[float] = (-1000.0, 1000.0), section: str = "training",
) -> ProbeData:
    """Labelled volumes of a decathlon JSON datalist (``image`` and ``label`` per entry), read like pre-training
    input: MONAI ``LoadImage``, channel first, RAS orientation, HU window to [0, 1], then centre-cropped or padded
    (with air) to ``volume_shape``. Resample the data beforehand to the spacing the encoder was pre-trained at.

    Label values on disk map to class indices in the order of the datalist's ``labels`` (else their sorted values).
    The only context attribute is ``organs`` ``[V, num_classes - 1]`` (which classes a volume holds).
    """
    token_grid(volume_shape)
    keys = ("image", "label")
    entries = load_datalist(datalist, section, keys=keys)
    transform = Compose([
        LoadImaged(keys, image_only=True, ensure_channel_first=True),
        Orientationd(keys, axcodes="RAS", labels=ORIENTATION_LABELS),
        ScaleIntensityRanged("image", hu_range[0], hu_range[1], 0.0, 1.0, clip=True),
        ResizeWithPadOrCropd(keys, volume_shape),
    ])
    images, raw_labels = [], []
    for entry in entries:
        item = transform(entry)
        if item["image"].shape[0] != 1:
            raise ValueError(f"{entry['image']} has {item['image'].shape[0]} channels; the probes read "
                             "single-channel CT.")
        images.append(convert_to_tensor(item["image"], dtype=torch.float32, track_meta=False))
        raw_labels.append(convert_to_tensor(item["label"][0], track_meta=False).round().long())
    values, names = _label_values(datalist, torch.cat([lab.unique() for lab in raw_labels]).unique())
    values = torch.tensor(values)
    labels = []
    for entry, raw in zip(entries, raw_labels):
        index = torch.searchsorted(values, raw).clamp(max=len(values) - 1)
        unknown = raw[values[index] != raw].unique().tolist()
        if unknown:
            raise ValueError(f"{entry['label']} holds label values {unknown} that the datalist's labels do not list.")
        labels.append(index)
    labels = torch.stack(labels)
    organs = torch.stack([torch.bincount(lab.flatten(), minlength=len(values))[1:] > 0 for lab in labels])
    return ProbeData(torch.stack(images), labels, names, {"organs": organs.numpy().astype(np.int64)})


def _label_values(datalist: str | os.PathLike, found: torch.Tensor) -> tuple[list[int], list[str]]:
    """Label values on disk (background first) and their names, from the datalist's ``labels`` when it has one."""
    with open(datalist) as f:
        listed = json.load(f).get("labels")
    if isinstance(listed, Mapping) and listed:
        pairs = sorted((int(value), str(name)) for value, name in listed.items())
        return [v for v, _ in pairs], [n for _, n in pairs]
    values = sorted({0, *found.tolist()})
    return values, ["background", *(f"class_{v}" for v in values[1:])]


# ---------------------------------------------------------------------------------------------------------------
# Encoders and features


def encoder_size(state: Mapping[str, torch.Tensor], num_heads: int | None = None, name: str = "checkpoint"
                 ) -> EncoderSize:
    """Read a ViT's size from a state dict in MONAI ``ViT`` names (``to_vit_state_dict``'s output).

    ``hidden_size`` comes from the patch-embedding weight, ``num_layers`` from the block count, ``mlp_dim`` from
    ``linear1``; ``num_heads`` is not in a checkpoint: pass it (12 is assumed for a 768-wide ViT-B).

    Raises:
        ValueError: no patch-embedding weight, a patch other than 16³, more than one input channel, no
            ``num_heads`` for a width other than 768, or a width the heads do not divide.
    """
    weight = state.get(PATCH_KEY)
    if weight is None or weight.ndim != 5:
        raise ValueError(f"{name}: no 3D patch-embedding weight ({PATCH_KEY}) to read the encoder's width from.")
    hidden_size, channels, *patch = weight.shape
    if patch != [PATCH_SIZE] * 3:
        raise ValueError(f"{name}: patch size {tuple(patch)}; the probes use 16³ patches.")
    if channels != 1:
        raise ValueError(f"{name} embeds {channels} input channels; the probes feed single-channel CT.")
    blocks = {int(m.group(1)) for key in state if (m := BLOCK_KEY.match(key))}
    if not blocks or "blocks.0.mlp.linear1.weight" not in state:
        raise ValueError(f"{name}: no transformer blocks (blocks.0.mlp.linear1.weight) to read the depth from.")
    return EncoderSize(hidden_size, state["blocks.0.mlp.linear1.weight"].shape[0], max(blocks) + 1,
                       resolve_num_heads(hidden_size, num_heads, name), "blocks.0.attn.qkv.bias" in state)


def resolve_num_heads(hidden_size: int, num_heads: int | None = None, name: str = "encoder") -> int:
    """``num_heads``, or 12 for a 768-wide ViT-B when it is None.

    Raises:
        ValueError: None for another width (a checkpoint does not store its heads), or heads that do not divide
            ``hidden_size``.
    """
    if num_heads is None:
        if hidden_size != 768:
            raise ValueError(f"{name}: a checkpoint does not store its number of attention heads; give num_heads "
                             f"(--num_heads) for this {hidden_size}-wide encoder (12 is assumed only for 768-wide "
                             f"ViT-B; the quickstart's 96-wide encoder has 4).")
        num_heads = 12
    if num_heads < 1 or hidden_size % num_heads:
        raise ValueError(f"{name}: {num_heads} attention heads do not divide the encoder's width {hidden_size}.")
    return num_heads


def vit_size(vit: ViT) -> EncoderSize:
    """The size of a built MONAI ``ViT`` (e.g. to build the ``init`` control of a loaded encoder)."""
    block = vit.blocks[0]
    return EncoderSize(vit.patch_embedding.patch_embeddings.weight.shape[0], block.mlp.linear1.weight.shape[0],
                       len(vit.blocks), block.attn.num_heads, block.attn.qkv.bias is not None)


def build_vit(size: EncoderSize, volume_shape: Sequence[int]) -> ViT:
    """A MONAI ``ViT`` of ``size`` for ``volume_shape`` volumes (patch 16, conv patch embedding, no CLS), in eval
    mode with gradients off."""
    resolve_num_heads(size.hidden_size, size.num_heads)
    token_grid(volume_shape)
    vit = ViT(1, tuple(volume_shape), PATCH_SIZE, size.hidden_size, size.mlp_dim, size.num_layers, size.num_heads,
              proj_type="conv", pos_embed_type="sincos", classification=False, qkv_bias=size.qkv_bias)
    return vit.eval().requires_grad_(False)


def load_frozen_encoder(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], volume_shape: Sequence[int],
                        num_heads: int | None = None) -> ViT:
    """Build a ``ViT`` of the checkpoint's size and load it (any layout ``load_encoder`` reads) for
    ``volume_shape`` volumes.

    Position embeddings: an encoder with the fixed sin-cos table of its stored grid (ours: ``encoder.pt`` with
    ``position_grid``) gets the sin-cos table of ``volume_shape // 16``, as GL-MAE pre-training gives views of any
    size; other tables (learned ones) are interpolated trilinearly to that grid.

    Raises:
        ValueError: besides ``encoder_size``'s reasons, when a ViT tensor is missing from the checkpoint (a probe
            of a half-loaded encoder would measure its random part).
    """
    is_path = isinstance(checkpoint, (str, os.PathLike))
    name = str(checkpoint) if is_path else "state dict"
    state = load_state_dict_file(checkpoint) if is_path else dict(checkpoint)
    vit_state, _, _ = to_vit_state_dict(state)
    vit = build_vit(encoder_size(vit_state, num_heads, name), volume_shape)
    sincos = has_sincos_positions(state)
    if sincos:  # keep the ViT's own sin-cos table of the probe grid
        state = {k: v for k, v in state.items() if k not in (POS_KEY, "position_grid")}
    report = load_encoder(vit, state, target_grid=token_grid(volume_shape))
    missing = [k for k in report.missing if not HARMLESS_MISSING.match(k) and not (sincos and k == POS_KEY)]
    if missing:
        raise ValueError(f"{name} lacks {len(missing)} encoder tensors of the ViT ({', '.join(missing[:4])}, ...).")
    return vit


def has_sincos_positions(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether an ``encoder.pt`` state dict holds the fixed sin-cos position table of its ``position_grid``."""
    table, grid = state.get(POS_KEY), state.get("position_grid")
    if table is None or grid is None or table.ndim != 3:
        return False
    expected = sincos_position_embedding([int(g) for g in grid], table.shape[-1])
    return expected.shape == table.shape and torch.allclose(table.float(), expected, atol=1e-5)


def init_encoder_state(size: EncoderSize, volume_shape: Sequence[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """The encoder of a ``GLMAE`` at the pre-training's own initialisation (``weight_init="mae"``, no step), drawn
    under ``torch.manual_seed(seed)``, as an ``encoder.pt`` state dict: the 0-step control of a pre-trained encoder.
    """
    from custom_components.networks import GLMAE
    from custom_components.weights import encoder_state_dict

    token_grid(volume_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = GLMAE(img_size=tuple(volume_shape), hidden_size=size.hidden_size, mlp_dim=size.mlp_dim,
                    num_layers=size.num_layers, num_heads=size.num_heads, qkv_bias=size.qkv_bias, weight_init="mae")
    return encoder_state_dict(net)


@torch.no_grad()
def encoder_features(vit: ViT, images: torch.Tensor, batch_size: int = 4, device: str | torch.device = "cpu"
                     ) -> torch.Tensor:
    """Final normed tokens ``[V, N, hidden_size]`` (float32, on CPU) of ``images: [V, 1, H, W, D]``."""
    vit = vit.to(device).eval()
    return torch.cat([vit(batch.to(device))[0].float().cpu() for batch in images.split(batch_size)])


def raw_position_features(images: torch.Tensor) -> torch.Tensor:
    """Raw baseline ``[V, N, 64 + 3]``: each patch's voxels average-pooled to 4³, then its normalised position."""
    grid = token_grid(images.shape[2:])
    pooled = F.avg_pool3d(images.float(), PATCH_SIZE // RAW_POOL)
    raw = _to_tokens(pooled, RAW_POOL).flatten(2)
    return torch.cat([raw, position_features(images.shape[0], grid)], dim=-1)


def organ_oracle_features(images: torch.Tensor, labels: torch.Tensor, num_classes: int, min_fraction: float = 0.25,
                          bins: int = ORACLE_BINS, span: Sequence[float] = ORACLE_SPAN) -> torch.Tensor:
    """Positive control ``[V, N, bins]``: the histogram of the token's organ voxels around their own median.

    It reads the labels (which voxels of the patch are the token's organ), so it is no encoder: it measures what the
    patch's intensities can tell about which organ a token holds when a feature knows where the organ is and
    ignores the contrast phase's shift of its HU. A probe that scores it near chance cannot rank encoders on that
    data; the gap between it and an encoder is what the encoder leaves on the table. Tokens without an organ get
    the histogram of all their voxels.

    Args:
        images: ``[V, 1, H, W, D]`` windowed to [0, 1]; labels: ``[V, H, W, D]``.
        span: the histogram's range of intensity minus median, in window units (default -1200..+300 HU of
            the [-1000, 1000] window: gas and fat below organ tissue, enhancement above).
    """
    token = token_labels(labels, num_classes, min_fraction)
    values = _to_tokens(images.float(), PATCH_SIZE)[:, :, 0]  # [V, N, 16³]
    voxel_labels = _to_tokens(labels.unsqueeze(1).long(), PATCH_SIZE)[:, :, 0]
    organ = (voxel_labels == token.unsqueeze(-1)) | (token.unsqueeze(-1) == 0)
    median = torch.where(organ, values, torch.nan).nanmedian(dim=-1, keepdim=True).values
    offset = ((values - median - span[0]) / (span[1] - span[0]) * bins).floor().clamp(0, bins - 1).long()
    histogram = torch.zeros(*values.shape[:2], bins)
    histogram.scatter_add_(2, offset, organ.float())
    return histogram / organ.sum(-1, keepdim=True).clamp(min=1)


def position_features(num_volumes: int, grid: Sequence[int]) -> torch.Tensor:
    """Position baseline ``[V, N, 3]``: every token's normalised (x, y, z), the same in each volume."""
    return token_positions(grid).expand(num_volumes, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Probes


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every column with ``train``'s mean and std (``[M, D]``; constant columns left at 0)."""
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


@torch.no_grad()
def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, k: int = 20,
                 temperature: float = 0.07, chunk: int = 4096) -> torch.Tensor:
    """DINO's weighted k-NN: cosine similarity of L2-normalised features, the ``k`` most similar training tokens
    vote for their class with weight ``exp(sim / temperature)``.

    Args:
        train_x: ``[M, D]`` features; train_y: ``[M]`` classes; test_x: ``[Q, D]``.

    Returns:
        ``[Q]`` predicted classes (on ``test_x``'s device).
    """
    train_n, test_n = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    k = min(k, train_n.shape[0])
    predictions = []
    for query in test_n.split(chunk):
        sim, index = (query @ train_n.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, train_y.to(query.device)[index], (sim / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def linear_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Multinomial logistic regression (L2, inverse strength ``c``, balanced class weights) on ``[M, D]`` features;
    returns ``[Q]`` predictions. With one class in the training tokens, that class is predicted everywhere."""
    classes = np.unique(train_y)
    if len(classes) == 1:
        return np.full(len(test_x), classes[0])
    model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    return model.fit(train_x, train_y).predict(test_x)


def token_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """Balanced accuracy over the classes present in ``y_true`` and per-class IoU ``[num_classes]`` (NaN for a class
    in neither labels nor predictions)."""
    iou = jaccard_score(y_true, y_pred, labels=list(range(num_classes)), average=None, zero_division=0.0)
    seen = np.bincount(y_true, minlength=num_classes) + np.bincount(y_pred, minlength=num_classes)
    return float(balanced_accuracy_score(y_true, y_pred)), np.where(seen > 0, iou, np.nan)


def segmentation_probe(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
    test_labels: torch.Tensor, num_classes: int, steps: int = 100, lr: float = 1e-2, stride: int = 2,
) -> np.ndarray:
    """Few-shot segmentation by a linear head on frozen tokens; returns per-class Dice ``[num_classes - 1]``.

    The head maps each token's standardised feature to ``C`` logits for each cell of ``(16 / stride)³`` in its patch
    (``stride`` 1: one per voxel), nearest-upsampled to the voxels (SETR-naive with a per-token linear upsampler).
    It starts at zero and is trained by full-batch Adam on voxel cross-entropy, each class weighted by the inverse
    square root of its share of the labelled voxels (``class_balance_weights``), plus the soft Dice loss of the
    foreground classes (MONAI's ``DiceLoss``, pooled over the batch) for ``steps`` steps. Unweighted, "background
    everywhere" is the answer whenever organs are a few percent of the voxels (2 % in the synthetic probe data):
    encoders then score 0 Dice, the trivial value, and the probe ranks nothing. With ``stride`` above 1 the loss
    against each cell's class fractions equals the voxel loss of the upsampled logits.

    Args:
        train_features: ``[n, N, D]`` tokens of the labelled volumes; train_labels: ``[n, H, W, D]``.
        test_features: ``[q, N, D]``; test_labels: ``[q, H, W, D]``.
        num_classes: classes including background.

    Returns:
        Dice of classes ``1..C-1`` on the test volumes (mean over the volumes that hold the class; NaN if none).
    """
    if stride < 1 or PATCH_SIZE % stride:
        raise ValueError(f"seg stride must divide the patch size {PATCH_SIZE}, got {stride}.")
    device = train_features.device
    grid, cells = token_grid(train_labels.shape[1:]), PATCH_SIZE // stride
    train_x, test_x = _standardise(train_features.flatten(0, 1), test_features.flatten(0, 1))
    one_hot = F.one_hot(train_labels.to(device), num_classes).permute(0, 4, 1, 2, 3).float()
    target = _to_tokens(F.avg_pool3d(one_hot, stride), cells).flatten(0, 1)  # [T, C, cells³] class fractions
    weight = class_balance_weights(target.mean((0, 2)))
    head = torch.nn.Linear(train_x.shape[1], num_classes * cells**3, device=device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    dice = DiceLoss(include_background=False, softmax=True, batch=True)
    for _ in range(steps):
        logits = head(train_x).view(-1, num_classes, cells**3)
        loss = F.cross_entropy(logits, target, weight=weight)
        loss = loss + dice(logits.transpose(0, 1)[None], target.transpose(0, 1)[None])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        cells_pred = head(test_x).view(-1, num_classes, cells**3).argmax(1).view(test_features.shape[0], -1, cells**3)
        prediction = _from_tokens(cells_pred, grid, cells)
        prediction = prediction.repeat_interleave(stride, 1).repeat_interleave(stride, 2).repeat_interleave(stride, 3)
    metric = DiceMetric(include_background=False, reduction="mean_batch", num_classes=num_classes)
    metric(prediction.unsqueeze(1), test_labels.to(device).unsqueeze(1))
    return metric.aggregate().cpu().numpy()


def class_balance_weights(shares: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """Cross-entropy class weights ``[C]`` from the classes' voxel shares: the inverse square root of the share,
    scaled to a mean of 1. A class absent from the labelled volumes (share below ``floor``) gets the weight of a
    class at ``floor``. The full inverse share over-segments the rarest organs: on features that hold the labels
    exactly it cost a third of the Dice of the rarest class, where the square root cost nothing."""
    weight = shares.clamp(min=floor) ** -0.5
    return weight * (len(weight) / weight.sum())


def context_probe(volume_features: np.ndarray, attributes: Mapping[str, np.ndarray], c: float = 1.0,
                  folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Volume attributes from mean-pooled token features ``[V, D]``: k-fold cross-validated logistic regression
    (standardised inside each fold) over all volumes, balanced accuracy of the pooled out-of-fold predictions.

    An attribute ``[V, K]`` is K yes/no targets scored by their mean balanced accuracy; a target whose rarer class
    has fewer than 2 volumes is skipped (NaN when all are).
    """
    scores = {}
    for name, values in attributes.items():
        columns = values.reshape(len(values), -1).T
        column_scores = [_cross_validated(volume_features, y, c, folds, seed) for y in columns]
        column_scores = [s for s in column_scores if s is not None]
        scores[name] = float(np.mean(column_scores)) if column_scores else float("nan")
    return scores


def crop_retrieval(embeddings: np.ndarray, groups: Sequence[int]) -> dict[str, float]:
    """How well per-crop embeddings ``[M, D]`` keep crops of one volume together (``groups[i]``: crop ``i``'s volume).

    Cosines are taken after centring on the mean embedding of all crops (a common offset would otherwise make every
    pair look alike; the raw cosine is reported too).

    Returns:
        ``same`` / ``different``: mean centred cosine over pairs of crops of one volume / of two volumes;
        ``raw_same`` / ``raw_different``: the same without centring; ``margin``: ``same - different``;
        ``retrieval``: the fraction of crops whose most similar other crop (centred cosine) is of the same volume;
        ``chance``: that fraction for random embeddings (crops of the same volume among all others).

    Raises:
        ValueError: fewer than two volumes, or a volume with a single crop.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    groups = np.asarray(groups)
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < 2 or counts.min() < 2 or len(groups) != len(x):
        raise ValueError(f"crop_retrieval needs one group id per embedding, at least two groups and two crops in each; "
                         f"got {len(x)} embeddings, {len(groups)} ids, crops per group {counts.tolist()}.")
    same = groups[:, None] == groups[None, :]
    off_diagonal = ~np.eye(len(x), dtype=bool)

    def cosines(v: np.ndarray) -> np.ndarray:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v @ v.T

    raw, centred = cosines(x), cosines(x - x.mean(axis=0))
    nearest = np.where(off_diagonal, centred, -np.inf).argmax(axis=1)
    result = {
        "same": float(centred[same & off_diagonal].mean()), "different": float(centred[~same].mean()),
        "raw_same": float(raw[same & off_diagonal].mean()), "raw_different": float(raw[~same].mean()),
        "retrieval": float((groups[nearest] == groups).mean()),
        "chance": float(((counts - 1) * counts).sum() / (len(x) * (len(x) - 1))),
    }
    result["margin"] = result["same"] - result["different"]
    return result


def _cross_validated(x: np.ndarray, y: np.ndarray, c: float, folds: int, seed: int) -> float | None:
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < 2:
        return None
    cv = StratifiedKFold(n_splits=min(folds, int(counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))
    return float(balanced_accuracy_score(y, cross_val_predict(model, x, y, cv=cv)))


# ---------------------------------------------------------------------------------------------------------------
# The protocol


def draw_splits(num_volumes: int, num_test: int, budgets: Sequence[int], num_splits: int, seed: int = 0
                ) -> list[tuple[int, dict[int, list[int]]]]:
    """Labelled-volume draws: ``[(split, {budget: volume indices})]`` from the first ``num_volumes - num_test``
    volumes (the rest are the held-out test volumes). Within a split the budgets are nested (the 2 volumes of budget
    2 include the one of budget 1); split ``s`` draws with ``seed + s``.

    Raises:
        ValueError: a budget below 1 or above the volumes left for training, or fewer than 1 test volume or split.
    """
    pool = num_volumes - num_test
    if num_test < 1 or num_splits < 1:
        raise ValueError(f"need at least 1 test volume and 1 split, got num_test={num_test}, splits={num_splits}.")
    if not budgets or min(budgets) < 1 or max(budgets) > pool:
        raise ValueError(f"budgets {list(budgets)} must be between 1 and the {pool} volumes left for training "
                         f"({num_volumes} volumes - {num_test} held out); add volumes or lower the budgets.")
    draws = []
    for split in range(num_splits):
        order = np.random.default_rng(seed + split).permutation(pool).tolist()
        draws.append((split, {b: sorted(order[:b]) for b in budgets}))
    return draws


def evaluate_features(name: str, features: torch.Tensor, data: ProbeData, settings: ProbeSettings,
                      device: str | torch.device = "cpu") -> Iterator[dict]:
    """Run every probe on one feature set ``[V, N, D]`` and yield one row per probe × budget × split.

    Rows: ``encoder``, ``probe`` (``knn``, ``linear``, ``segmentation`` or ``context:<attribute>``), ``budget``
    (labelled volumes; for context the volumes cross-validated over), ``split``, ``metric``, ``score`` and
    ``class_<k>`` (per-class IoU of the token probes, per-class Dice of the segmentation head).
    """
    num_volumes, test = data.images.shape[0], slice(data.images.shape[0] - settings.num_test, None)
    labels = token_labels(data.labels, data.num_classes, settings.min_fraction, settings.background_fraction)
    features, kept = features.float(), labels > 0 if settings.organs_only else labels != IGNORE
    for split, budgets in draw_splits(num_volumes, settings.num_test, settings.budgets, settings.num_splits,
                                      settings.seed):
        for budget, train in budgets.items():
            base = {"encoder": name, "budget": budget, "split": split}
            if kept[train].any() and kept[test].any():
                train_x, test_x = _standardise(features[train][kept[train]], features[test][kept[test]])
                train_y, test_y = labels[train][kept[train]], labels[test][kept[test]].numpy()
                knn = knn_classify(train_x.to(device), train_y, test_x.to(device), data.num_classes, settings.k,
                                   settings.temperature).cpu().numpy()
                linear = linear_classify(train_x.numpy(), train_y.numpy(), test_x.numpy(), settings.linear_c)
                for probe, prediction in (("knn", knn), ("linear", linear)):
                    score, iou = token_scores(test_y, prediction, data.num_classes)
                    yield {**base, "probe": probe, "metric": "balanced_accuracy", "score": score, **_per_class(iou)}
            else:  # no organ fills min_fraction of a patch in the labelled (or held-out) volumes
                for probe in ("knn", "linear"):
                    yield {**base, "probe": probe, "metric": "balanced_accuracy", "score": float("nan")}
            dice = segmentation_probe(features[train].to(device), data.labels[train], features[test].to(device),
                                      data.labels[test], data.num_classes, settings.seg_steps, settings.seg_lr,
                                      settings.seg_stride)
            yield {**base, "probe": "segmentation", "metric": "dice", "score": float(np.nanmean(dice)),
                   **_per_class(np.concatenate([[np.nan], dice]))}
        pooled = features.mean(1).numpy()
        context = context_probe(pooled, data.attributes, settings.linear_c, settings.context_folds,
                                settings.seed + split)
        for attribute, score in context.items():
            yield {"encoder": name, "probe": f"context:{attribute}", "budget": num_volumes, "split": split,
                   "metric": "balanced_accuracy", "score": score}


def _per_class(values: np.ndarray) -> dict[str, float]:
    return {f"class_{k}": float(v) for k, v in enumerate(values)}
