"""Synthetic CT-like volumes and NIfTI datasets, used by the quickstart and the tests instead of downloads.

A volume is an elliptic body (fat rim, soft tissue) in air, two lungs near the top, a spine and ribs, and
``num_classes - 1`` organ-like ellipsoids laid out on a jittered grid in the abdomen, each with its own mean HU
in 20..150 (like BTCV's 13 abdominal organs) and a thin fat plane around it, plus mild gaussian noise. Organ ``k``
keeps its HU and its grid cell in every volume, so a small UNETR learns the task in a few epochs.

``varied=True`` makes volumes that differ the way a pre-training collection of scans does (the same seed still
gives the same volume): body size, shape and position; a field of view with or without the lungs; which organs
are present and how large; the contrast phase (organ HU scaled and shifted, some organs enhanced), the fat HU and
the noise level. Near-identical volumes give a self-distillation objective nothing to tell apart.
:func:`synthetic_ct_profile` returns what ``varied`` drew for a seed (the targets of the volume-level probe in
:mod:`custom_components.probes`).

``shuffle_layout=True`` is a probe-data choice: organ ``k`` still has its own HU, but the grid cell it sits in is
drawn per volume (a permutation of the cells, from its own seeded stream), so which organ a place holds depends on
appearance (HU, size, context) rather than on position, and a probe that knows only where a token is scores near
chance. The default keeps every existing dataset byte-identical.

``organ_texture=True`` gives every organ an inner structure of its kind, as real organs have one that the contrast
phase does not erase: organ ``k`` is, in turn, homogeneous (spleen-like), crossed by bright vessels (liver-like),
a bright cortex around a darker medulla (kidney-like), a fluid lumen at 0-20 HU that does not enhance inside an
enhancing wall (gallbladder- or bladder-like), holding gas pockets (bowel-like), or lobulated by fat clefts
(pancreas-like); ``ORGAN_STRUCTURES`` lists them. With the contrast phase of ``varied`` an organ's HU alone no
longer tells which organ it is (organ 1 spans -22..96 HU across phases, organ 6 30..330); its structure does, as
in real scans. The structures come from their own seeded stream, so the flag changes nothing else in a volume.

Each fine-tuning task's layout is a few arguments (``SYNTHETIC_TASKS`` lists them per bundle): the class count,
the raw values the labels hold on disk (``label_values``, e.g. MM-WHS's 205, 420, ... 850), the voxel spacing
(anisotropic for COVID-19-20), and ``lesions=True`` for small lesion-like structures: 2-5 blobs of ground-glass HU
(-700..-250) inside the lungs, labelled 1, with the abdominal organs left unlabelled as context. The BraTS bundle's
layout (``brain_mri=True``) is four-modality brain MRI instead, written by :mod:`custom_components.synthetic.mri`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom_components.data.brats import BRATS_LAYOUTS
from custom_components.data.datalist import load_datalist, training_entries, write_decathlon_json
from custom_components.geometry import rotation_matrix
from custom_components.synthetic.mri import write_brain_mri_dataset
from custom_components.synthetic.writers import DATALIST_FILE, nifti_affine, save_nifti, writer_lock

__all__ = [
    "BTCV_ORGANS", "ORGAN_STRUCTURES", "SYNTHETIC_TASKS", "ensure_synthetic_dataset", "make_synthetic_ct",
    "synthetic_ct_profile", "write_synthetic_dataset",
]

logger = logging.getLogger("custom_components")

BTCV_ORGANS = (
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
)  # fmt: skip
AIR_HU, FAT_HU, SOFT_TISSUE_HU, LUNG_HU, BONE_HU = -1000.0, -100.0, 40.0, -800.0, 700.0
ORGAN_HU_RANGE = (20.0, 150.0)
NOISE_HU = 10.0
MIN_SIZE = 16
LESION_HU_RANGE = (-700.0, -250.0)
LESION_CONTEXT_ORGANS = 6  # unlabelled abdominal organs in a lesion volume
LAYOUT_STREAM = 1  # second seed word of the shuffle_layout generator, apart from the volume's own stream
TEXTURE_STREAM = 2  # second seed word of the organ_texture generator
ORGAN_STRUCTURES = ("homogeneous", "vessels", "cortex", "fluid", "gas", "lobulated")  # organ k: (k - 1) % 6
FLUID_HU = (0.0, 20.0)
MARKER_FILE = "synthetic_dataset_args.json"


#: The synthetic layout of each fine-tuning bundle: arguments of :func:`write_synthetic_dataset`.
SYNTHETIC_TASKS: dict[str, dict[str, Any]] = {
    "glmae_btcv_segmentation": {"num_classes": 14, "spacing": (1.5, 1.5, 2.0)},
    "glmae_mmwhs_segmentation": {"num_classes": 8, "spacing": (1.5, 1.5, 2.0),
                                 "label_values": (0, 205, 420, 500, 550, 600, 820, 850)},
    "glmae_spleen_segmentation": {"num_classes": 2, "spacing": (1.5, 1.5, 2.0)},
    "glmae_amos_segmentation": {"num_classes": 16, "spacing": (1.5, 1.5, 2.0)},
    "glmae_word_segmentation": {"num_classes": 17, "spacing": (1.5, 1.5, 2.0)},
    "glmae_covid19_20_segmentation": {"num_classes": 2, "spacing": (1.25, 1.25, 5.0), "lesions": True},
    "glmae_brats_segmentation": {"num_classes": 4, "spacing": (1.0, 1.0, 1.0), "brain_mri": True},
}  # fmt: skip


def make_synthetic_ct(
    shape: Sequence[int] = (96, 96, 64), num_classes: int = 14, seed: int = 0, varied: bool = False,
    lesions: bool = False, *, shuffle_layout: bool = False, organ_texture: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one CT-like volume and its organ label map; each seed gives a different, deterministic volume.

    Array axes are (x: right-left, y: posterior-anterior, z: inferior-superior); the lungs are at high z.

    Args:
        shape: spatial size ``(H, W, D)``, each at least 16.
        num_classes: number of label classes including background, 2..256; organs are ``1..num_classes-1``.
        seed: non-negative random seed.
        varied: draw the body layout, organ set and intensity profile per volume (pre-training data) instead of
            keeping them nearly fixed (fine-tuning data).
        lesions: label 2-5 small lesions inside the lungs as class 1 (``num_classes`` must be 2) instead of organs.
        shuffle_layout: put the organs in a per-volume permutation of the grid cells (probe data, see the module
            docstring); the rest of the volume is the one this seed gives without it.
        organ_texture: give each organ the inner structure of its kind (see the module docstring); the rest of
            the volume is the one this seed gives without it.

    Returns:
        ``(image, label)``: image ``[H, W, D]`` int16 in Hounsfield units (-1000 air .. ~+730 bone) and label
        ``[H, W, D]`` uint8 with values in ``0..num_classes-1`` (0 background, ``k`` organ ``k``, or 1 lesion).

    Example::

        image, label = make_synthetic_ct((96, 96, 64), num_classes=14, seed=3)
    """
    shape = _validate_shape(shape)
    _validate_num_classes(num_classes)
    _validate_seed(seed)
    if lesions and num_classes != 2:
        raise ValueError(f"lesions=True labels one class (lesion), so num_classes must be 2, got {num_classes}.")
    num_organs = LESION_CONTEXT_ORGANS if lesions else num_classes - 1
    rng = np.random.default_rng(seed)
    profile = _VariedProfile.draw(rng, num_organs) if varied else _VariedProfile.fixed(num_organs)
    if lesions and not profile.lungs:
        profile = dataclasses.replace(profile, lungs=True)
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    image = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    centre = rng.uniform(-0.04, 0.04, 2) + profile.body_shift
    semi_axes = rng.uniform((0.80, 0.62), (0.90, 0.72)) * profile.body_scale
    radius = np.sqrt(((x - centre[0]) / semi_axes[0]) ** 2 + ((y - centre[1]) / semi_axes[1]) ** 2)
    body = np.broadcast_to(radius <= 1.0, shape)
    image[body] = profile.fat_hu
    image[np.broadcast_to(radius <= profile.fat_rim, shape)] = SOFT_TISSUE_HU
    lungs = _paint_lungs(image, (x, y, z), centre, semi_axes, rng, profile.z_shift) if profile.lungs else []
    num_cells = _num_cells(num_organs)
    layout_rng = np.random.default_rng((seed, LAYOUT_STREAM))
    cell_of = layout_rng.permutation(num_cells) if shuffle_layout else range(num_cells)
    layout = _organ_layout(num_organs, centre, semi_axes, rng, cell_of)
    texture_rng = np.random.default_rng((seed, TEXTURE_STREAM)) if organ_texture else None
    for k, (organ_centre, radii, rotation) in enumerate(layout, 1):
        organ_hu = np.interp(k, (1, max(num_organs, 2)), ORGAN_HU_RANGE) + rng.uniform(-3.0, 3.0)
        if not profile.present[k - 1]:
            continue
        organ_centre = organ_centre + (0.0, 0.0, profile.z_shift)
        radii = radii * profile.organ_scale[k - 1]
        _paint_ellipsoid(image, label, axes, organ_centre, radii * 1.25, rotation, profile.fat_hu, 0)
        organ_hu = organ_hu * profile.hu_scale + profile.hu_shift + profile.enhancement[k - 1]
        _paint_ellipsoid(image, label, axes, organ_centre, radii, rotation, organ_hu, 0 if lesions else k)
        if texture_rng is not None:
            structure = ORGAN_STRUCTURES[(k - 1) % len(ORGAN_STRUCTURES)]
            _paint_structure(image, axes, organ_centre, radii, rotation, structure, organ_hu, profile.fat_hu,
                             texture_rng)
    if lesions:
        _paint_lesions(image, label, axes, lungs, rng)
    _paint_bones(image, label, (x, y, z), radius, centre, semi_axes, ribs=profile.lungs)
    image[~body] = AIR_HU  # keep everything inside the body outline
    label[~body] = 0
    image += rng.normal(0.0, profile.noise_hu, shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label


def synthetic_ct_profile(seed: int, num_classes: int = 14) -> dict[str, Any]:
    """What ``make_synthetic_ct(..., num_classes, seed, varied=True)`` draws for its volume (organ layouts).

    Read from the volume's own random stream, so it is exactly the volume's profile; ``lesions`` volumes always show
    the lungs whatever ``lungs`` says.

    Returns:
        ``body_scale [2]``, ``body_shift [2]``, ``fat_rim``, ``fat_hu``, ``lungs`` (thorax in the field of view),
        ``z_shift``, ``present [num_classes - 1]`` (which organs are painted), ``organ_scale [num_classes - 1]``,
        ``hu_scale`` and ``hu_shift`` (the contrast phase), ``enhancement [num_classes - 1]`` (HU added to enhanced
        organs) and ``noise_hu``; arrays are numpy arrays.
    """
    _validate_num_classes(num_classes)
    _validate_seed(seed)
    return dataclasses.asdict(_VariedProfile.draw(np.random.default_rng(seed), num_classes - 1))


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_volumes: int = 8,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    num_classes: int = 14,
    labelled: bool = True,
    num_folds: int = 5,
    num_test: int = 2,
    seed: int = 0,
    varied: bool = False,
    label_values: Sequence[int] | None = None,
    lesions: bool = False,
    brain_mri: bool = False,
    layout: str = "msd",
    organ_texture: bool = False,
    shuffle_layout: bool = False,
) -> str:
    """Write a synthetic CT dataset as NIfTI files plus a MONAI decathlon-style ``dataset.json``.

    With ``brain_mri`` the dataset is four-modality brain MRI with tumours instead, in the MSD Task01 or the
    BraTS 2021 ``layout`` (see :mod:`custom_components.synthetic.mri`; ``num_classes`` must be 4).

    Layout under ``out_dir``: ``imagesTr/case_0000.nii.gz`` (int16 HU), ``labelsTr/case_0000.nii.gz`` (uint8,
    when ``labelled``), ``imagesTs/test_0000.nii.gz`` (``num_test`` unlabelled images) and ``dataset.json`` with
    relative paths and folds assigned round-robin. Training case ``i`` uses seed ``seed + i``, test image ``j``
    seed ``seed + num_volumes + j``. The affine carries ``spacing`` and centres the volume at the origin.

    Args:
        out_dir: output folder (created).
        num_volumes: number of training volumes, at least 1.
        shape: spatial size ``(H, W, D)`` of every volume, each at least 16.
        spacing: voxel size in mm along the three axes, each positive.
        num_classes: number of label classes including background; 14 names the labels after BTCV's organs.
        labelled: write labels and ``"label"`` entries; False writes images only (pre-training data).
        num_folds: number of cross-validation folds, 1..num_volumes.
        num_test: number of extra unlabelled test images, at least 0.
        seed: non-negative base seed.
        varied: volumes that differ in body layout, organ set and intensity profile (see the module docstring);
            use it for pre-training data.
        label_values: the value written on disk for each class ``0..num_classes-1`` (distinct non-negative ints,
            e.g. MM-WHS's ``(0, 205, 420, 500, 550, 600, 820, 850)``); None writes the class indices. Labels are
            uint8 up to 255 and uint16 beyond.
        lesions: small lung lesions as class 1 instead of organs (``num_classes`` 2), see the module docstring.
        brain_mri: brain MRI with tumours instead of CT (``num_classes`` 4, labelled, no ``label_values``).
        layout: with ``brain_mri``, ``"msd"`` (one 4D file per case) or ``"brats2021"`` (a folder per case).
        organ_texture: organs with the inner structure of their kind (see the module docstring).
        shuffle_layout: with ``varied``, each volume's organs in a permutation of the organ grid, so where an organ
            lies does not say which it is (the frozen-encoder probes' data, see ``make_synthetic_ct``).

    Returns:
        the path of ``dataset.json``.
    """
    args = _validated_args(num_volumes, shape, spacing, num_classes, labelled, num_folds, num_test, seed, varied,
                           label_values, lesions, brain_mri, layout, organ_texture, shuffle_layout)
    root = Path(out_dir).expanduser().absolute()
    if brain_mri:
        datalist = write_brain_mri_dataset(root, args)
        logger.info(f"wrote {num_volumes} synthetic brain MRI cases and {num_test} test cases ({layout} layout) to "
                    f"{root}; datalist {datalist}")
        return datalist
    values = None if label_values is None else np.asarray(args["label_values"])
    label_dtype = np.uint8 if values is None or values.max() <= 255 else np.uint16
    affine = nifti_affine(args["shape"], args["spacing"])
    images, labels = [], []
    for index in range(num_volumes):
        image, label = make_synthetic_ct(args["shape"], num_classes, seed + index, varied, lesions,
                                         shuffle_layout=shuffle_layout, organ_texture=organ_texture)
        images.append(save_nifti(image, affine, root / "imagesTr" / f"case_{index:04d}.nii.gz", root))
        if labelled:
            label = (label if values is None else values[label]).astype(label_dtype)
            labels.append(save_nifti(label, affine, root / "labelsTr" / f"case_{index:04d}.nii.gz", root))
    testing = []
    for index in range(num_test):
        image, _ = make_synthetic_ct(args["shape"], num_classes, seed + num_volumes + index, varied, lesions,
                                     shuffle_layout=shuffle_layout, organ_texture=organ_texture)
        testing.append({"image": save_nifti(image, affine, root / "imagesTs" / f"test_{index:04d}.nii.gz", root)})
    if lesions:
        names = ["lesion"]
    else:
        names = BTCV_ORGANS if num_classes == len(BTCV_ORGANS) + 1 else [f"organ_{k}" for k in range(1, num_classes)]
    stored = range(num_classes) if values is None else values.tolist()
    datalist = write_decathlon_json(
        root / DATALIST_FILE,
        name="synthetic_ct",
        description=f"synthetic CT-like volumes made by custom_components.synthetic.make_synthetic_ct, {args}",
        labels={str(v): name for v, name in zip(stored, ["background", *names])},
        training=training_entries(images, labels if labelled else None, num_folds),
        testing=testing,
    )
    logger.info(
        f"wrote {num_volumes} {'labelled' if labelled else 'unlabelled'} training volumes and {num_test} test "
        f"volumes of shape {args['shape']} to {root}; datalist {datalist}"
    )
    return datalist


def ensure_synthetic_dataset(out_dir: str | os.PathLike, **kwargs: Any) -> str:
    """Return the datalist of the synthetic dataset in ``out_dir``, writing it only when needed.

    The arguments of the last :func:`write_synthetic_dataset` call are stored in ``out_dir/{MARKER_FILE}``;
    the dataset is (re)written when that marker is missing, holds other arguments, or a listed file is gone.
    This makes it cheap to call at the start of every bundle run, e.g.
    ``"$custom_components.synthetic.ensure_synthetic_dataset(@dataset_dir, num_volumes=8)"``.

    Args:
        out_dir: dataset folder.
        kwargs: the keyword arguments of :func:`write_synthetic_dataset` (defaults apply to the others).

    Returns:
        the path of ``dataset.json``.
    """
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; expected some of {sorted(_DEFAULTS)}.")
    call = {**_DEFAULTS, **kwargs}
    args = _validated_args(**call)
    root = Path(out_dir).expanduser().absolute()
    marker, datalist = root / MARKER_FILE, root / DATALIST_FILE
    with writer_lock(root):
        if _is_complete(marker, datalist, args):
            logger.info(f"reusing the synthetic dataset in {root} (same arguments {args})")
            return str(datalist)
        marker.unlink(missing_ok=True)
        written = write_synthetic_dataset(root, **call)
        marker.write_text(json.dumps(args, indent=2) + "\n")
    return written


def _is_complete(marker: Path, datalist: Path, args: dict[str, Any]) -> bool:
    """Whether ``marker`` records ``args`` and every file listed by ``datalist`` exists."""
    if not marker.is_file() or not datalist.is_file():
        return False
    try:
        if json.loads(marker.read_text()) != args:
            return False
        load_datalist(datalist, "training", keys=("image", "label") if args["labelled"] else ("image",))
        if args["num_test"]:
            load_datalist(datalist, "testing")
    except (ValueError, FileNotFoundError):
        return False
    return True


@dataclass(frozen=True)
class _VariedProfile:
    """What differs between the volumes of a ``varied`` dataset; :meth:`fixed` is the fine-tuning layout."""

    body_scale: np.ndarray  # [2] factors on the body's semi-axes
    body_shift: np.ndarray  # [2] body centre offset (normalised units)
    fat_rim: float  # soft tissue inside this fraction of the body radius, fat outside
    fat_hu: float
    lungs: bool  # thorax in the field of view (lungs and ribs)
    z_shift: float  # the field of view slides along z: organs and lungs move together
    present: np.ndarray  # [num_organs] bool
    organ_scale: np.ndarray  # [num_organs] factors on each organ's radii
    hu_scale: float  # contrast phase: organ HU scaled and shifted...
    hu_shift: float
    enhancement: np.ndarray  # [num_organs] ...and a few organs enhanced strongly
    noise_hu: float

    @classmethod
    def fixed(cls, num_organs: int) -> _VariedProfile:
        ones = np.ones(num_organs)
        return cls(np.ones(2), np.zeros(2), 0.9, FAT_HU, True, 0.0, ones.astype(bool), ones, 1.0, 0.0,
                   np.zeros(num_organs), NOISE_HU)

    @classmethod
    def draw(cls, rng: np.random.Generator, num_organs: int) -> _VariedProfile:
        enhanced = rng.random(num_organs) < 0.25
        return cls(
            body_scale=rng.uniform((0.65, 0.6), (1.05, 1.1)), body_shift=rng.uniform(-0.08, 0.08, 2),
            fat_rim=float(rng.uniform(0.75, 0.95)), fat_hu=float(rng.uniform(-130.0, -70.0)),
            lungs=bool(rng.random() < 0.6), z_shift=float(rng.uniform(-0.25, 0.25)),
            present=rng.random(num_organs) < 0.7, organ_scale=rng.uniform(0.6, 1.4, num_organs),
            hu_scale=float(rng.uniform(0.4, 1.8)), hu_shift=float(rng.uniform(-30.0, 60.0)),
            enhancement=np.where(enhanced, rng.uniform(80.0, 250.0, num_organs), 0.0),
            noise_hu=float(rng.uniform(5.0, 30.0)),
        )


def _paint_lungs(image: np.ndarray, grid, centre: np.ndarray, semi_axes: np.ndarray, rng,
                 z_shift: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two lung ellipsoids at the top of the volume (high z, moved by ``z_shift``), on both sides of the midline;
    returns their ``(centre [3], radii [3])`` in normalised coordinates."""
    x, y, z = grid
    lung_hu = LUNG_HU + rng.uniform(-30.0, 30.0)
    lungs = []
    for side in (-1.0, 1.0):
        cx = centre[0] + side * (0.45 + rng.uniform(-0.03, 0.03)) * semi_axes[0]
        cy, cz = centre[1] + 0.05 * semi_axes[1], 0.72 + z_shift + rng.uniform(-0.04, 0.04)
        radii = np.array([0.33 * semi_axes[0], 0.55 * semi_axes[1], 0.35])
        inside = ((x - cx) / radii[0]) ** 2 + ((y - cy) / radii[1]) ** 2
        image[np.broadcast_to(inside + ((z - cz) / radii[2]) ** 2 <= 1.0, image.shape)] = lung_hu
        lungs.append((np.array([cx, cy, cz]), radii))
    return lungs


def _paint_lesions(image: np.ndarray, label: np.ndarray, axes, lungs, rng) -> None:
    """2-5 small ground-glass blobs (label 1) at random places well inside the lungs."""
    for _ in range(int(rng.integers(2, 6))):
        lung_centre, lung_radii = lungs[int(rng.integers(len(lungs)))]
        direction = rng.normal(size=3)
        offset = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.55) * lung_radii
        radii = rng.uniform(0.07, 0.14, 3) * np.array([1.0, 1.0, 1.6])
        hu = rng.uniform(*LESION_HU_RANGE)
        rotation = rotation_matrix(rng.uniform(-0.6, 0.6, 3))
        _paint_ellipsoid(image, label, axes, lung_centre + offset, radii, rotation, hu, 1)


def _paint_bones(image: np.ndarray, label: np.ndarray, grid, radius: np.ndarray, centre, semi_axes,
                 ribs: bool = True) -> None:
    """A posterior spine along z and (with ``ribs``) rib bands around the thorax; bone is background in the label."""
    x, y, z = grid
    bone = ((x - centre[0]) / 0.09) ** 2 + ((y - (centre[1] - 0.72 * semi_axes[1])) / 0.09) ** 2 <= 1.0
    if ribs:
        bone = bone | ((radius >= 0.8) & (radius <= 0.86) & (z > 0.35) & (np.sin(z * 40.0) > 0.3))
    bone = np.broadcast_to(bone, image.shape)
    image[bone] = BONE_HU
    label[bone] = 0


def _num_cells(num_organs: int) -> int:
    """Cells of the 3 x 2 x n abdomen grid that holds ``num_organs`` organs."""
    return 6 * math.ceil(num_organs / 6)


def _organ_layout(num_organs: int, centre: np.ndarray, semi_axes: np.ndarray, rng, cell_of: Sequence[int]):
    """Yield ``(centre [3], radii [3], rotation [3, 3])`` per organ, organ ``k`` in cell ``cell_of[k]`` of a
    3 x 2 x n abdomen grid (cells numbered x fastest, then y, then z)."""
    lower = np.array([centre[0] - 0.62 * semi_axes[0], centre[1] - 0.5 * semi_axes[1], -0.9])
    upper = np.array([centre[0] + 0.62 * semi_axes[0], centre[1] + 0.62 * semi_axes[1], 0.38])
    cells = np.array([3, 2, _num_cells(num_organs) // 6])
    cell = (upper - lower) / cells
    for c in cell_of[:num_organs]:
        index = np.array([c % 3, (c // 3) % 2, c // 6])
        organ_centre = lower + (index + 0.5 + rng.uniform(-0.12, 0.12, 3)) * cell
        yield organ_centre, rng.uniform(0.38, 0.48, 3) * cell, rotation_matrix(rng.uniform(-0.4, 0.4, 3))


def _ellipsoid_frame(axes, centre, radii, rotation) -> tuple[tuple[slice, ...], np.ndarray]:
    """The bounding box (slices into the volume) of a rotated ellipsoid and its voxels' coordinates ``[..., 3]`` in
    the ellipsoid's own frame, scaled so that the ellipsoid is the unit ball."""
    reach = radii.max()
    box = tuple(
        slice(np.searchsorted(a, c - reach), np.searchsorted(a, c + reach, side="right"))
        for a, c in zip(axes, centre)
    )
    local = np.meshgrid(*(a[s] - c for a, s, c in zip(axes, box, centre)), indexing="ij")
    return box, (np.stack(local, axis=-1) @ rotation) / radii


def _paint_ellipsoid(image, label, axes, centre, radii, rotation, hu: float, value: int) -> None:
    """Set ``image`` to ``hu`` and ``label`` to ``value`` inside a rotated ellipsoid (normalised coordinates)."""
    box, unit = _ellipsoid_frame(axes, centre, radii, rotation)
    inside = (unit**2).sum(-1) <= 1.0
    image[box][inside] = hu
    label[box][inside] = value


def _paint_structure(image, axes, centre, radii, rotation, structure: str, hu: float, fat_hu: float,
                     rng: np.random.Generator) -> None:
    """Paint ``structure`` (one of ``ORGAN_STRUCTURES``) inside an organ ellipsoid already painted at ``hu``; the
    label stays the organ's (a segmentation holds the lumen, the gas and the clefts of its organ)."""
    box, unit = _ellipsoid_frame(axes, centre, radii, rotation)
    radius = np.sqrt((unit**2).sum(-1))
    inside, region = radius <= 1.0, image[box]
    if structure == "vessels":  # 5-8 bright tubes through the organ (enhancing vessels)
        vessel = np.zeros(radius.shape, dtype=bool)
        for _ in range(rng.integers(5, 9)):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = unit - rng.uniform(-0.5, 0.5, 3)
            along = offset @ direction
            vessel |= np.sqrt(np.maximum((offset**2).sum(-1) - along**2, 0.0)) <= rng.uniform(0.1, 0.16)
        region[inside & vessel] = hu + rng.uniform(120.0, 200.0)
    elif structure == "cortex":  # bright cortex around a darker medulla
        core = rng.uniform(0.5, 0.65)
        region[inside & (radius > core)] = hu + rng.uniform(80.0, 140.0)
        region[inside & (radius <= core)] = hu - rng.uniform(40.0, 80.0)
    elif structure == "fluid":  # a lumen of fluid inside an enhancing wall; fluid does not follow the phase
        region[radius <= rng.uniform(0.7, 0.8)] = rng.uniform(*FLUID_HU)
    elif structure == "gas":  # 5-8 gas pockets
        for _ in range(rng.integers(5, 9)):
            pocket = rng.uniform(-0.55, 0.55, 3)
            region[inside & (np.sqrt(((unit - pocket) ** 2).sum(-1)) <= rng.uniform(0.15, 0.3))] = rng.uniform(
                -950.0, -700.0)
    elif structure == "lobulated":  # fat clefts between lobules
        frequency, phase = rng.uniform(2.5, 4.0, 3) * np.pi, rng.uniform(0.0, 2.0 * np.pi, 3)
        lobes = np.prod(np.sin(unit * frequency + phase), axis=-1)
        region[inside & (np.abs(lobes) < 0.15)] = fat_hu
    elif structure != "homogeneous":
        raise ValueError(f"structure must be one of {ORGAN_STRUCTURES}, got {structure!r}.")


_DEFAULTS = {
    "num_volumes": 8, "shape": (96, 96, 64), "spacing": (1.5, 1.5, 2.0), "num_classes": 14, "labelled": True,
    "num_folds": 5, "num_test": 2, "seed": 0, "varied": False, "label_values": None, "lesions": False,
    "brain_mri": False, "layout": "msd", "organ_texture": False, "shuffle_layout": False,
}  # fmt: skip


def _validated_args(num_volumes, shape, spacing, num_classes, labelled, num_folds, num_test, seed,
                    varied=False, label_values=None, lesions=False, brain_mri=False, layout="msd",
                    organ_texture=False, shuffle_layout=False) -> dict[str, Any]:
    """Validate the dataset arguments and return them JSON-ready (lists for sequences)."""
    if isinstance(num_volumes, bool) or not isinstance(num_volumes, int) or num_volumes < 1:
        raise ValueError(f"num_volumes must be a positive int, got {num_volumes!r}.")
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or not 1 <= num_folds <= num_volumes:
        raise ValueError(f"num_folds must be an int in 1..num_volumes={num_volumes}, got {num_folds!r}.")
    if isinstance(num_test, bool) or not isinstance(num_test, int) or num_test < 0:
        raise ValueError(f"num_test must be a non-negative int, got {num_test!r}.")
    flags = ("labelled", labelled), ("varied", varied), ("lesions", lesions), ("brain_mri", brain_mri), (
        "organ_texture", organ_texture), ("shuffle_layout", shuffle_layout)
    for name, flag in flags:
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}.")
    spacing = tuple(float(s) for s in spacing) if isinstance(spacing, Sequence) else ()
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}.")
    _validate_num_classes(num_classes)
    _validate_seed(seed)
    if lesions and num_classes != 2:
        raise ValueError(f"lesions=True labels one class (lesion), so num_classes must be 2, got {num_classes}.")
    if brain_mri:
        _check_brain_mri_args(num_classes, labelled, varied, lesions, label_values, layout)
        if organ_texture or shuffle_layout:
            raise ValueError("organ_texture and shuffle_layout change CT organs; brain_mri=True writes brain MRI, "
                             "which has none.")
    if label_values is not None:
        values = list(label_values) if isinstance(label_values, (Sequence, np.ndarray)) else []
        valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 65535 for v in values)
        if len(values) != num_classes or not valid or len(set(values)) != len(values):
            raise ValueError(f"label_values must be {num_classes} distinct ints in 0..65535 (one per class), "
                             f"got {label_values!r}.")
        label_values = [int(v) for v in values]
    return {
        "num_volumes": num_volumes, "shape": list(_validate_shape(shape)), "spacing": list(spacing),
        "num_classes": num_classes, "labelled": labelled, "num_folds": num_folds, "num_test": num_test, "seed": seed,
        **({"varied": True} if varied else {}), **({"label_values": label_values} if label_values else {}),
        **({"lesions": True} if lesions else {}), **({"brain_mri": True, "layout": layout} if brain_mri else {}),
        **({"organ_texture": True} if organ_texture else {}), **({"shuffle_layout": True} if shuffle_layout else {}),
    }  # fmt: skip


def _check_brain_mri_args(num_classes, labelled, varied, lesions, label_values, layout) -> None:
    """Check the arguments that a brain MRI dataset fixes (4 label classes, labelled, one of the layouts)."""
    if layout not in BRATS_LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(BRATS_LAYOUTS)}, got {layout!r}.")
    if num_classes != 4 or not labelled or varied or lesions or label_values is not None:
        raise ValueError("brain_mri=True writes labelled tumours with 4 classes (background, necrotic core, edema, "
                         "enhancing) in the layout's own label values: it needs num_classes=4, labelled=True and no "
                         f"varied, lesions or label_values; got num_classes={num_classes}, labelled={labelled}, "
                         f"varied={varied}, lesions={lesions}, label_values={label_values}.")


def _validate_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape) if isinstance(shape, (Sequence, np.ndarray)) else ()
    if len(values) != 3 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in values):
        raise ValueError(f"shape must be three ints, each at least {MIN_SIZE}, got {shape!r}.")
    if min(values) < MIN_SIZE:
        raise ValueError(f"shape must be three ints, each at least {MIN_SIZE}, got {shape!r}.")
    return tuple(int(n) for n in values)


def _validate_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= 256:
        raise ValueError(f"num_classes must be an int in 2..256 (background included), got {num_classes!r}.")


def _validate_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
