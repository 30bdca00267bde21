"""Decathlon-style JSON datalists: read them with folds and label-efficiency subsets, write them from folders.

A datalist is a JSON object whose sections (``"training"``, ``"validation"``, ``"testing"``, ...) are lists of
entries such as ``{"image": "imagesTr/case_0000.nii.gz", "label": "labelsTr/case_0000.nii.gz", "fold": 0}``.
Paths are relative to the JSON's folder unless absolute. Every problem found while reading one raises an error that
names the datalist file, the section, the entry index and the key involved.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FOLD_SECTIONS",
    "PATH_KEYS",
    "absolute_path",
    "inference_datalist",
    "load_datalist",
    "read_json",
    "resolve_base_dir",
    "split_fold",
    "training_entries",
    "validate_num_labelled",
    "write_datalist_from_folder",
    "write_decathlon_json",
]

logger = logging.getLogger("custom_components")

#: Entry keys whose values are file paths (a string or a list of strings, e.g. BraTS' four MRI channels).
PATH_KEYS = ("image", "label")
FOLD_SECTIONS = ("training", "validation")


def load_datalist(
    datalist: str | os.PathLike,
    section: str = "training",
    base_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    num_labelled: int | None = None,
    keys: Sequence[str] | str = ("image",),
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read one section (or one cross-validation split) of a decathlon-style JSON datalist.

    Fold semantics: when ``fold`` is given, ``section`` is ``"training"`` or ``"validation"`` and the entries of the
    ``"training"`` section carry a ``"fold"`` field, the split is taken from that field: ``"training"`` returns the
    entries with ``fold != fold`` and ``"validation"`` those with ``fold == fold``; an explicit ``"validation"``
    section, if the file also has one, is ignored with a warning. When the training entries carry no ``"fold"``
    field (e.g. a file with explicit ``"training"``/``"validation"`` sections), or the section is another one
    (``"testing"``), ``fold`` has no effect and the named section is returned as is, as it is when ``fold`` is None.
    Bare strings in a section (the MSD ``"testing"`` style) are read as ``{"image": path}``.

    Args:
        datalist: path of the JSON file.
        section: the section to return, e.g. ``"training"``, ``"validation"``, ``"testing"``.
        base_dir: folder that relative paths are relative to; defaults to the JSON file's folder.
        fold: cross-validation fold held out for validation, see above. None reads the section as is.
        num_labelled: keep only the first ``num_labelled`` entries of the training split, in file order (the
            label-efficiency subsets, e.g. 3/6/12 of BTCV's 24 training cases). Only valid with
            ``section="training"``; None keeps all.
        keys: keys every entry must have, e.g. ``("image", "label")`` for supervised training.
        check_files: check that every path of the returned entries exists.

    Returns:
        a list of new dicts, one per entry in file order, where the values of ``keys`` and of the ``PATH_KEYS``
        present are absolute paths (lists of paths stay lists); other fields (``"fold"``, ...) are kept.

    Raises:
        FileNotFoundError: the datalist, ``base_dir`` or a listed path does not exist.
        ValueError: the file is not valid JSON, a section is missing or empty, an entry is not a dict or lacks
            a key, an image path appears twice, the requested fold has no cases, or ``num_labelled`` is invalid.
    """
    path = Path(datalist).expanduser().absolute()
    keys = _validate_keys(keys)
    base = resolve_base_dir(path, base_dir)
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
        raise ValueError(f"fold must be an int or None, got {fold!r}.")
    if num_labelled is not None:
        validate_num_labelled(num_labelled, section)
    content = read_json(path)

    training = _entries_with_folds(content, section, fold, keys, base, path)
    if training is None:
        source, entries = section, _read_entries(content, section, keys, base, path)
        selected = list(range(len(entries)))
    else:
        if "validation" in content:
            logger.warning(
                f"datalist '{path}': fold {fold} is taken from the 'fold' field of the training entries; "
                "its explicit 'validation' section is ignored."
            )
        source, entries = "training", training
        selected = split_fold(entries, section, fold, path)
    if num_labelled is not None:
        if num_labelled > len(selected):
            split = "the training section" if training is None else f"the training split of fold {fold}"
            raise ValueError(
                f"datalist '{path}': num_labelled={num_labelled} but {split} has only {len(selected)} entries."
            )
        selected = selected[:num_labelled]
    if check_files:
        for index in selected:
            _check_paths_exist(entries[index], index, source, keys, path)
    return [entries[index] for index in selected]


def inference_datalist(
    datalist: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "testing",
    pattern: str = "*.nii.gz",
) -> list[dict[str, str]]:
    """The images to run inference on: a datalist section, or every matching file of a folder.

    Args:
        datalist: a decathlon-style JSON datalist; when given, ``dataset_dir`` is not used and the entries of
            ``section`` are read with :func:`load_datalist` (``keys=("image",)``, files checked).
        dataset_dir: folder whose files matching ``pattern`` (sorted by name) are the images, when ``datalist``
            is None.
        section: datalist section to read, e.g. ``"testing"`` or ``"validation"``.
        pattern: glob pattern of the image files in ``dataset_dir``.

    Returns:
        entries ``{"image": absolute path, ...}`` (datalist entries keep their other fields).

    Raises:
        ValueError: both ``datalist`` and ``dataset_dir`` are None, or ``dataset_dir`` has no file matching
            ``pattern``; and the errors of :func:`load_datalist`.
        FileNotFoundError: ``dataset_dir`` does not exist.
    """
    if datalist is not None:
        return load_datalist(datalist, section, keys=("image",))
    if dataset_dir is None:
        raise ValueError("inference_datalist needs a datalist file or a dataset_dir of images, got neither.")
    return [{"image": str(f)} for f in _list_files(dataset_dir, pattern, "dataset")]


def write_datalist_from_folder(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    *,
    out_file: str | os.PathLike,
    num_folds: int = 5,
    test_images_dir: str | os.PathLike | None = None,
    pattern: str = "*.nii.gz",
    label_pattern: str | None = None,
) -> str:
    """Write a decathlon-style datalist for a folder of images (and a folder of labels with the same file names, or
    names that differ in a suffix such as MM-WHS's ``ct_train_1001_image.nii.gz`` / ``ct_train_1001_label.nii.gz``).

    Images are sorted by file name and assigned to folds round-robin (``fold = index % num_folds``). Paths in the
    JSON are relative to ``out_file``'s folder.

    Args:
        images_dir: folder of training images.
        labels_dir: folder of labels, one per image with the image's file name; None writes image-only entries.
        out_file: path of the JSON file to write (its folder is created).
        num_folds: number of cross-validation folds, 1..number of images.
        test_images_dir: optional folder of unlabelled images for the ``"testing"`` section.
        pattern: glob pattern selecting the image (and test image) files.
        label_pattern: glob pattern selecting the label files; None: ``pattern``, and images and labels are paired
            by file name. Otherwise both patterns must be ``*<suffix>`` and files are paired by the name without
            the suffix (the labels may then sit in the images' folder).

    Returns:
        the path of the written JSON file.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no files match ``pattern``, an image has no label or a label has no image, ``num_folds``
            is out of range, or differing patterns are not both ``*<suffix>``.
    """
    images = _list_files(images_dir, pattern, "images")
    labels = None
    if labels_dir is not None:
        label_pattern = pattern if label_pattern is None else label_pattern
        labels = _list_files(labels_dir, label_pattern, "labels")
        if label_pattern == pattern:
            _check_pairing(images, labels, images_dir, labels_dir)
        else:
            labels = _pair_by_suffix(images, labels, pattern, label_pattern, images_dir, labels_dir)
    out_path = Path(out_file).expanduser().absolute()
    root = out_path.parent

    def rel(files: list[Path]) -> list[str]:
        return [os.path.relpath(f, root) for f in files]

    training = training_entries(rel(images), None if labels is None else rel(labels), num_folds)
    testing = None
    if test_images_dir is not None:
        testing = [{"image": p} for p in rel(_list_files(test_images_dir, pattern, "test images"))]
    description = f"images from {Path(images_dir).absolute()}" + (
        f", labels from {Path(labels_dir).absolute()}" if labels_dir is not None else ""
    )
    return write_decathlon_json(
        out_path, name=Path(images_dir).absolute().parent.name, description=description, training=training,
        testing=testing,
    )


def training_entries(images: Sequence[str], labels: Sequence[str] | None, num_folds: int) -> list[dict[str, Any]]:
    """Build training entries with folds assigned round-robin: entry ``i`` gets ``fold = i % num_folds``.

    Args:
        images: image paths, in the order that decides the folds.
        labels: label paths aligned with ``images``, or None for image-only entries.
        num_folds: number of folds, 1..len(images).
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or not 1 <= num_folds <= len(images):
        raise ValueError(f"num_folds must be an int in 1..{len(images)} (the number of images), got {num_folds!r}.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels.")
    entries = []
    for index, image in enumerate(images):
        entry: dict[str, Any] = {"image": image}
        if labels is not None:
            entry["label"] = labels[index]
        entry["fold"] = index % num_folds
        entries.append(entry)
    return entries


def write_decathlon_json(
    out_file: str | os.PathLike,
    *,
    name: str,
    description: str,
    training: list[dict[str, Any]],
    testing: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """Write a MONAI decathlon-style datalist JSON (creating its folder) and return its path.

    The file holds ``name``, ``description``, ``labels`` (when given), ``numTraining``, ``training`` and, when
    given, ``numTest`` and ``testing``.
    """
    content: dict[str, Any] = {"name": name, "description": description}
    if labels is not None:
        content["labels"] = labels
    content["numTraining"] = len(training)
    content["training"] = training
    if testing is not None:
        content["numTest"] = len(testing)
        content["testing"] = testing
    out_path = Path(out_file)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(content, indent=2) + "\n")
    return str(out_path)


def _validate_keys(keys: Sequence[str] | str) -> tuple[str, ...]:
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"keys must be a non-empty sequence of non-empty strings, got {keys!r}.")
    return keys


def resolve_base_dir(path: Path, base_dir: str | os.PathLike | None) -> Path:
    """The folder that relative paths of the datalist ``path`` are read from: ``base_dir``, else the datalist's."""
    if base_dir is None:
        return path.parent
    base = Path(base_dir).expanduser().absolute()
    if not base.is_dir():
        raise FileNotFoundError(f"base_dir '{base}' for datalist '{path}' is not an existing folder.")
    return base


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of the datalist ``path``; the errors name the file (and the place of a syntax error)."""
    if not path.is_file():
        raise FileNotFoundError(f"datalist file '{path}' does not exist.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"datalist '{path}' is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} (char {err.pos})."
        ) from err
    if not isinstance(content, dict):
        raise ValueError(f"datalist '{path}' must hold a JSON object of sections, got {type(content).__name__}.")
    return content


def _read_entries(content: dict[str, Any], section: str, keys: tuple[str, ...], base: Path, path: Path) -> list[dict]:
    """Validate one section and return its entries with resolved paths (no file-system checks)."""
    if section not in content:
        sections = sorted(k for k, v in content.items() if isinstance(v, list))
        raise ValueError(f"datalist '{path}' has no section '{section}'; sections present: {sections}.")
    raw = content[section]
    if not isinstance(raw, list):
        raise ValueError(f"datalist '{path}': section '{section}' must be a list, got {type(raw).__name__}.")
    if not raw:
        raise ValueError(f"datalist '{path}': section '{section}' is empty.")
    entries = [_resolve_entry(item, index, section, keys, base, path) for index, item in enumerate(raw)]
    _check_duplicates(entries, section, keys, path)
    return entries


def _resolve_entry(item: Any, index: int, section: str, keys: tuple[str, ...], base: Path, path: Path) -> dict:
    where = f"datalist '{path}': entry {index} of section '{section}'"
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a dict (or an image path), got {type(item).__name__}: {item!r}.")
    for key in keys:
        if key not in item:
            raise ValueError(f"{where} has no key '{key}' (it has {sorted(item)}).")
    entry = dict(item)
    for key in _path_keys(entry, keys):
        value = entry[key]
        if isinstance(value, str):
            entry[key] = absolute_path(value, base)
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            entry[key] = [absolute_path(v, base) for v in value]
        else:
            raise ValueError(f"{where}: '{key}' must be a path or a non-empty list of paths, got {value!r}.")
    return entry


def absolute_path(value: str, base: Path) -> str:
    """``value`` (``~`` expanded) joined to ``base`` when relative, normalised."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _check_duplicates(entries: list[dict], section: str, keys: tuple[str, ...], path: Path) -> None:
    for key in keys:
        first_seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            value = str(entry[key])
            if value in first_seen:
                raise ValueError(
                    f"datalist '{path}': duplicate entries in section '{section}': entries {first_seen[value]} and "
                    f"{index} have the same '{key}' {value}."
                )
            first_seen[value] = index


def _entries_with_folds(
    content: dict[str, Any], section: str, fold: int | None, keys: tuple[str, ...], base: Path, path: Path
) -> list[dict] | None:
    """The resolved training entries when ``fold`` selects the split from their "fold" fields, else None."""
    if fold is None or section not in FOLD_SECTIONS or "training" not in content:
        return None
    entries = _read_entries(content, "training", keys, base, path)
    with_fold = ["fold" in entry for entry in entries]
    if not any(with_fold):
        return None
    if not all(with_fold):
        raise ValueError(
            f"datalist '{path}': entry {with_fold.index(False)} of section 'training' has no 'fold' while other "
            "entries have one."
        )
    return entries


def split_fold(entries: list[dict], section: str, fold: int, path: Path) -> list[int]:
    """Indices of ``entries`` in ``fold`` for the ``validation`` section, of all the others for ``training``."""
    in_fold = [i for i, entry in enumerate(entries) if entry["fold"] == fold]
    if not in_fold:
        folds = sorted({entry["fold"] for entry in entries}, key=str)
        raise ValueError(f"datalist '{path}': fold {fold} has no cases; folds present: {folds}.")
    if section == "validation":
        return in_fold
    held_out = set(in_fold)
    rest = [i for i in range(len(entries)) if i not in held_out]
    if not rest:
        raise ValueError(f"datalist '{path}': holding out fold {fold} leaves no training cases (it is the only fold).")
    return rest


def validate_num_labelled(num_labelled: int, section: str) -> None:
    """Check that ``num_labelled`` is a positive int asked of the ``training`` section."""
    if isinstance(num_labelled, bool) or not isinstance(num_labelled, int) or num_labelled < 1:
        raise ValueError(f"num_labelled must be a positive int or None, got {num_labelled!r}.")
    if section != "training":
        raise ValueError(f"num_labelled only applies to section 'training', got section '{section}'.")


def _path_keys(entry: dict, keys: tuple[str, ...]) -> list[str]:
    """The keys of ``entry`` that hold paths: the required ``keys`` plus the ``PATH_KEYS`` present."""
    return sorted(set(keys) | (set(PATH_KEYS) & set(entry)))


def _check_paths_exist(entry: dict, index: int, section: str, keys: tuple[str, ...], path: Path) -> None:
    for key in _path_keys(entry, keys):
        for file in entry[key] if isinstance(entry[key], list) else [entry[key]]:
            if not os.path.exists(file):
                raise FileNotFoundError(
                    f"datalist '{path}': entry {index} of section '{section}': '{key}' file '{file}' does not "
                    f"exist (entry: {entry})."
                )


def _list_files(folder: str | os.PathLike, pattern: str, what: str) -> list[Path]:
    folder_path = Path(folder).expanduser().absolute()
    if not folder_path.is_dir():
        raise FileNotFoundError(f"{what} folder '{folder_path}' does not exist.")
    # hidden files are left out: the MSD archives hold a macOS "._<name>.nii.gz" copy beside every image
    files = sorted(f for f in folder_path.glob(pattern) if f.is_file() and not f.name.startswith("."))
    if not files:
        raise ValueError(f"{what} folder '{folder_path}' has no files matching '{pattern}'.")
    return files


def _pair_by_suffix(images: list[Path], labels: list[Path], pattern: str, label_pattern: str, images_dir,
                    labels_dir) -> list[Path]:
    """The labels in the order of ``images``, pairing ``<case><image suffix>`` with ``<case><label suffix>``."""
    suffixes = []
    for glob in (pattern, label_pattern):
        if not glob.startswith("*") or any(c in glob[1:] for c in "*?["):
            raise ValueError(f"images and labels with different patterns are paired by the name before a fixed suffix, "
                             f"so both patterns must be '*<suffix>', got '{pattern}' and '{label_pattern}'.")
        suffixes.append(glob[1:])
    image_cases = {f.name[: len(f.name) - len(suffixes[0])]: f for f in images}
    label_cases = {f.name[: len(f.name) - len(suffixes[1])]: f for f in labels}
    _check_pairing(image_cases, label_cases, images_dir, labels_dir)
    return [label_cases[case] for case in image_cases]


def _check_pairing(images, labels, images_dir, labels_dir) -> None:
    """Every image has a label and every label an image; ``images`` and ``labels`` are lists of files (paired by
    name) or ``{case: file}`` mappings (paired by case)."""
    image_names = set(images) if isinstance(images, dict) else {f.name for f in images}
    label_names = set(labels) if isinstance(labels, dict) else {f.name for f in labels}
    problems = []
    if image_names - label_names:
        problems.append(f"images without a label in '{labels_dir}': {_first(image_names - label_names)}")
    if label_names - image_names:
        problems.append(f"labels without an image in '{images_dir}': {_first(label_names - image_names)}")
    if problems:
        raise ValueError("images and labels are paired by name; " + "; ".join(problems) + ".")


def _first(names: set[str], limit: int = 10) -> str:
    ordered = sorted(names)
    more = f" (and {len(ordered) - limit} more)" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more
