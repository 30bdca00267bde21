"""Classification datalists: one scan per entry with its class, patient and fold, read from JSON or CSV, and written
from a CC-CCII-style folder tree (``<class>/<patient>/<scan>/``) with folds assigned per patient.

An entry is ``{"image": "NCP/1234/5678", "label": "NCP", "patient": "1234", "fold": 0}``: ``image`` is a folder of
slice images or a volume file (NIfTI, ``.npy``), relative to the datalist's folder unless absolute; ``label`` is a
class name (or its index); ``patient`` and ``fold`` are optional. A JSON datalist holds sections (``"training"``,
``"validation"``, ``"testing"``) of such entries; a CSV datalist is one table with the columns ``image``, ``label``,
``fold`` and ``patient`` (extra columns are kept), read as whichever section is asked for. Every problem found while
reading one raises an error naming the datalist, the entry and the value involved.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custom_components.transforms.slices import SLICE_SUFFIXES, natural_key

from .datalist import (FOLD_SECTIONS, absolute_path, read_json, resolve_base_dir, split_fold, validate_num_labelled,
                       write_decathlon_json)

__all__ = [
    "CCCCII_CLASSES", "VOLUME_SUFFIXES", "class_index", "classification_inference_datalist", "find_scans",
    "load_classification_datalist", "write_classification_datalist",
]

logger = logging.getLogger("custom_components")

#: CC-CCII's classes in class-index order: novel coronavirus pneumonia, common pneumonia, normal.
CCCCII_CLASSES = ("NCP", "CP", "Normal")
#: file name endings read as one volume per file (anything else in a patient folder that is not a folder is skipped).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")


def class_index(value: Any, class_names: Sequence[str], where: str) -> int:
    """The class index of ``value``: a class name (exact, else case-insensitive) or an index ``0..K-1`` (an int or
    a string of digits).

    Raises:
        ValueError: starting with ``where``, naming the value and the allowed class names.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(class_names):
        return value
    if isinstance(value, str):
        if value in class_names:
            return list(class_names).index(value)
        folded = [name.lower() for name in class_names]
        if value.lower() in folded:
            return folded.index(value.lower())
    raise ValueError(f"{where}: unknown class {value!r}; allowed class names: {', '.join(class_names)} "
                     f"(or their indices 0..{len(class_names) - 1}).")


def load_classification_datalist(
    datalist: str | os.PathLike,
    section: str = "training",
    class_names: Sequence[str] = ("NCP", "CP", "Normal"),
    fold: int | None = None,
    num_labelled: int | None = None,
    require_label: bool = True,
    check_files: bool = True,
    base_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Read one section (or one cross-validation split) of a classification datalist, JSON or CSV.

    Fold semantics are those of :func:`custom_components.data.load_datalist`: with ``fold`` given, ``section``
    ``"training"`` or ``"validation"`` and ``fold`` fields on the training entries, ``"training"`` returns the
    entries of the other folds and ``"validation"`` those of ``fold``; otherwise the section is returned as is. A CSV
    is one table: every section name reads it whole (then split by ``fold`` as above).

    Args:
        datalist: path of the ``.json`` or ``.csv`` file.
        section: ``"training"``, ``"validation"``, ``"testing"``, ...
        class_names: the class names, in class-index order.
        fold: cross-validation fold held out for validation, or None.
        num_labelled: keep only the first N entries of the training split (file order); None keeps all.
        require_label: every returned entry must have a label (training and validation).
        check_files: every returned ``image`` must exist (a folder or a file).
        base_dir: folder that relative paths are relative to; defaults to the datalist's folder.

    Returns:
        new dicts in file order: ``image`` an absolute path, ``label`` the class index (when given), ``fold`` an
        int (when given), ``patient`` a string (when given); other fields kept.

    Raises:
        FileNotFoundError: the datalist or a listed image does not exist.
        ValueError: the file is malformed or empty, an entry has no image, an unknown class name, no label while
            ``require_label``, a fold that is not an int, a patient in two folds, or the requested fold is empty.
    """
    path = Path(datalist).expanduser().absolute()
    base = resolve_base_dir(path, base_dir)
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
        raise ValueError(f"fold must be an int or None, got {fold!r}.")
    if num_labelled is not None:
        validate_num_labelled(num_labelled, section)
    source, raw = _raw_section(path, section, fold)
    entries = [_entry(item, index, source, class_names, base, path) for index, item in enumerate(raw)]
    _check_patients_in_one_fold(entries, source, path)
    selected = list(range(len(entries)))
    if fold is not None and section in FOLD_SECTIONS and any("fold" in entry for entry in entries):
        missing = [i for i, entry in enumerate(entries) if "fold" not in entry]
        if missing:
            raise ValueError(f"datalist '{path}': entry {missing[0]} of section '{source}' has no 'fold' while other "
                             "entries have one.")
        selected = split_fold(entries, section, fold, path)
    if num_labelled is not None:
        if num_labelled > len(selected):
            raise ValueError(f"datalist '{path}': num_labelled={num_labelled} but the training split has only "
                             f"{len(selected)} entries.")
        selected = selected[:num_labelled]
    for index in selected:
        entry = entries[index]
        where = f"datalist '{path}': entry {index} of section '{source}' (image '{entry['image']}')"
        if require_label and "label" not in entry:
            raise ValueError(f"{where} has no label; every training and validation entry needs one of "
                             f"{', '.join(class_names)}.")
        if check_files and not os.path.exists(entry["image"]):
            raise FileNotFoundError(f"{where}: the scan does not exist.")
    return [entries[index] for index in selected]


def classification_inference_datalist(
    datalist: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "testing",
    class_names: Sequence[str] = ("NCP", "CP", "Normal"),
) -> list[dict[str, Any]]:
    """The scans to classify: a datalist section (labels optional), or every scan directly in ``dataset_dir``
    (sub-folders of slice images and volume files, in natural order of their names).

    Raises:
        ValueError: both arguments are None, or ``dataset_dir`` holds no scan; and the errors of
            :func:`load_classification_datalist`.
        FileNotFoundError: ``dataset_dir`` does not exist.
    """
    if datalist is not None:
        return load_classification_datalist(datalist, section, class_names, require_label=False)
    if dataset_dir is None:
        raise ValueError("classification_inference_datalist needs a datalist or a dataset_dir of scans, got neither.")
    folder = Path(dataset_dir).expanduser().absolute()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder '{folder}' does not exist.")
    scans = find_scans(folder)
    if not scans:
        raise ValueError(f"dataset folder '{folder}' holds no scan (a folder of slice images or a "
                         f"{'/'.join(VOLUME_SUFFIXES)} file).")
    return [{"image": str(scan)} for scan in scans]


def find_scans(folder: str | os.PathLike) -> list[Path]:
    """The scans directly in ``folder``, in natural order of their names: sub-folders that hold slice images
    (``SLICE_SUFFIXES``) and ``VOLUME_SUFFIXES`` files."""
    scans = []
    for child in sorted(Path(folder).iterdir(), key=lambda p: natural_key(p.name)):
        if child.name.startswith("."):
            continue
        if child.is_dir() and any(f.suffix.lower() in SLICE_SUFFIXES for f in child.iterdir() if f.is_file()):
            scans.append(child)
        elif child.is_file() and child.name.lower().endswith(VOLUME_SUFFIXES):
            scans.append(child)
    return scans


def write_classification_datalist(
    root: str | os.PathLike,
    out_file: str | os.PathLike,
    class_names: Sequence[str] = ("NCP", "CP", "Normal"),
    num_folds: int = 5,
    seed: int = 0,
    test_dir: str | os.PathLike | None = None,
) -> str:
    """Write the datalist of a CC-CCII-style folder tree ``root/<class>/<patient>/<scan>``, folds assigned per patient.

    A scan is a sub-folder of slice images or a volume file in the patient's folder (see :func:`find_scans`). A
    patient is identified by its folder name: the same name under two class folders is one patient. Folds are dealt
    per patient, stratified by class: the patients of each class (by their first scan's class, in class order) are
    shuffled with ``seed`` and dealt round-robin to the folds, continuing where the previous class stopped, so every
    scan of a patient is in one fold and the folds have similar sizes and class mixes. The output is a decathlon-style
    JSON (``training`` entries, ``labels``, and ``testing`` with the scans of ``test_dir``) or, for a ``.csv``
    ``out_file``, one table with the columns ``image,label,patient,fold``. Paths are relative to ``out_file``'s folder.

    Args:
        root: the folder holding one sub-folder per class (files in it are ignored).
        out_file: the ``.json`` or ``.csv`` file to write (its folder is created).
        class_names: the class folders' names, in class-index order (matched case-insensitively).
        num_folds: number of folds, 1..number of patients.
        seed: seed of the shuffle that assigns patients to folds.
        test_dir: a folder of unlabelled scans for the JSON's ``testing`` section.

    Returns:
        the path of the written file.

    Raises:
        FileNotFoundError: ``root`` or ``test_dir`` does not exist.
        ValueError: a folder in ``root`` is not a class name (the allowed names are listed), a class has no scan,
            ``num_folds`` is out of range, or a CSV is asked for with ``test_dir``.
    """
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise FileNotFoundError(f"dataset folder '{root_path}' does not exist.")
    out_path = Path(out_file).expanduser().absolute()
    as_csv = out_path.suffix.lower() == ".csv"
    if as_csv and test_dir is not None:
        raise ValueError("a CSV datalist is one table of labelled scans; write a .json to list test scans too.")
    scans = _scans_by_class(root_path, class_names)
    patient_class: dict[str, int] = {}
    for label, patient, _ in scans:
        patient_class.setdefault(patient, label)
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or not 1 <= num_folds <= len(patient_class):
        raise ValueError(f"num_folds must be an int in 1..{len(patient_class)} (the number of patients), "
                         f"got {num_folds!r}.")
    rng = random.Random(seed)
    folds: dict[str, int] = {}
    for label in range(len(class_names)):
        patients = sorted((p for p, c in patient_class.items() if c == label), key=natural_key)
        rng.shuffle(patients)
        for patient in patients:
            folds[patient] = len(folds) % num_folds
    training = [{"image": os.path.relpath(scan, out_path.parent), "label": class_names[label], "patient": patient,
                 "fold": folds[patient]} for label, patient, scan in scans]
    if as_csv:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "label", "patient", "fold"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(training)
        return str(out_path)
    testing = None
    if test_dir is not None:
        testing = [{"image": os.path.relpath(entry["image"], out_path.parent)}
                   for entry in classification_inference_datalist(dataset_dir=test_dir)]
    return write_decathlon_json(
        out_path, name=root_path.name, description=f"scans under {root_path}, {num_folds} folds by patient (seed "
        f"{seed})", training=training, testing=testing, labels={str(i): name for i, name in enumerate(class_names)},
    )


def _scans_by_class(root: Path, class_names: Sequence[str]) -> list[tuple[int, str, Path]]:
    """``(class index, patient, scan)`` for every scan under ``root/<class>/<patient>/``, class by class."""
    folded = {name.lower(): index for index, name in enumerate(class_names)}
    class_dirs: dict[int, Path] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            if child.name.lower() not in folded:
                raise ValueError(f"'{child}' is not a class folder: allowed class names are {', '.join(class_names)} "
                                 f"(set them with class_names / --classes).")
            class_dirs[folded[child.name.lower()]] = child
    scans = []
    for label in range(len(class_names)):
        if label not in class_dirs:
            raise ValueError(f"dataset folder '{root}' has no folder for class '{class_names[label]}'.")
        found = 0
        patients = sorted((p for p in class_dirs[label].iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
        for patient in patients:
            patient_scans = find_scans(patient)
            if not patient_scans:
                logger.warning("patient folder '%s' holds no scan; skipped.", patient)
            scans += [(label, patient.name, scan) for scan in patient_scans]
            found += len(patient_scans)
        if not found:
            raise ValueError(f"class folder '{class_dirs[label]}' holds no scan (<patient>/<scan folder of slices> "
                             f"or <patient>/<volume file>).")
    return scans


def _raw_section(path: Path, section: str, fold: int | None) -> tuple[str, list]:
    """The raw entries to read and the section they come from (``"training"`` for a fold split)."""
    if path.suffix.lower() == ".csv":
        return section, _read_csv(path)
    content = read_json(path)
    training = content.get("training")
    with_folds = isinstance(training, list) and any(isinstance(e, dict) and "fold" in e for e in training)
    source = "training" if fold is not None and section in FOLD_SECTIONS and with_folds else section
    if source not in content:
        sections = sorted(k for k, v in content.items() if isinstance(v, list))
        raise ValueError(f"datalist '{path}' has no section '{source}'; sections present: {sections}.")
    raw = content[source]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"datalist '{path}': section '{source}' must be a non-empty list of entries, got {raw!r}.")
    return source, raw


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"datalist file '{path}' does not exist.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise ValueError(f"datalist '{path}': a CSV datalist needs a header row with an 'image' column (and "
                             f"'label', 'fold', 'patient'), got {reader.fieldnames}.")
        rows = [{k: v.strip() for k, v in row.items() if k is not None and v is not None and v.strip()}
                for row in reader]
    if not rows:
        raise ValueError(f"datalist '{path}' has a header but no rows.")
    return rows


def _entry(item: Any, index: int, section: str, class_names: Sequence[str], base: Path, path: Path) -> dict:
    where = f"datalist '{path}': entry {index} of section '{section}'"
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a dict (or a path), got {type(item).__name__}: {item!r}.")
    if not isinstance(item.get("image"), str) or not item["image"]:
        raise ValueError(f"{where} has no 'image' path (it has {sorted(item)}).")
    entry = dict(item, image=absolute_path(item["image"], base))
    if entry.get("label") in (None, ""):
        entry.pop("label", None)
    else:
        entry["label"] = class_index(entry["label"], class_names, f"{where} (image '{entry['image']}')")
    if "fold" in entry:
        fold = entry["fold"]
        if isinstance(fold, str) and fold.lstrip("-").isdigit():
            fold = int(fold)
        if isinstance(fold, bool) or not isinstance(fold, int):
            raise ValueError(f"{where}: 'fold' must be an int, got {entry['fold']!r}.")
        entry["fold"] = fold
    if "patient" in entry:
        entry["patient"] = str(entry["patient"])
    return entry


def _check_patients_in_one_fold(entries: list[dict], section: str, path: Path) -> None:
    """A patient's scans must share one fold, or validation would see a patient that training saw."""
    seen: dict[str, tuple[int, int]] = {}
    for index, entry in enumerate(entries):
        if "patient" not in entry or "fold" not in entry:
            continue
        first = seen.setdefault(entry["patient"], (index, entry["fold"]))
        if first[1] != entry["fold"]:
            raise ValueError(f"datalist '{path}': patient '{entry['patient']}' is in fold {first[1]} (entry "
                             f"{first[0]}) and in fold {entry['fold']} (entry {index}) of section '{section}'; all "
                             "scans of a patient must be in one fold.")
