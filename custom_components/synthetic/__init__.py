"""Synthetic datasets used instead of downloads by the quickstarts, the tests and the studies: CT-like volumes with
organs or lung lesions (one layout per fine-tuning bundle), four-modality brain MRI with tumours, and CC-CCII-like
chest CT scans in three classes.

This package sits above :mod:`custom_components.data`: it writes its datasets with the datalist writers and layouts
of ``data``, which never imports it.
"""

from custom_components.synthetic.classification import (ensure_synthetic_classification_dataset, make_synthetic_scan,
                                                        write_synthetic_classification_dataset)
from custom_components.synthetic.ct import (BTCV_ORGANS, ORGAN_STRUCTURES, SYNTHETIC_TASKS, ensure_synthetic_dataset,
                                            make_synthetic_ct, synthetic_ct_profile, write_synthetic_dataset)
from custom_components.synthetic.mri import make_synthetic_brain_mri

__all__ = [
    "BTCV_ORGANS",
    "ORGAN_STRUCTURES",
    "SYNTHETIC_TASKS",
    "ensure_synthetic_classification_dataset",
    "ensure_synthetic_dataset",
    "make_synthetic_brain_mri",
    "make_synthetic_ct",
    "make_synthetic_scan",
    "synthetic_ct_profile",
    "write_synthetic_classification_dataset",
    "write_synthetic_dataset",
]
