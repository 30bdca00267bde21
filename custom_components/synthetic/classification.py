"""Synthetic chest CT scans in three classes told apart by their lesion pattern, written in the CC-CCII layout.

A scan is a stack of 8-bit lung-window slices (0..255, as CC-CCII's PNGs): air outside an elliptic body of soft
tissue, two dark lungs, a bright spine and a few bright vessel dots in the lungs. The classes differ only inside
the lungs:

- ``Normal``: no lesion;
- ``CP`` (common pneumonia): two or three large, dense consolidations in the central part of the lungs;
- ``NCP`` (novel coronavirus pneumonia): 20-30 smaller, fainter ground-glass blobs towards the lung periphery.

Global intensity is no shortcut: every scan's mean grey value is set to a draw from one range (``MEAN_RANGE``)
whatever its class, its contrast is scaled by 0.9-1.1, and body and lung sizes vary. Patients
have one or two scans, of different slice counts (so the depth rule of the loader is exercised).

Layout under ``out_dir``: ``ccccii/<class>/<patient>/<scan>/<k>.png`` (``k`` = 0, 1, ... unpadded, read in natural
order), ``test/scan_<j>/<k>.png`` (unlabelled), and ``dataset.json`` written by
:func:`~custom_components.data.classification.write_classification_datalist` (folds per patient).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from custom_components.data.classification import (CCCCII_CLASSES, load_classification_datalist,
                                                   write_classification_datalist)
from custom_components.synthetic.writers import DATALIST_FILE, writer_lock

__all__ = ["ensure_synthetic_classification_dataset", "make_synthetic_scan", "write_synthetic_classification_dataset"]

logger = logging.getLogger("custom_components")

AIR, TISSUE, LUNG, BONE, VESSEL = 5.0, 170.0, 40.0, 245.0, 150.0
GROUND_GLASS, CONSOLIDATION = 110.0, 165.0
NOISE = 6.0
MEAN_RANGE = (70.0, 100.0)  # every scan's mean grey value is drawn from this range, whatever its class
MARKER_FILE = "synthetic_classification_args.json"
TREE_DIR, TEST_DIR = "ccccii", "test"


def make_synthetic_scan(shape: Sequence[int] = (64, 64, 24), label: int = 0, seed: int = 0) -> np.ndarray:
    """One synthetic lung-window scan of class ``label`` (index into :data:`CCCCII_CLASSES`).

    Args:
        shape: ``(H, W, D)``: slice rows, columns and the number of slices; H and W at least 32, D at least 4.
        label: 0 (NCP), 1 (CP) or 2 (Normal).
        seed: random seed; the same seed and label give the same scan.

    Returns:
        ``uint8`` array ``[H, W, D]``.

    Raises:
        ValueError: a shape that is too small or a label outside 0..2.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape[:2]) < 32 or shape[2] < 4:
        raise ValueError(f"shape must be (H, W, D) with H, W >= 32 and D >= 4, got {shape}.")
    if label not in range(len(CCCCII_CLASSES)):
        raise ValueError(f"label must be 0..{len(CCCCII_CLASSES) - 1} ({', '.join(CCCCII_CLASSES)}), got {label!r}.")
    rng = np.random.default_rng(seed)
    y, x, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    image = np.full(shape, AIR, np.float32)
    body = rng.uniform(0.85, 1.0)
    image[(y / (0.85 * body)) ** 2 + (x / (0.95 * body)) ** 2 <= 1] = TISSUE
    image[(y - 0.55) ** 2 + x**2 <= 0.12**2] = BONE  # spine, posterior (high rows)
    lungs = []
    for side in (-1, 1):
        centre = np.array([-0.05 + rng.uniform(-0.05, 0.05), side * 0.42, 0.0])
        axes = np.array([rng.uniform(0.5, 0.62), rng.uniform(0.26, 0.34), rng.uniform(0.9, 1.2)])
        radius = ((y - centre[0]) / axes[0]) ** 2 + ((x - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2
        image[radius <= 1] = LUNG
        lungs.append((centre, axes, radius))
    for _ in range(rng.integers(4, 9)):  # vessels: thin bright tubes along the slices, in any class
        centre, axes, _ = lungs[rng.integers(2)]
        offset = rng.uniform(-0.6, 0.6, 2) * axes[:2]
        tube = ((y - centre[0] - offset[0]) ** 2 + (x - centre[1] - offset[1]) ** 2) <= 0.025**2
        image[tube & (lungs[0][2] <= 1) | tube & (lungs[1][2] <= 1)] = VESSEL
    if label == 0:
        for _ in range(rng.integers(20, 31)):
            _paint_blob(image, (y, x, z), lungs[rng.integers(2)], rng, (0.55, 0.9), (0.12, 0.18), GROUND_GLASS)
    elif label == 1:
        for _ in range(rng.integers(2, 4)):
            _paint_blob(image, (y, x, z), lungs[rng.integers(2)], rng, (0.0, 0.3), (0.3, 0.38), CONSOLIDATION)
    image = (image - image.mean()) * rng.uniform(0.9, 1.1) + rng.uniform(*MEAN_RANGE)  # the mean says nothing
    image += rng.normal(0.0, NOISE, shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _paint_blob(image: np.ndarray, grid, lung, rng, distance: tuple[float, float], size: tuple[float, float],
                value: float) -> None:
    """A soft-edged ellipsoid of ``value`` inside ``lung``, its centre at a normalised ``distance`` range from the
    lung's centre, its in-plane radius ``size`` (normalised units) and a depth of a few slices."""
    (centre, axes, radius), (y, x, z) = lung, grid
    angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(*distance)
    at = centre + np.array([np.sin(angle) * axes[0], np.cos(angle) * axes[1], rng.uniform(-0.5, 0.5)]) * reach
    r = rng.uniform(*size)
    blob = ((y - at[0]) / r) ** 2 + ((x - at[1]) / r) ** 2 + ((z - at[2]) / (2.5 * r)) ** 2
    weight = np.clip(1.5 - blob, 0.0, 1.0) * (radius <= 1)
    image += weight * (value - image)


def write_synthetic_classification_dataset(
    out_dir: str | os.PathLike,
    num_patients: int = 30,
    shape: Sequence[int] = (64, 64, 24),
    num_folds: int = 5,
    num_test: int = 3,
    seed: int = 0,
) -> str:
    """Write a synthetic CC-CCII-style dataset (see the module docstring) and its datalist.

    Patient ``i`` has class ``i % 3`` and two scans when ``(i // 3)`` is odd, else one; each scan has
    ``D - 4 + (a draw in 0..8)`` slices of ``H x W``. Scans are written as PNG slices; the ``ccccii/`` and ``test/``
    folders of an earlier dataset in ``out_dir`` are replaced.

    Args:
        out_dir: output folder (created).
        num_patients: patients, at least 3 (one per class) and at least ``num_folds``.
        shape: ``(H, W, D)`` of a scan before its slice count is varied.
        num_folds: folds, assigned per patient.
        num_test: unlabelled test scans under ``test/``.
        seed: base seed.

    Returns:
        the path of ``dataset.json``.
    """
    if num_patients < max(3, num_folds):
        raise ValueError(f"num_patients must be at least 3 and at least num_folds ({num_folds}), got {num_patients}.")
    root = Path(out_dir).expanduser().absolute()
    for folder in (TREE_DIR, TEST_DIR):
        shutil.rmtree(root / folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    scan_id = 0
    for patient in range(num_patients):
        label = patient % len(CCCCII_CLASSES)
        for _ in range(2 if (patient // 3) % 2 else 1):
            depth = shape[2] - 4 + int(rng.integers(0, 9))
            scan = make_synthetic_scan((shape[0], shape[1], depth), label, seed=seed * 10007 + scan_id)
            _save_slices(scan, root / TREE_DIR / CCCCII_CLASSES[label] / f"{patient + 1000}" / f"{scan_id + 5000}")
            scan_id += 1
    for index in range(num_test):
        scan = make_synthetic_scan(shape, index % len(CCCCII_CLASSES), seed=seed * 10007 + scan_id + index)
        _save_slices(scan, root / TEST_DIR / f"scan_{index}")
    datalist = write_classification_datalist(root / TREE_DIR, root / DATALIST_FILE, CCCCII_CLASSES, num_folds, seed,
                                             test_dir=root / TEST_DIR if num_test else None)
    logger.info(f"wrote {scan_id} synthetic scans of {num_patients} patients and {num_test} test scans to {root}")
    return datalist


def ensure_synthetic_classification_dataset(out_dir: str | os.PathLike, **kwargs: Any) -> str:
    """The datalist of the synthetic dataset in ``out_dir``, written only when missing, made with other arguments
    (recorded in ``out_dir/{MARKER_FILE}``) or incomplete; ``kwargs`` are those of
    :func:`write_synthetic_classification_dataset`. For configs:
    ``"$custom_components.synthetic.ensure_synthetic_classification_dataset(@dataset_dir, num_patients=30)"``."""
    root = Path(out_dir).expanduser().absolute()
    marker, datalist = root / MARKER_FILE, root / DATALIST_FILE
    with writer_lock(root):
        try:
            if json.loads(marker.read_text()) == kwargs:
                load_classification_datalist(datalist, "training", CCCCII_CLASSES)
                logger.info(f"reusing the synthetic classification dataset in {root}")
                return str(datalist)
        except (OSError, ValueError):
            pass
        marker.unlink(missing_ok=True)
        written = write_synthetic_classification_dataset(root, **kwargs)
        marker.write_text(json.dumps(kwargs, indent=2) + "\n")
    return written


def _save_slices(scan: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(scan.shape[2]):
        Image.fromarray(scan[:, :, k]).save(folder / f"{k}.png")
