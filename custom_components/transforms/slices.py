"""Scans stored as a folder of 2D slice images (CC-CCII: ``NCP/<patient>/<scan>/*.png``) or as one volume file.

MONAI reads a folder only as a DICOM series (ITK); CC-CCII and similar collections ship each CT scan as a folder of
PNG / JPEG slices. ``SliceFolderReader`` is a MONAI ``ImageReader`` for such folders, and ``LoadScand`` the loading
transform that uses it for folders and MONAI's readers (chosen by suffix: NIfTI, ``.npy``, ...) for files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from PIL import Image, UnidentifiedImageError

from custom_components.transforms.io import LoadImageWithContextd

__all__ = ["SLICE_SUFFIXES", "LoadScand", "SliceFolderReader", "natural_key", "slice_files"]

#: file name endings of the slice images a scan folder may hold (case-insensitive).
SLICE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: ``2.png`` before ``10.png``, ``IMG_9`` before ``IMG_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def slice_files(folder: str | os.PathLike) -> list[Path]:
    """The slice images of a scan folder (``SLICE_SUFFIXES``, hidden files skipped) in natural numeric order.

    Raises:
        ValueError: the folder holds no slice image (names what it holds instead).
    """
    folder = Path(folder)
    entries = sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
    files = [p for p in entries if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLICE_SUFFIXES]
    if not files:
        found = ", ".join(p.name for p in entries[:5]) or "nothing"
        raise ValueError(f"scan folder '{folder}' holds no slice image ({'/'.join(SLICE_SUFFIXES)}); found: {found}.")
    return files


class SliceFolderReader(ImageReader):
    """Read a folder of 2D slice images as one volume ``[H, W, D]``: slice ``k`` (in natural numeric order of the
    file names) is ``[..., k]``, each slice ``[rows, columns]`` as stored. Colour slices are converted to grey
    (PIL mode ``L``); values stay as stored (0..255 for 8-bit images), as ``float32``.

    The volume gets an identity affine (slice images carry no spacing) and no channel dimension, so
    ``EnsureChannelFirst`` adds one: ``[1, H, W, D]``.

    Raises:
        ValueError: naming the folder and the problem: no slice image in it, a slice that cannot be read (corrupt
            or not an image; the slice is named), or slices of different sizes (the first odd one is named).
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for one existing folder; files are left to the other readers."""
        names = ensure_tuple(filename)
        return len(names) == 1 and os.path.isdir(names[0])

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> np.ndarray:
        """Stack the slices of the folder ``data`` (one folder) into ``[H, W, D]``."""
        names = ensure_tuple(data)
        if len(names) != 1:
            raise ValueError(f"SliceFolderReader reads one scan folder at a time, got {list(names)}.")
        folder = Path(names[0])
        slices, size = [], None
        for path in slice_files(folder):
            try:
                with Image.open(path) as image:
                    array = np.asarray(image.convert("L"), dtype=np.float32)
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise ValueError(f"scan folder '{folder}': slice '{path.name}' cannot be read as an image "
                                 f"({type(err).__name__}: {err}).") from err
            if size is None:
                size, first = array.shape, path.name
            elif array.shape != size:
                raise ValueError(f"scan folder '{folder}': slice '{path.name}' is {array.shape[0]}x{array.shape[1]} "
                                 f"but '{first}' is {size[0]}x{size[1]}; all slices of a scan must have one size.")
            slices.append(array)
        return np.stack(slices, axis=-1)

    def get_data(self, img: np.ndarray) -> tuple[np.ndarray, dict]:
        """The volume and its metadata (identity affine, spatial shape, no channel dimension)."""
        meta = {
            MetaKeys.AFFINE: np.eye(4), MetaKeys.ORIGINAL_AFFINE: np.eye(4),
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.shape), MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        return img, meta


class LoadScand(LoadImageWithContextd):
    """Load scans given as slice folders or volume files; read errors name the file (``LoadImageWithContextd``).

    A call whose paths include a folder reads them with :class:`SliceFolderReader`; otherwise MONAI picks its reader
    by the file suffix (NIfTI, ``.npy`` as stored, ...). Takes the arguments of ``LoadImaged``, e.g.
    ``LoadScand(keys="image", image_only=True)``; the loaded image is ``[H, W, D]`` (``[1, H, W, D]`` after
    ``EnsureChannelFirstd``).

    Raises:
        ValueError: ``cannot read image '<path>': ...`` with the reason, e.g. the corrupt slice or the slice size
            that differs (see :class:`SliceFolderReader`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder_reader = SliceFolderReader()

    def __call__(self, data: dict, reader: ImageReader | None = None) -> dict:
        paths = [data[key] for key in self.key_iterator(data)]
        if reader is None and any(isinstance(p, (str, os.PathLike)) and os.path.isdir(p) for p in paths):
            reader = self.folder_reader
        return super().__call__(data, reader)
