"""Brain-tumour MRI datasets in the two layouts users have: MSD Task01 BrainTumour and BraTS 2021.

- ``"msd"``: one 4D NIfTI per case (``imagesTr/BRATS_001.nii.gz``, the four modalities along the last axis in the
  order FLAIR, T1, T1 with contrast (t1gd), T2) and a label map (``labelsTr/BRATS_001.nii.gz``) with 1 edema,
  2 non-enhancing tumour, 3 enhancing tumour.
- ``"brats2021"``: one folder per case, ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``, with
  labels 1 necrotic / non-enhancing tumour core (NCR), 2 peritumoral edema (ED), 4 enhancing tumour (ET).

Both are read as the same four channels in :data:`MODALITIES` order (MSD's own order, so a model trained on one
layout runs on the other) and the same label classes :data:`LABEL_CLASSES` (``label_mapping`` turns each layout's
raw values into them and back). A datalist entry of the BraTS 2021 layout lists the four modality files in that
order: ``{"image": [flair, t1, t1ce, t2], "label": seg}``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .datalist import inference_datalist, training_entries, write_decathlon_json

__all__ = [
    "BRATS_LAYOUTS", "LABEL_CLASSES", "MODALITIES", "brats2021_case", "brats_inference_datalist",
    "brats_label_mapping", "write_brats2021_datalist",
]  # fmt: skip

logger = logging.getLogger("custom_components")

#: The input channels, in order: FLAIR, T1-weighted, T1-weighted with gadolinium contrast, T2-weighted.
MODALITIES = ("flair", "t1", "t1ce", "t2")
#: The label classes every layout is mapped to (class index: name).
LABEL_CLASSES = ("background", "necrotic / non-enhancing tumour core", "peritumoral edema", "enhancing tumour")
#: Raw label value on disk -> class index of :data:`LABEL_CLASSES`, per layout.
BRATS_LAYOUTS: dict[str, dict[int, int]] = {
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},  # 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},  # 1 NCR, 2 ED, 4 ET
}
SEGMENTATION_SUFFIX = "seg"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def brats_label_mapping(layout: str) -> dict[str, int]:
    """The ``label_mapping`` (``{raw value: class index}``, JSON-style string keys) of a dataset ``layout``.

    Raises:
        ValueError: ``layout`` is not one of :data:`BRATS_LAYOUTS`.
    """
    return {str(raw): index for raw, index in _layout(layout).items()}


def brats2021_case(case_dir: str | os.PathLike, labelled: bool = True) -> dict[str, Any]:
    """The datalist entry of one BraTS 2021 case folder: ``{"image": [four paths in MODALITIES order], "label":
    path}`` (no ``"label"`` when not ``labelled``).

    A modality file is ``<case>_<modality>.nii.gz`` (or ``.nii``) where ``<case>`` is the folder's name, as in the
    BraTS 2021 release; the label is ``<case>_seg.nii.gz``.

    Raises:
        FileNotFoundError: the folder does not exist, or lacks a modality (or the label), named with the case.
    """
    folder = Path(case_dir).expanduser().absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"BraTS case folder '{folder}' does not exist.")
    wanted = MODALITIES + ((SEGMENTATION_SUFFIX,) if labelled else ())
    files = {}
    for part in wanted:
        candidates = [folder / f"{folder.name}_{part}{suffix}" for suffix in NIFTI_SUFFIXES]
        found = [f for f in candidates if f.is_file()]
        if not found:
            what = "label" if part == SEGMENTATION_SUFFIX else f"modality '{part}'"
            raise FileNotFoundError(
                f"case '{folder.name}' has no {what}: expected '{candidates[0].name}' in '{folder}' (a BraTS 2021 "
                f"case folder holds {', '.join(f'{folder.name}_{p}.nii.gz' for p in wanted)})."
            )
        files[part] = str(found[0])
    entry: dict[str, Any] = {"image": [files[m] for m in MODALITIES]}
    if labelled:
        entry["label"] = files[SEGMENTATION_SUFFIX]
    return entry


def write_brats2021_datalist(
    data_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    num_folds: int = 5,
    test_dir: str | os.PathLike | None = None,
) -> str:
    """Write a decathlon-style datalist with folds for a BraTS 2021 training folder (one sub-folder per case).

    Cases are sorted by folder name and assigned to folds round-robin; a case folder that lacks a modality or its
    label stops with an error naming the case (see :func:`brats2021_case`). Paths are relative to ``out_file``.

    Args:
        data_dir: folder of the case folders, e.g. ``BraTS2021_Training_Data``.
        out_file: the JSON file to write.
        num_folds: number of cross-validation folds, 1..number of cases.
        test_dir: optional folder of unlabelled case folders for the ``"testing"`` section.

    Returns:
        the path of the written file.
    """
    out_path = Path(out_file).expanduser().absolute()
    cases = [_relative(brats2021_case(folder), out_path.parent) for folder in _case_folders(data_dir)]
    images, labels = [c["image"] for c in cases], [c["label"] for c in cases]
    testing = None
    if test_dir is not None:
        testing = [_relative(brats2021_case(f, labelled=False), out_path.parent) for f in _case_folders(test_dir)]
    return write_decathlon_json(
        out_path, name="BraTS2021", description=f"BraTS 2021 case folders from {Path(data_dir).absolute()}; "
        f"image channels {', '.join(MODALITIES)}", training=training_entries(images, labels, num_folds),
        testing=testing, labels={str(raw): LABEL_CLASSES[index] for raw, index in BRATS_LAYOUTS["brats2021"].items()},
    )  # fmt: skip


def brats_inference_datalist(
    datalist: str | os.PathLike | None, dataset_dir: str | os.PathLike | None, layout: str
) -> list[dict[str, Any]]:
    """The cases to run inference on: the ``"testing"`` section of ``datalist`` when given, else every case of
    ``dataset_dir``: each 4D ``*.nii.gz`` file (``"msd"``) or each case folder (``"brats2021"``).

    Raises:
        ValueError: an unknown ``layout``, or no cases; and the errors of :func:`brats2021_case`.
    """
    _layout(layout)
    if datalist is not None or layout == "msd":
        return inference_datalist(datalist, dataset_dir)
    if dataset_dir is None:
        raise ValueError("brats_inference_datalist needs a datalist file or a dataset_dir of cases, got neither.")
    return [brats2021_case(folder, labelled=False) for folder in _case_folders(dataset_dir)]


def _layout(layout: str) -> dict[int, int]:
    if layout not in BRATS_LAYOUTS:
        raise ValueError(
            f"data_layout must be one of {sorted(BRATS_LAYOUTS)} (MSD Task01: one 4D file per case; BraTS 2021: "
            f"one folder per case with a file per modality), got {layout!r}."
        )
    return BRATS_LAYOUTS[layout]


def _case_folders(data_dir: str | os.PathLike) -> list[Path]:
    root = Path(data_dir).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"BraTS data folder '{root}' does not exist.")
    folders = sorted(f for f in root.iterdir() if f.is_dir() and not f.name.startswith("."))
    if not folders:
        raise ValueError(f"BraTS data folder '{root}' has no case folders (expected e.g. BraTS2021_00000/).")
    return folders


def _relative(entry: dict[str, Any], root: Path) -> dict[str, Any]:
    return {key: [os.path.relpath(v, root) for v in value] if isinstance(value, list) else os.path.relpath(value, root)
            for key, value in entry.items()}
