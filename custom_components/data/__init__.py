"""Datalist readers and writers (decathlon JSON, AMOS22, BraTS layouts), and the synthetic CT and brain MRI
generators used instead of downloads."""

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
from .classification import (classification_inference_datalist, load_classification_datalist,
                             write_classification_datalist)
from .datalist import inference_datalist, load_datalist, write_datalist_from_folder
from .synthetic import SYNTHETIC_TASKS, ensure_synthetic_dataset, make_synthetic_ct, write_synthetic_dataset
from .synthetic_classification import (CCCCII_CLASSES, ensure_synthetic_classification_dataset, make_synthetic_scan,
                                       write_synthetic_classification_dataset)

__all__ = [
    "BRATS_LAYOUTS",
    "LABEL_CLASSES",
    "MODALITIES",
    "SYNTHETIC_TASKS",
    "amos_ct_cases",
    "brats2021_case",
    "brats_inference_datalist",
    "brats_label_mapping",
    "ensure_synthetic_dataset",
    "inference_datalist",
    "load_datalist",
    "make_synthetic_ct",
    "write_brats2021_datalist",
    "write_datalist_from_folder",
    "write_synthetic_dataset",
    "CCCCII_CLASSES",
    "classification_inference_datalist",
    "ensure_synthetic_classification_dataset",
    "load_classification_datalist",
    "make_synthetic_scan",
    "write_classification_datalist",
    "write_synthetic_classification_dataset",
]
