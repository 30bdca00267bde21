"""Input checks run right after ``LoadImaged`` + ``EnsureChannelFirstd``: bad inputs stop with an error naming the file.

MONAI's later transforms fail far from the cause (a 2D image breaks ``Spacingd``, a label value of 255 breaks the
one-hot in the loss, a NaN silently poisons training); these checks say which file is wrong and why.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

__all__ = ["CheckImaged", "CheckLabeld", "as_tensor", "listed_values", "source_file"]

UNKNOWN_FILE = "<unknown file>"
AFFINE_TOLERANCE = 1e-3
MAX_LISTED_VALUES = 10


def source_file(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """The file that ``data[key]`` was read from: the MetaTensor's ``filename_or_obj``, else that of
    ``data[f"{key}_meta_dict"]`` (``LoadImaged(image_only=False)``), else ``"<unknown file>"``."""
    meta = _meta(data, key)
    name = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    return str(name) if name else UNKNOWN_FILE


class CheckImaged(MapTransform):
    """Check that images are ``[C, H, W, D]`` with ``num_channels`` channels and finite voxels.

    Args:
        keys: keys of the images to check, each ``[C, *spatial]`` (after ``EnsureChannelFirstd``).
        num_channels: expected number of channels ``C`` (1 for CT, 4 for BraTS).
        spatial_dims: expected number of spatial dimensions.
        allow_nonfinite: skip the NaN/Inf check.
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: naming the file, when the number of dimensions or channels is wrong or voxels are NaN/Inf.

    Example::

        Compose([LoadImaged("image"), EnsureChannelFirstd("image"), CheckImaged("image", num_channels=1)])
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_channels: int = 1,
        spatial_dims: int = 3,
        allow_nonfinite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        _check_positive_int(num_channels, "num_channels")
        _check_positive_int(spatial_dims, "spatial_dims")
        self.num_channels = num_channels
        self.spatial_dims = spatial_dims
        self.allow_nonfinite = allow_nonfinite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, name = as_tensor(d[key]), source_file(d, key)
            shape = tuple(image.shape)
            if image.ndim != self.spatial_dims + 1:
                raise ValueError(
                    f"image '{name}' (key '{key}') has shape {shape}, i.e. {image.ndim - 1} spatial dims after the "
                    f"channel; expected {self.spatial_dims} spatial dims ([C, H, W, D] for 3D)."
                )
            if shape[0] != self.num_channels:
                raise ValueError(
                    f"image '{name}' (key '{key}') has {shape[0]} channels (shape {shape}); "
                    f"expected {self.num_channels}."
                )
            if not self.allow_nonfinite and image.is_floating_point():
                num_bad = int((~torch.isfinite(image)).sum())
                if num_bad:
                    raise ValueError(
                        f"image '{name}' (key '{key}') has {num_bad} NaN/Inf voxel(s) out of {image.numel()}."
                    )
        return d


class CheckLabeld(MapTransform):
    """Check that label maps hold integer classes ``0..num_classes-1`` on the same voxel grid as their image.

    Shapes are compared on the spatial dims; affines (from the MetaTensors or ``{key}_meta_dict``) must agree
    within 1e-3 and are not compared when either is unknown.

    Args:
        keys: keys of the label maps to check, each ``[1, *spatial]`` (after ``EnsureChannelFirstd``).
        image_key: key of the image the labels must match, ``[C, *spatial]``.
        num_classes: number of classes including background.
        allow_missing_keys: do not raise when a label key is missing.

    Raises:
        ValueError: naming the label (and image) file, when the spatial shape or affine differs from the image's,
            or values are non-integer or outside ``0..num_classes-1``.

    Example::

        CheckLabeld("label", image_key="image", num_classes=14)
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        num_classes: int = 14,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}.")
        self.image_key = image_key
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            raise ValueError(f"CheckLabeld: image key '{self.image_key}' is not in the data (keys: {list(d)}).")
        image, image_name = d[self.image_key], source_file(d, self.image_key)
        for key in self.key_iterator(d):
            label, name = as_tensor(d[key]), source_file(d, key)
            pair = f"label '{name}' (key '{key}') and image '{image_name}' (key '{self.image_key}')"
            label_shape, image_shape = tuple(label.shape[1:]), tuple(image.shape[1:])
            if label_shape != image_shape:
                raise ValueError(f"{pair} differ in spatial shape: {label_shape} vs {image_shape}.")
            self._check_affines(d, key, pair)
            self._check_values(label, f"label '{name}' (key '{key}')")
        return d

    def _check_affines(self, d: dict[Hashable, Any], key: Hashable, pair: str) -> None:
        label_affine, image_affine = _affine(d, key), _affine(d, self.image_key)
        if label_affine is None or image_affine is None:
            return
        if label_affine.shape != image_affine.shape or np.abs(label_affine - image_affine).max() > AFFINE_TOLERANCE:
            raise ValueError(
                f"{pair} differ in affine (tolerance {AFFINE_TOLERANCE}):\nlabel affine:\n{label_affine}\n"
                f"image affine:\n{image_affine}"
            )

    def _check_values(self, label: torch.Tensor, what: str) -> None:
        if label.is_floating_point():
            non_integer = label != torch.round(label)  # NaN counts as non-integer
            if non_integer.any():
                found = listed_values(torch.unique(label[non_integer]))
                raise ValueError(
                    f"{what} has {int(non_integer.sum())} non-integer voxel(s), e.g. values {found}; expected classes "
                    f"0..{self.num_classes - 1}."
                )
        outside = (label < 0) | (label > self.num_classes - 1)
        if outside.any():
            found = listed_values(torch.unique(label[outside]))
            raise ValueError(
                f"{what} has {int(outside.sum())} voxel(s) with values outside 0..{self.num_classes - 1}: {found}."
            )


def _meta(data: Mapping[Hashable, Any], key: Hashable) -> Mapping:
    value = data[key]
    if isinstance(value, MetaTensor):
        return value.meta
    meta = data.get(f"{key}_meta_dict")
    return meta if isinstance(meta, Mapping) else {}


def _affine(data: Mapping[Hashable, Any], key: Hashable) -> np.ndarray | None:
    affine = _meta(data, key).get("affine")
    return None if affine is None else np.asarray(affine, dtype=np.float64)


def as_tensor(value: Any) -> torch.Tensor:
    """A plain tensor view of an array, tensor or MetaTensor."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(np.asarray(value))


def listed_values(values: torch.Tensor) -> str:
    """The first ``MAX_LISTED_VALUES`` of sorted ``values`` as text, with a count of the others."""
    shown = [v.item() for v in values[:MAX_LISTED_VALUES]]
    text = ", ".join(f"{v:g}" for v in shown)
    return text + (f" (and {len(values) - MAX_LISTED_VALUES} more)" if len(values) > MAX_LISTED_VALUES else "")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
