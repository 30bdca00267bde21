"""Per-volume embeddings and token feature maps from an evaluator that runs ``GLMAEFeatureEncoder`` over volumes."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events

from custom_components.files import atomic_write
from custom_components.transforms.checks import UNKNOWN_FILE
from custom_components.transforms.io import case_name

__all__ = ["FeatureWriter", "feature_affine", "read_embeddings"]

logger = logging.getLogger("custom_components")

EMBEDDINGS, CLS_EMBEDDINGS, INDEX = "embeddings.npy", "cls_embeddings.npy", "embeddings.csv"
INDEX_COLUMNS = ("row", "image", "case", "grid", "feature_map")


def feature_affine(image_affine: np.ndarray, patch_size: int) -> np.ndarray:
    """The affine of a map with one vector per ``patch_size``³ patch of an image with ``image_affine``: voxel
    ``(i, j, k)`` of the map is the centre of the image voxels ``[p·i, p·i + p)`` along each axis."""
    scale = np.diag([float(patch_size)] * 3 + [1.0])
    scale[:3, 3] = (patch_size - 1) / 2.0
    return np.asarray(image_affine, dtype=np.float64) @ scale


class FeatureWriter:
    """Collect what ``GLMAEFeatureEncoder`` gives for each volume and write it under ``output_dir``.

    - ``embeddings.npy``: ``[N, hidden_size]`` float32, the mean of each volume's patch tokens;
    - ``cls_embeddings.npy``: ``[N, hidden_size]``, the CLS token averaged over the volume's windows (when the
      network's output carries it);
    - ``embeddings.csv``: one row per volume, in the order of the arrays: ``row``, ``image`` (the source file),
      ``case``, ``grid`` (the token grid, ``HxWxD``) and ``feature_map`` (its file, or empty);
    - with ``save_maps``, ``<case>_features.nii.gz``: the patch tokens ``[h, w, d, hidden_size]`` (float32) in
      the preprocessed image's space at ``1 / patch_size`` of its resolution (:func:`feature_affine`).

    The arrays and the index are rewritten atomically when the run completes.

    Args:
        output_dir: where the files go (created).
        hidden_size: the encoder width: channels ``[0, hidden_size)`` of the prediction are the patch tokens,
            ``[hidden_size, 2 * hidden_size)`` (if present) the CLS token.
        patch_size: the encoder's patch edge, for the feature maps' affine.
        save_maps: also write each volume's token map as NIfTI.
        pred_key, image_key: keys of the decollated evaluator output.
    """

    def __init__(self, output_dir: str | os.PathLike, hidden_size: int, patch_size: int, save_maps: bool = False,
                 pred_key: str = "pred", image_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.save_maps = save_maps
        self.pred_key, self.image_key = pred_key, image_key
        self.rows: list[dict[str, Any]] = []
        self.pooled: list[np.ndarray] = []
        self.cls: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self.pooled, self.cls = [], [], []

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, Sequence) else [output]:
            self.add(item[self.pred_key], item.get(self.image_key))

    def add(self, pred: torch.Tensor, image: Any = None) -> None:
        """Add one volume: ``pred`` ``[C, h, w, d]`` and the preprocessed ``image`` (a MetaTensor) it came from."""
        channels = int(pred.shape[0])
        if channels not in (self.hidden_size, 2 * self.hidden_size):
            raise ValueError(f"the network's output has {channels} channels; FeatureWriter expects hidden_size "
                             f"({self.hidden_size}) or twice that with the CLS token: is hidden_size the encoder's?")
        features = pred.detach().float().cpu().numpy()
        meta = getattr(image, "meta", {}) or {}
        source = str(meta.get("filename_or_obj") or UNKNOWN_FILE)
        case = case_name(source) if source != UNKNOWN_FILE else f"volume_{len(self.rows):04d}"
        tokens = features[:self.hidden_size]
        self.pooled.append(tokens.reshape(self.hidden_size, -1).mean(axis=1))
        if channels == 2 * self.hidden_size:
            self.cls.append(features[self.hidden_size:].reshape(self.hidden_size, -1).mean(axis=1))
        feature_map = ""
        if self.save_maps:
            affine = getattr(image, "affine", None)
            affine = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
            feature_map = f"{case}_features.nii.gz"
            mapped = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(tokens, 0, -1)),
                                     feature_affine(affine, self.patch_size))
            mapped.header.set_qform(mapped.affine, code=1)
            atomic_write(self.output_dir / feature_map, lambda f: f.write(gzip.compress(mapped.to_bytes(), 6)))
        self.rows.append({"row": len(self.rows), "image": source, "case": case,
                          "grid": "x".join(str(s) for s in tokens.shape[1:]), "feature_map": feature_map})

    def write(self, engine: Engine | None = None) -> None:
        if not self.rows:
            logger.warning(f"no volume was encoded; nothing written to {self.output_dir}")
            return
        _save_array(self.output_dir / EMBEDDINGS, np.stack(self.pooled).astype(np.float32))
        if self.cls:
            _save_array(self.output_dir / CLS_EMBEDDINGS, np.stack(self.cls).astype(np.float32))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.output_dir / INDEX, lambda f: f.write(text.getvalue().encode()))
        what = f"{EMBEDDINGS}{f' and {CLS_EMBEDDINGS}' if self.cls else ''}"
        logger.info(f"wrote the embeddings of {len(self.rows)} volume(s) ({what}, [{len(self.rows)}, "
                    f"{self.hidden_size}]) and {INDEX} to {self.output_dir}"
                    f"{'; token maps as <case>_features.nii.gz' if self.save_maps else ''}")


def read_embeddings(output_dir: str | os.PathLike, cls: bool = False) -> tuple[np.ndarray, list[dict[str, str]]]:
    """The embeddings ``[N, D]`` a :class:`FeatureWriter` wrote to ``output_dir`` (the CLS ones with ``cls``) and
    its index rows, in the same order.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: the index and the array disagree on the number of volumes.
    """
    folder = Path(output_dir)
    array_file, index_file = folder / (CLS_EMBEDDINGS if cls else EMBEDDINGS), folder / INDEX
    for path in (array_file, index_file):
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' does not exist: run the pre-training bundle's configs/inference.json "
                                    f"with output_dir {folder} first.")
    embeddings = np.load(array_file, allow_pickle=False)
    with open(index_file, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(embeddings):
        raise ValueError(f"'{index_file}' lists {len(rows)} volumes but '{array_file}' holds {len(embeddings)} "
                         f"embeddings: the two files come from different runs.")
    return embeddings, rows


def _save_array(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
