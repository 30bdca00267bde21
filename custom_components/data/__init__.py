"""Datalist readers and writers (decathlon JSON with folds, classification JSON/CSV, AMOS22, BraTS layouts).

The synthetic datasets that stand in for downloads are in :mod:`custom_components.synthetic`, a layer above this
one: it writes with these writers, and nothing here imports it.
"""

from .amos import amos_ct_cases
from .brats import (
    BRATS_LAYOUTS,
    LABEL_CLASSES,
    MODALITIES,
    brats2021_case,
    brats_inference_datalist,
    brats_label_mapping,
    write_brats2021_datalist,
)
from .classification import (CCCCII_CLASSES, classification_inference_datalist, load_classification_datalist,
                             write_classification_datalist)
from .datalist import inference_datalist, load_datalist, write_datalist_from_folder

__all__ = [
    "BRATS_LAYOUTS",
    "CCCCII_CLASSES",
    "LABEL_CLASSES",
    "MODALITIES",
    "amos_ct_cases",
    "brats2021_case",
    "brats_inference_datalist",
    "brats_label_mapping",
    "classification_inference_datalist",
    "inference_datalist",
    "load_classification_datalist",
    "load_datalist",
    "write_brats2021_datalist",
    "write_classification_datalist",
    "write_datalist_from_folder",
]
