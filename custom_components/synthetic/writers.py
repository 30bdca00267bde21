"""What every synthetic dataset writer shares: the datalist's file name, the folder lock, NIfTI files in mm.

The CT, brain MRI and CC-CCII generators each build on these, so they live apart from all three and none of the
generators imports another for them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from filelock import FileLock

__all__ = ["DATALIST_FILE", "LOCK_FILE", "nifti_affine", "save_nifti", "writer_lock"]

DATALIST_FILE = "dataset.json"
LOCK_FILE = ".synthetic_dataset.lock"


def writer_lock(root: Path) -> FileLock:
    """A lock on the dataset folder ``root`` (created) that makes one process at a time check and write it.

    Under ``torchrun`` every rank evaluates the bundle's config and so calls ``ensure_*`` on the same folder; the
    others wait on this lock and then reuse what the first one wrote, instead of reading half-written files.
    """
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(root / LOCK_FILE)


def nifti_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine ``[4, 4]`` with ``spacing`` on the diagonal and the volume centred on the world origin."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) * s / 2.0 for n, s in zip(shape, spacing)]
    return affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, root: Path) -> str:
    """Save ``array`` with ``affine`` (sform and qform, mm) and return its path relative to ``root``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path.relative_to(root).as_posix()
