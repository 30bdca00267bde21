"""Pad volumes for a sliding window whose output lives on the patch grid, saying when a volume was smaller."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import DivisiblePadd, MapTransform, SpatialPadd

from custom_components.transforms.checks import source_file

__all__ = ["PadToWindowd"]

logger = logging.getLogger("custom_components")


class PadToWindowd(MapTransform):
    """Pad each image to at least ``window`` and to a multiple of ``divisor`` per axis (MONAI ``SpatialPadd`` then
    ``DivisiblePadd``, centred, with ``mode``), logging one warning that names the file when it was smaller than
    the window: its features then partly describe padding.

    A multiple of the patch size keeps every sliding-window position on the patch grid, so a network whose output
    is one vector per patch (``GLMAEFeatureEncoder``) is stitched without interpolation.

    Args:
        keys: image keys.
        window: the sliding window's size.
        divisor: pad every side to a multiple of this (the patch size); 1 for none.
        mode: the padding mode (``"constant"`` pads with 0, the bottom of the intensity window).
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, window: Sequence[int], divisor: int = 1, mode: str = "constant",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if divisor < 1:
            raise ValueError(f"divisor must be >= 1, got {divisor}.")
        self.window = [int(s) for s in window]
        self.spatial_pad = SpatialPadd(keys, self.window, mode=mode, allow_missing_keys=allow_missing_keys)
        self.divisible_pad = DivisiblePadd(keys, divisor, mode=mode, allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = [int(s) for s in d[key].shape[1:]]
            if any(s < w for s, w in zip(shape, self.window)):
                logger.warning(f"image '{source_file(d, key)}' is {shape} voxels after preprocessing, smaller than "
                               f"the window {self.window}: padded to the window; its features partly describe the "
                               f"padding.")
        return self.divisible_pad(self.spatial_pad(d))
