"""Inference of a GL-MAE bundle in MONAI Label: segmentation label maps and classification probabilities."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from lib.bundles import bundle_kind, class_labels, segmentation_labels

__all__ = ["GLMAEBundleInferTask"]


class GLMAEBundleInferTask(BundleInferTask):
    """MONAI Label's ``BundleInferTask`` for the bundles of this collection.

    - Segmentation bundles return a label map in the input's grid and affine. The label values are the class
      indices, or the dataset's own values when the bundle has a ``label_mapping`` (MM-WHS's 205, 420, ..., BraTS's
      layout values), so labels a user corrects and saves train the same bundle unchanged; ``labels`` names them.
    - Classification bundles return the class probabilities with the class names (MONAI Label's classification
      type, without the ``Restored`` post-transform, which only fits label maps).
    - The bundle writes no overlay PNGs into its folder (``save_overlays`` off).
    - Request fields named after the image (MONAI Label's ``image_path``, a string) are kept out of the
      pre-transforms: MONAI 1.6's ``Spacingd`` takes every ``image_*`` entry for a metadata dict of ``image`` and
      fails on the string (``'str' object has no attribute 'update'``). They are back for the writer afterwards.

    Args:
        path: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        conf: the app's ``--conf`` options (``preload``).
        kwargs: the other arguments of ``BundleInferTask``.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        kind = bundle_kind(os.path.basename(os.path.normpath(path)))
        classification = kind == InferType.CLASSIFICATION
        super().__init__(path, conf, type=kind, add_post_restore=not classification, **kwargs)
        self.labels = class_labels(self.bundle_config) if classification else segmentation_labels(self.bundle_config)

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        parser = super()._load_bundle_config(path, config)
        if "save_overlays" in parser.config:
            parser["save_overlays"] = False
        if parser.get("label_mapping") is not None:
            parser["write_original_labels"] = True
        return parser

    def run_pre_transforms(self, data: dict[str, Any], transforms) -> dict[str, Any]:
        prefix = f"{self.key_image}_"
        fields = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith(prefix)
                  and not isinstance(v, Mapping)}
        out = super().run_pre_transforms({k: v for k, v in data.items() if k not in fields}, transforms)
        return {**fields, **out}
