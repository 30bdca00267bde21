"""Multi-modal MRI cases loaded as one image whose errors name the case and the modality.

A brain-tumour case is either one 4D file with the modalities along the last axis (MSD Task01) or one file per
modality (BraTS 2021). MONAI's ``LoadImaged`` reads both, but a missing or mis-shaped modality fails with a
generic error (``all input arrays must have the same shape``) that names neither the case nor the modality.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

from custom_components.transforms.checks import AFFINE_TOLERANCE
from custom_components.transforms.io import LoadImageWithContext, case_name

__all__ = ["LoadModalitiesd"]

#: the value ``layout`` takes for each form of a case: one 4D file, or a list of files.
ONE_FILE_LAYOUTS, FILE_PER_MODALITY_LAYOUTS = ("msd",), ("brats2021",)


class LoadModalitiesd(MapTransform):
    """Load each case of ``keys`` as one channel-last image ``[H, W, D, M]`` of its ``M`` modalities, checked.

    A value is either one 4D file (modalities along the last axis, in ``modalities`` order) or a list of ``M``
    3D files in ``modalities`` order. Each file is read by MONAI's ``LoadImage``; a list is stacked on the last axis
    with the first file's metadata, after checking that every modality has the same shape and affine. The result's
    ``filename_or_obj`` is the case (``<folder>/<case name>``, see :func:`case_name`), so the files written later
    are named after the case; follow with ``EnsureChannelFirstd`` to get ``[M, H, W, D]``.

    Args:
        keys: keys of the cases.
        modalities: the modality names, in channel order (used in messages and to count the channels).
        layout: ``"msd"`` (one 4D file per case), ``"brats2021"`` (one file per modality) or None (either);
            a case of the other form is an error.
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: naming the case and the modality, when a file is missing or unreadable, a 4D file has another
            number of modalities, a modality file is not 3D, or the modalities differ in shape or affine.

    Example::

        LoadModalitiesd("image", modalities=("flair", "t1", "t1ce", "t2"), layout="brats2021")
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str],
        layout: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(modalities, str) or not modalities or not all(isinstance(m, str) for m in modalities):
            raise ValueError(f"modalities must be a non-empty list of names, got {modalities!r}.")
        if layout is not None and layout not in ONE_FILE_LAYOUTS + FILE_PER_MODALITY_LAYOUTS:
            raise ValueError(f"layout must be one of {ONE_FILE_LAYOUTS + FILE_PER_MODALITY_LAYOUTS} or None, "
                             f"got {layout!r}.")
        self.modalities = tuple(modalities)
        self.layout = layout
        self.loader = LoadImageWithContext(image_only=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            one_file = isinstance(value, (str, os.PathLike))
            if not one_file and not (isinstance(value, Sequence) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"'{key}' must be a path or a list of paths, got {value!r}.")
            self._check_layout(value, one_file)
            d[key] = self._load_one_file(str(value)) if one_file else self._load_file_per_modality(list(value))
        return d

    def _check_layout(self, value: Any, one_file: bool) -> None:
        listed = ", ".join(self.modalities)
        if one_file and self.layout in FILE_PER_MODALITY_LAYOUTS:
            raise ValueError(
                f"case '{case_name(value)}': data_layout '{self.layout}' expects one file per modality ({listed}), "
                f"got one file '{value}'; for one 4D file per case use data_layout 'msd'."
            )
        if not one_file and self.layout in ONE_FILE_LAYOUTS:
            raise ValueError(
                f"case '{case_name(value)}': data_layout '{self.layout}' expects one 4D file per case, got "
                f"{len(value)} files; for one file per modality ({listed}) use data_layout 'brats2021'."
            )

    def _read(self, path: str, case: str, modality: str) -> MetaTensor:
        if not os.path.isfile(path):
            raise ValueError(f"case '{case}': {modality} file '{path}' does not exist.")
        try:
            return self.loader(path)
        except ValueError as err:
            raise ValueError(f"case '{case}': {modality}: {err}") from err

    def _load_one_file(self, path: str) -> MetaTensor:
        case = case_name(path)
        image = self._read(path, case, "image")
        if image.ndim != 4 or image.shape[-1] != len(self.modalities):
            raise ValueError(
                f"case '{case}': '{path}' has shape {tuple(image.shape)}; expected a 4D image with "
                f"{len(self.modalities)} modalities ({', '.join(self.modalities)}) along the last axis."
            )
        image.meta["original_channel_dim"] = -1
        return image

    def _load_file_per_modality(self, paths: list[str]) -> MetaTensor:
        case = case_name(paths)
        if len(paths) != len(self.modalities):
            raise ValueError(
                f"case '{case}': {len(paths)} files given, expected one per modality "
                f"({', '.join(self.modalities)}) in that order: {paths}."
            )
        images = [self._read(p, case, f"modality '{m}'") for p, m in zip(paths, self.modalities)]
        first = images[0]
        for path, modality, image in zip(paths, self.modalities, images):
            if image.ndim != 3:
                raise ValueError(f"case '{case}': modality '{modality}' ('{path}') has shape {tuple(image.shape)}; "
                                 "expected a 3D image.")
            if image.shape != first.shape:
                raise ValueError(
                    f"case '{case}': modality '{modality}' ('{path}') has shape {tuple(image.shape)}, modality "
                    f"'{self.modalities[0]}' has {tuple(first.shape)}; all modalities must share one voxel grid."
                )
            affine, reference = (np.asarray(i.affine, dtype=np.float64) for i in (image, first))
            if np.abs(affine - reference).max() > AFFINE_TOLERANCE:
                raise ValueError(
                    f"case '{case}': modality '{modality}' ('{path}') has another affine than modality "
                    f"'{self.modalities[0]}' (tolerance {AFFINE_TOLERANCE}):\n{affine}\nvs\n{reference}"
                )
        meta = dict(first.meta)
        meta[ImageMetaKey.FILENAME_OR_OBJ] = os.path.join(os.path.dirname(os.path.abspath(paths[0])), case)
        meta["original_channel_dim"] = -1
        return MetaTensor(torch.stack([i.as_tensor() for i in images], dim=-1), meta=meta)
