"""Raw label values of a dataset mapped to class indices and back (MM-WHS stores 205, 420, 500, ... on disk)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from custom_components.transforms.checks import as_tensor, listed_values, source_file

__all__ = ["RemapLabeld", "parse_label_mapping"]


def parse_label_mapping(mapping: Mapping[Any, Any]) -> dict[int, int]:
    """``{raw value: class index}`` with int keys and values from a config mapping (JSON keys are strings).

    Raises:
        ValueError: a key or value is not an integer, or a class index is negative.
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"label_mapping must be a non-empty {{raw value: class index}} mapping, got {mapping!r}.")
    parsed = {}
    for raw, index in mapping.items():
        try:
            raw_int, index_int = int(str(raw)), int(str(index))
        except ValueError:
            raise ValueError(f"label_mapping entries must be integers, got {raw!r}: {index!r}.") from None
        if index_int < 0:
            raise ValueError(f"label_mapping class indices must be >= 0, got {raw!r}: {index!r}.")
        parsed[raw_int] = index_int
    return parsed


class RemapLabeld(MapTransform):
    """Replace every raw label value by its class index with a lookup table; a value the table does not list is
    an error naming the file and the value (a mislabelled case never trains silently as background).

    With ``inverse`` the table is turned around (class index -> the first raw value listed for it), for writing
    predictions in the dataset's own values. ``mapping=None`` leaves the data unchanged (datasets stored as
    ``0..num_classes-1``), so every bundle keeps the same transform list and overrides only ``label_mapping``.

    Args:
        keys: keys of the label maps, ``[1, *spatial]`` (dtype and metadata are kept).
        mapping: ``{raw value: class index}`` (keys may be strings, as in JSON), or None.
        inverse: map class indices back to raw values.
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: naming the file, when a voxel holds a value the table does not list.

    Example::

        RemapLabeld("label", mapping={"0": 0, "205": 1, "420": 2, "421": 2, "500": 3})
    """

    def __init__(
        self,
        keys: KeysCollection,
        mapping: Mapping[Any, Any] | None,
        inverse: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.table: dict[int, int] | None = None
        if mapping is not None:
            table = parse_label_mapping(mapping)
            if inverse:
                inverted: dict[int, int] = {}
                for raw, index in table.items():
                    inverted.setdefault(index, raw)
                table = inverted
            self.table = dict(sorted(table.items()))
        self.inverse = inverse

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.table is None:
            return d
        source = torch.tensor(list(self.table), dtype=torch.int64)
        target = torch.tensor(list(self.table.values()), dtype=torch.int64)
        for key in self.key_iterator(d):
            label = as_tensor(d[key])
            values = label.to(torch.int64)
            position = torch.searchsorted(source, values).clamp_(max=len(source) - 1)
            unknown = (source[position] != values) | (values != label)
            if unknown.any():
                what = "class indices" if self.inverse else "raw label values"
                raise ValueError(
                    f"label '{source_file(d, key)}' (key '{key}') has {int(unknown.sum())} voxel(s) with values the "
                    f"label mapping does not list: {listed_values(torch.unique(label[unknown]))}; known {what}: "
                    f"{', '.join(map(str, self.table))}."
                )
            d[key] = convert_to_dst_type(target[position], d[key], dtype=label.dtype)[0]
        return d
