"""Classification results as files: the confusion matrix (CSV, PNG) with per-class sensitivity and specificity, and
a predictions CSV with a header, class probabilities and the predicted class name.

MONAI's ``ConfusionMatrixMetric`` counts one-vs-rest TP/FP/TN/FN per class but gives no K x K matrix, and its
``CSVSaver`` writes rows without a header; these two fill those gaps.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import CSVSaver
from monai.handlers import from_engine
from PIL import Image, ImageDraw

from custom_components.files import atomic_write

__all__ = ["ConfusionMatrixSaver", "ProbabilityCSVSaver", "per_class_metrics"]

logger = logging.getLogger("custom_components")

MATRIX_CSV, MATRIX_PNG, PER_CLASS_CSV = "confusion_matrix.csv", "confusion_matrix.png", "per_class_metrics.csv"
CELL, MARGIN = 96, 110  # PNG: cell edge and the room for the class names, in pixels


def per_class_metrics(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    """Accuracy and one-vs-rest sensitivity / specificity from a confusion matrix.

    Args:
        matrix: ``[K, K]`` counts, rows the true class, columns the predicted class.

    Returns:
        ``{"accuracy": float, "sensitivity": [K], "specificity": [K], "cases": [K]}``; a ratio with nothing to count
        (no case of the class, or no case of the others) is NaN.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    total, hits = matrix.sum(), np.diag(matrix)
    cases, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    negatives = total - cases
    true_negatives = negatives - (predicted - hits)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": float(hits.sum() / total) if total else math.nan,
            "sensitivity": np.where(cases > 0, hits / cases, np.nan),
            "specificity": np.where(negatives > 0, true_negatives / negatives, np.nan),
            "cases": cases.astype(np.int64),
        }


class ConfusionMatrixSaver:
    """Count an evaluator's cases into a K x K confusion matrix and write, at the end of each run, to ``output_dir``:

    - ``confusion_matrix.csv``: a header ``true \\ predicted,<class names>`` and one row of counts per true class;
    - ``confusion_matrix.png``: the same counts in a grid, each row shaded by its share of the true class's cases;
    - ``per_class_metrics.csv``: ``class,cases,sensitivity,specificity`` (see :func:`per_class_metrics`) and a last
      row ``all`` with the case count and the accuracy as sensitivity.

    Under ``torch.distributed`` the counts of all ranks are summed (every rank must run it; rank 0 writes).

    Args:
        output_dir: folder of the files (created).
        class_names: the K class names in class-index order.
        output_transform: maps ``engine.state.output`` to ``(predictions, labels)``, per case either probabilities /
            one-hot vectors ``[K]`` (the argmax is taken) or class indices.

    Raises:
        ValueError: fewer than two class names; a class index outside ``0..K-1`` during the run.
    """

    #: the counts are summed across ranks, so every rank runs it (read by ``distributed.handlers_for_rank``).
    every_rank = True

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str],
                 output_transform: Callable = from_engine(["pred", "label"])) -> None:
        if len(class_names) < 2:
            raise ValueError(f"class_names must name at least two classes, got {list(class_names)}.")
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.output_transform = output_transform
        self.matrix = torch.zeros(len(class_names), len(class_names), dtype=torch.int64)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.matrix.zero_()

    def update(self, engine: Engine) -> None:
        predictions, labels = self.output_transform(engine.state.output)
        for prediction, label in zip(predictions, labels, strict=True):
            true, predicted = _class_of(label), _class_of(prediction)
            if not (0 <= true < len(self.class_names) and 0 <= predicted < len(self.class_names)):
                raise ValueError(f"ConfusionMatrixSaver: class index {true} / {predicted} outside "
                                 f"0..{len(self.class_names) - 1}.")
            self.matrix[true, predicted] += 1

    def write(self, engine: Engine | None = None) -> None:
        matrix = idist.all_reduce(self.matrix.clone()).cpu().numpy()
        if idist.get_rank() != 0:
            return
        metrics = per_class_metrics(matrix)
        header = ["true \\ predicted", *self.class_names]
        rows = [[name, *counts] for name, counts in zip(self.class_names, matrix.tolist())]
        _write_csv(self.output_dir / MATRIX_CSV, header, rows)
        per_class = [[name, int(n), _number(s), _number(p)] for name, n, s, p in
                     zip(self.class_names, metrics["cases"], metrics["sensitivity"], metrics["specificity"])]
        per_class.append(["all", int(matrix.sum()), _number(metrics["accuracy"]), ""])
        _write_csv(self.output_dir / PER_CLASS_CSV, ["class", "cases", "sensitivity", "specificity"], per_class)
        buffer = io.BytesIO()
        draw_confusion_matrix(matrix, self.class_names).save(buffer, format="PNG")
        atomic_write(self.output_dir / MATRIX_PNG, lambda f: f.write(buffer.getvalue()))
        logger.info("confusion matrix (rows true %s, columns predicted):\n%s\naccuracy %.4f; written to %s",
                    self.class_names, matrix, metrics["accuracy"], self.output_dir)


def draw_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """A grid of the counts, true classes down, predicted classes across; each cell shaded blue by its share of its
    row (the true class's cases), so the diagonal is the per-class sensitivity."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    size = MARGIN + k * CELL + 20
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN + k * CELL / 2, 12), "predicted", fill="black", anchor="mt")
    draw.text((8, MARGIN + k * CELL / 2), "true", fill="black", anchor="lm")
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    for i, name in enumerate(class_names):
        draw.text((MARGIN + i * CELL + CELL / 2, MARGIN - 10), str(name), fill="black", anchor="mb")
        draw.text((MARGIN - 10, MARGIN + i * CELL + CELL / 2), str(name), fill="black", anchor="rm")
        for j in range(k):
            x, y = MARGIN + j * CELL, MARGIN + i * CELL
            shade = int(255 - 200 * shares[i, j])
            draw.rectangle((x, y, x + CELL, y + CELL), fill=(shade, shade, 255), outline="black")
            draw.text((x + CELL / 2, y + CELL / 2), f"{int(matrix[i, j])}\n{shares[i, j]:.0%}",
                      fill="black" if shares[i, j] < 0.6 else "white", anchor="mm", align="center")
    return canvas


class ProbabilityCSVSaver(CSVSaver):
    """``monai.data.CSVSaver`` for ``monai.handlers.ClassificationSaver(saver=...)``: one row per input with a
    header ``image,<class name>...,predicted``, the class probabilities and the name of the most probable class.

    Args:
        output_dir: folder of the CSV file.
        filename: the CSV file's name.
        class_names: the class names in the order of the probabilities.
        delimiter: the field separator.

    Raises:
        ValueError: a row whose number of probabilities is not the number of class names.
    """

    def __init__(self, output_dir: str | os.PathLike = "./", filename: str = "predictions.csv",
                 class_names: Sequence[str] = ("NCP", "CP", "Normal"), delimiter: str = ",") -> None:
        super().__init__(output_dir=output_dir, filename=filename, overwrite=True, delimiter=delimiter)
        self.class_names = list(class_names)

    def finalize(self) -> None:
        """Write every cached row, with the header, to the file (replacing it)."""
        rows = []
        for image, probabilities in self._cache_dict.items():
            values = np.asarray(probabilities, dtype=np.float64).ravel()
            if len(values) != len(self.class_names):
                raise ValueError(f"{image}: {len(values)} probabilities for {len(self.class_names)} classes "
                                 f"({', '.join(self.class_names)}).")
            rows.append([image, *(f"{v:.6f}" for v in values), self.class_names[int(values.argmax())]])
        _write_csv(self._filepath, ["image", *self.class_names, "predicted"], rows, self.delimiter)
        self.reset_cache()


def _class_of(value: Any) -> int:
    """The class index of a case: the argmax of a vector of scores / a one-hot vector, or the value of an index."""
    value = torch.as_tensor(value)
    return int(value.argmax()) if value.numel() > 1 else int(value.reshape(()))


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def _write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> None:
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
