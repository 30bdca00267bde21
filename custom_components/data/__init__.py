"""Datalist readers and writers, and the synthetic CT generator used instead of downloads."""

from .datalist import inference_datalist, load_datalist, write_datalist_from_folder
from .synthetic import ensure_synthetic_dataset, make_synthetic_ct, write_synthetic_dataset

__all__ = [
    "ensure_synthetic_dataset",
    "inference_datalist",
    "load_datalist",
    "make_synthetic_ct",
    "write_datalist_from_folder",
    "write_synthetic_dataset",
]
