"""Label classes to overlapping regions and back (BraTS: tumour core, whole tumour, enhancing tumour).

MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` hard-codes the BraTS 2018-2021 label values 1, 2, 4; the
MSD Task01 labels are 1, 2, 3 with other meanings, and nothing in MONAI turns the regions back into a label map.
Here the regions are a config value (lists of class indices), used in both directions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from custom_components.transforms.checks import as_tensor

__all__ = ["LabelToRegionsd", "RegionsToLabeld", "label_to_regions", "regions_to_label"]


def _validated(regions: Sequence[Sequence[int]]) -> list[frozenset[int]]:
    if isinstance(regions, str) or not regions:
        raise ValueError(f"regions must be a non-empty list of lists of class indices, got {regions!r}.")
    sets = []
    for region in regions:
        if isinstance(region, str) or not region or not all(isinstance(c, int) and c > 0 for c in region):
            raise ValueError(f"each region must be a non-empty list of class indices > 0, got {region!r} in "
                             f"{regions!r}.")
        sets.append(frozenset(region))
    return sets


def painting_order(regions: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """``(region index, class)`` pairs to paint a label map from regions: largest region first, each painting the
    one class it holds that no region nested inside it holds (WT = {1, 2, 3} paints 2, TC = {1, 3} paints 1,
    ET = {3} paints 3).

    Raises:
        ValueError: a region does not hold exactly one class of its own (the regions are not nested that way).
    """
    sets = _validated(regions)
    order = []
    for index, region in sorted(enumerate(sets), key=lambda item: -len(item[1])):
        own = region - frozenset().union(*(other for other in sets if other < region))
        if len(own) != 1:
            raise ValueError(
                f"region {sorted(region)} holds classes {sorted(own)} that no region inside it holds; regions must be "
                f"nested so that each adds exactly one class, got {[sorted(s) for s in sets]}."
            )
        order.append((index, next(iter(own))))
    return order


def label_to_regions(label: NdarrayOrTensor, regions: Sequence[Sequence[int]]) -> NdarrayOrTensor:
    """``[1, *spatial]`` class map -> ``[R, *spatial]`` binary map, channel ``r`` = voxels whose class is in
    ``regions[r]`` (same type, dtype and metadata as ``label``)."""
    values = as_tensor(label)
    if values.shape[0] != 1:
        raise ValueError(f"label must be a class map [1, *spatial], got shape {tuple(values.shape)}.")
    channels = [torch.isin(values[0], torch.tensor(sorted(r), device=values.device)) for r in _validated(regions)]
    return convert_to_dst_type(torch.stack(channels).to(values.dtype), label)[0]


def regions_to_label(regions_map: NdarrayOrTensor, regions: Sequence[Sequence[int]]) -> NdarrayOrTensor:
    """``[R, *spatial]`` binary map -> ``[1, *spatial]`` class map painted in :func:`painting_order` (a voxel in
    WT and TC but not ET gets TC's own class; ET without TC still gets ET's class)."""
    values = as_tensor(regions_map)
    order = painting_order(regions)
    if values.shape[0] != len(order):
        raise ValueError(f"regions map has {values.shape[0]} channels, expected {len(order)} (one per region).")
    label = torch.zeros((1, *values.shape[1:]), dtype=torch.uint8, device=values.device)
    for index, cls in order:
        label[0][values[index] > 0] = cls
    return convert_to_dst_type(label, regions_map, dtype=label.dtype)[0]


class _RegionsTransformd(MapTransform):
    """Applies ``convert(value, regions)`` to every key; the regions are validated once, here."""

    convert: staticmethod

    def __init__(self, keys: KeysCollection, regions: Sequence[Sequence[int]], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        painting_order(regions)  # validates
        self.regions = regions

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.convert(d[key], self.regions)
        return d


class LabelToRegionsd(_RegionsTransformd):
    """Replace class maps ``[1, *spatial]`` by binary region maps ``[R, *spatial]`` (see :func:`label_to_regions`).

    Args:
        keys: keys of the class maps.
        regions: class indices of each region, e.g. BraTS ``[[1, 3], [1, 2, 3], [3]]`` (TC, WT, ET) with classes
            1 necrotic core, 2 edema, 3 enhancing tumour.
        allow_missing_keys: do not raise when a key is missing.

    Example::

        LabelToRegionsd("label", regions=[[1, 3], [1, 2, 3], [3]])
    """

    convert = staticmethod(label_to_regions)


class RegionsToLabeld(_RegionsTransformd):
    """Replace binary region maps ``[R, *spatial]`` by class maps ``[1, *spatial]`` (see :func:`regions_to_label`).

    Args:
        keys: keys of the region maps (thresholded, e.g. by ``AsDiscreted(threshold=0.5)``).
        regions: as in :class:`LabelToRegionsd`.
        allow_missing_keys: do not raise when a key is missing.
    """

    convert = staticmethod(regions_to_label)
