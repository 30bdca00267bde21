"""Which bundle folders the app serves, what kind of task each is, and the labels its label maps hold."""

from __future__ import annotations

import os

from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType

from custom_components.data import LABEL_CLASSES
from custom_components.transforms import RemapLabeld

__all__ = ["KINDS", "bundle_kind", "class_labels", "segmentation_labels", "served_bundles", "weights_path"]

#: the task of a bundle, from the end of its folder name (as the model zoo names bundles).
KINDS = {"_segmentation": InferType.SEGMENTATION, "_classification": InferType.CLASSIFICATION}
#: files a bundle needs to be served (relative to the bundle folder).
REQUIRED_FILES = (os.path.join("configs", "inference.json"), os.path.join("configs", "metadata.json"))
#: the trained weights the infer task loads and the bundle's training saves (the best validation checkpoint).
WEIGHTS = os.path.join("models", "model.pt")


def bundle_kind(name: str) -> str | None:
    """``InferType.SEGMENTATION`` / ``InferType.CLASSIFICATION`` for a bundle folder name, None for other bundles
    (e.g. the pre-training bundle, which has nothing to show a radiologist)."""
    return next((kind for suffix, kind in KINDS.items() if name.endswith(suffix)), None)


def weights_path(bundle_path: str) -> str:
    """``<bundle>/models/model.pt``: the weights served, and the file training through MONAI Label replaces."""
    return os.path.join(bundle_path, WEIGHTS)


def served_bundles(bundles_dir: str, names: str | None = None) -> dict[str, str]:
    """The bundles to serve: ``{folder name: absolute path}``.

    Args:
        bundles_dir: the folder that holds the bundle folders (the repository's ``bundles/``).
        names: comma-separated bundle folder names (``--conf models``); None or empty: every segmentation and
            classification bundle in ``bundles_dir``.

    Raises:
        ValueError: ``bundles_dir`` is not a folder or holds no bundle to serve; a name is not a folder of it, is
            neither a segmentation nor a classification bundle, or lacks a file it needs (the path is named).
    """
    root = os.path.abspath(os.path.expanduser(bundles_dir))
    if not os.path.isdir(root):
        raise ValueError(f"bundles_dir '{root}' is not a folder: give --conf bundles_dir the folder that holds the "
                         f"bundle folders (the repository's bundles/).")
    available = sorted(n for n in os.listdir(root) if bundle_kind(n) and os.path.isdir(os.path.join(root, n)))
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else available
    if not wanted:
        raise ValueError(f"bundles_dir '{root}' holds no segmentation or classification bundle "
                         f"(folders named *_segmentation or *_classification).")
    bundles = {}
    for name in wanted:
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            raise ValueError(f"bundle '{name}' (--conf models) is not a folder of {root}; available: "
                             f"{', '.join(available) or 'none'}.")
        if bundle_kind(name) is None:
            raise ValueError(f"bundle '{name}' cannot be served: only segmentation and classification bundles "
                             f"(*_segmentation, *_classification) have an inference for MONAI Label.")
        for required in REQUIRED_FILES:
            if not os.path.isfile(os.path.join(path, required)):
                raise ValueError(f"bundle '{name}' cannot be served: {os.path.join(path, required)} does not exist.")
        bundles[name] = path
    return bundles


def segmentation_labels(config: ConfigParser) -> dict[str, int]:
    """``{class name: value}`` of the foreground classes in the label map a segmentation bundle's inference writes.

    The values are the class indices, or, with ``write_original_labels``, the dataset's own values (the first raw
    value ``label_mapping`` lists for each class). The classes are ``class_names``, except for bundles whose network
    predicts overlapping regions (``regions``, BraTS): their label map holds the label classes the regions are
    made of (:data:`custom_components.data.LABEL_CLASSES`).
    """
    if config.get("regions") is not None:
        names = list(LABEL_CLASSES[1:])
    else:
        names = list(config.get_parsed_content("class_names"))
    values = None
    if config.get_parsed_content("write_original_labels"):
        values = RemapLabeld("pred", config.get_parsed_content("label_mapping"), inverse=True).table
    return {name: values[index] if values else index for index, name in enumerate(names, start=1)}


def class_labels(config: ConfigParser) -> dict[str, int]:
    """``{class name: class index}`` of a classification bundle (``class_names``, in output order)."""
    return {name: index for index, name in enumerate(config.get_parsed_content("class_names"))}
