"""Synthetic multi-modal brain MRI with a tumour, in the MSD Task01 or the BraTS 2021 layout, for the BraTS bundle's
quickstart and tests instead of downloads.

A volume is a skull-stripped brain (zero outside): white matter inside grey matter, two ventricles of CSF, and a
tumour made of nested parts: a necrotic core, an enhancing rim around it and edema around both, each an ellipsoid
with its own size and orientation. Every tissue has its own intensity in each of the four modalities, roughly as in
real scans, so that no single modality tells the tumour parts apart: edema is bright in FLAIR and T2, the necrotic
core dark in T1 and T1ce but bright in T2, the enhancing rim bright in T1ce only. As in real scans, intensity alone
is not enough: each modality has a smooth bias field (up to +-25 %), a per-case gain (the bundle's z-score
normalisation removes it), a fine texture within each tissue and noise, so the classes overlap voxel by voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from custom_components.data.brats import BRATS_LAYOUTS, LABEL_CLASSES, MODALITIES, write_brats2021_datalist
from custom_components.data.datalist import training_entries, write_decathlon_json
from custom_components.geometry import rotation_matrix
from custom_components.synthetic.writers import DATALIST_FILE, nifti_affine, save_nifti

__all__ = ["make_synthetic_brain_mri", "write_brain_mri_dataset"]

#: intensity of each tissue in FLAIR, T1, T1ce, T2 (arbitrary units, as MRI has no absolute scale).
TISSUES = {
    "white matter": (350.0, 700.0, 700.0, 300.0),
    "grey matter": (450.0, 500.0, 520.0, 450.0),
    "csf": (100.0, 200.0, 200.0, 900.0),
    "edema": (800.0, 450.0, 470.0, 750.0),
    "necrosis": (500.0, 300.0, 380.0, 800.0),
    "enhancing": (600.0, 500.0, 1000.0, 500.0),
}
NOISE = 0.06  # of each modality's white-matter intensity
TEXTURE = 0.08  # relative amplitude of the smooth texture within tissues
BIAS = 0.25  # maximum relative amplitude of the bias field
#: class index of each tumour part (see custom_components.data.brats.LABEL_CLASSES).
NCR, ED, ET = 1, 2, 3


def make_synthetic_brain_mri(shape: Sequence[int] = (64, 64, 48), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Make one four-modality brain MRI volume with a tumour and its label map; each seed gives another volume.

    Args:
        shape: spatial size ``(H, W, D)``, each at least 16.
        seed: non-negative random seed.

    Returns:
        ``(image, label)``: image ``[H, W, D, 4]`` float32, the modalities of ``MODALITIES`` (FLAIR, T1, T1ce, T2)
        on the last axis, zero outside the brain; label ``[H, W, D]`` uint8 class indices (0 background,
        1 necrotic core, 2 edema, 3 enhancing tumour).
    """
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    tissue = np.full(shape, -1, dtype=np.int8)  # index into TISSUES, -1 outside the brain
    names = list(TISSUES)
    brain = _ellipsoid(grid, rng.uniform(-0.03, 0.03, 3), rng.uniform((0.78, 0.85, 0.75), (0.86, 0.93, 0.85)), 0.1, rng)
    tissue[brain] = names.index("grey matter")
    tissue[_ellipsoid(grid, (0.0, 0.0, 0.0), (0.62, 0.7, 0.58), 0.1, rng)] = names.index("white matter")
    for side in (-1.0, 1.0):
        ventricle = _ellipsoid(grid, (side * 0.12, 0.05, 0.05), (0.07, 0.25, 0.12), 0.2, rng)
        tissue[ventricle] = names.index("csf")

    label = np.zeros(shape, dtype=np.uint8)
    side = rng.choice((-1.0, 1.0))
    centre = np.array([side * rng.uniform(0.25, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)])
    size = rng.uniform(0.18, 0.25)
    parts = (("edema", ED, 1.8), ("enhancing", ET, 1.0), ("necrosis", NCR, 0.6))  # outermost first
    for name, cls, scale in parts:
        part = _ellipsoid(grid, centre + rng.uniform(-0.02, 0.02, 3), size * scale * rng.uniform(0.85, 1.15, 3),
                          0.5, rng) & brain
        tissue[part] = names.index(name)
        label[part] = cls

    table = np.array([TISSUES[n] for n in names], dtype=np.float32)  # [tissues, 4]
    gain = rng.uniform(0.8, 1.25, len(MODALITIES)).astype(np.float32)
    image = np.zeros((*shape, len(MODALITIES)), dtype=np.float32)
    inside = tissue >= 0
    noise = rng.normal(0.0, NOISE, (int(inside.sum()), len(MODALITIES))).astype(np.float32)
    image[inside] = table[tissue[inside]] + noise * table[names.index("white matter")]
    image *= gain * _bias_fields(shape, rng) * (1.0 + TEXTURE * _texture(shape, rng))[..., None]
    return np.clip(image, 1.0, None) * inside[..., None], label


def _bias_fields(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """``[H, W, D, 4]`` smooth multiplicative fields in ``1 +- BIAS``: a 3 x 3 x 3 random grid per modality, cubic
    interpolated to ``shape``."""
    coarse = rng.uniform(-1.0, 1.0, (len(MODALITIES), 3, 3, 3))
    fields = [ndimage.zoom(c, [n / 3 for n in shape], order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
              for c in coarse]
    return 1.0 + BIAS * np.clip(np.stack(fields, axis=-1), -1.0, 1.0).astype(np.float32)


def _texture(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """``[H, W, D]`` smooth noise with unit standard deviation (gaussian-filtered, sigma 1.5 voxels)."""
    texture = ndimage.gaussian_filter(rng.normal(size=tuple(shape)), 1.5)
    return (texture / max(float(texture.std()), 1e-6)).astype(np.float32)


def write_brain_mri_dataset(root: Path, args: dict[str, Any]) -> str:
    """Write the synthetic brain MRI dataset described by the validated ``args`` of
    ``custom_components.synthetic.write_synthetic_dataset`` under ``root`` and return its datalist.

    ``layout "msd"``: ``imagesTr/BRATS_000.nii.gz`` (4D), ``labelsTr/BRATS_000.nii.gz`` (1 edema, 2 non-enhancing
    tumour, 3 enhancing tumour), ``imagesTs/BRATS_<n>.nii.gz``. ``layout "brats2021"``:
    ``training/BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz`` (labels 1 NCR, 2 ED, 4 ET) and
    ``testing/BraTS2021_<n>/`` without the label. ``dataset.json`` assigns folds round-robin.
    """
    layout, num_volumes = args["layout"], args["num_volumes"]
    raw_value = {index: raw for raw, index in BRATS_LAYOUTS[layout].items()}
    to_raw = np.array([raw_value[c] for c in range(len(LABEL_CLASSES))], dtype=np.uint8)
    affine = nifti_affine(args["shape"], args["spacing"])
    # made one at a time as they are written, not all held in memory
    cases = (make_synthetic_brain_mri(args["shape"], args["seed"] + i) for i in range(num_volumes + args["num_test"]))
    if layout == "msd":
        images, labels, testing = [], [], []
        for i, (image, label) in enumerate(cases):
            folder = "imagesTr" if i < num_volumes else "imagesTs"
            path = save_nifti(image, affine, root / folder / f"BRATS_{i:03d}.nii.gz", root)
            if i < num_volumes:
                images.append(path)
                labels.append(save_nifti(to_raw[label], affine, root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", root))
            else:
                testing.append({"image": path})
        return write_decathlon_json(
            root / DATALIST_FILE, name="synthetic_brats_msd", description=f"synthetic brain MRI, {args}",
            labels={str(raw): LABEL_CLASSES[index] for raw, index in BRATS_LAYOUTS["msd"].items()},
            training=training_entries(images, labels, args["num_folds"]), testing=testing or None,
        )  # fmt: skip
    for i, (image, label) in enumerate(cases):
        case = f"BraTS2021_{i:05d}"
        folder = root / ("training" if i < num_volumes else "testing") / case
        for channel, modality in enumerate(MODALITIES):
            save_nifti(image[..., channel], affine, folder / f"{case}_{modality}.nii.gz", root)
        if i < num_volumes:
            save_nifti(to_raw[label], affine, folder / f"{case}_seg.nii.gz", root)
    test_dir = root / "testing" if args["num_test"] else None
    return write_brats2021_datalist(root / "training", root / DATALIST_FILE, args["num_folds"], test_dir=test_dir)


def _ellipsoid(grid, centre: Sequence[float], radii: Sequence[float], max_angle: float,
               rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of an ellipsoid (normalised coordinates), rotated by up to ``max_angle`` radians per axis."""
    offsets = np.stack(np.broadcast_arrays(*(g - c for g, c in zip(grid, centre))), axis=-1)
    offsets = offsets @ rotation_matrix(rng.uniform(-max_angle, max_angle, 3))
    return ((offsets / np.asarray(radii)) ** 2).sum(-1) <= 1.0
