"""Image loading whose errors name the file.

MONAI 1.6's ``LoadImage`` names the file for a missing path, but a truncated ``.nii.gz`` fails deep inside
gzip with ``EOFError: Compressed file ended before the end-of-stream marker was reached`` and no file name,
which in a 30-case dataset leaves the user guessing. These loaders add the path to any read error, and
:func:`case_name` names the case an image (or a list of modality files) belongs to, for messages and output files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged

__all__ = ["LoadImageWithContext", "LoadImageWithContextd", "case_name"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class LoadImageWithContext(LoadImage):
    """``monai.transforms.LoadImage`` that re-raises any read error as a ``ValueError`` naming the file.

    Args and returns: as ``LoadImage``; ``filename`` is a path or a list of paths (stacked as channels).

    Raises:
        ValueError: ``cannot read image '<path>': <ExceptionType>: <reason>``, chained from the original error.
    """

    def __call__(self, filename: Sequence[str] | str, reader: ImageReader | None = None) -> Any:
        try:
            return super().__call__(filename, reader)
        except Exception as err:
            raise ValueError(f"cannot read image '{filename}': {type(err).__name__}: {err}") from err


class LoadImageWithContextd(LoadImaged):
    """``monai.transforms.LoadImaged`` whose read errors name the file (see :class:`LoadImageWithContext`).

    Takes exactly the arguments of ``LoadImaged``, e.g. ``LoadImageWithContextd(keys=["image", "label"])``.

    Raises:
        ValueError: ``cannot read image '<path>': <ExceptionType>: <reason>``, chained from the original error.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # LoadImaged builds its LoadImage from a dozen of these arguments; switching the class of that instance
        # keeps every argument and reader as LoadImaged set them and only adds the error context.
        self._loader.__class__ = LoadImageWithContext


def case_name(paths: str | Sequence[str]) -> str:
    """The case a file (``BRATS_001.nii.gz`` -> ``BRATS_001``) or a list of modality files
    (``BraTS2021_00000_flair.nii.gz``, ``..._t1.nii.gz`` -> ``BraTS2021_00000``, their common name prefix, else
    their folder's name) belongs to."""
    if isinstance(paths, (str, os.PathLike)):
        return _stem(os.path.basename(paths))
    names = [_stem(os.path.basename(p)) for p in paths]
    prefix = os.path.commonprefix(names).rstrip("_-. ")
    return prefix or os.path.basename(os.path.dirname(os.path.abspath(paths[0])))


def _stem(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]
