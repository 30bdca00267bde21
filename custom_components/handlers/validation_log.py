"""Validation history files: a CSV of every validation's metrics, the best one as JSON, and a PNG curve.

MONAI's ``StatsHandler``/``TensorBoardStatsHandler`` log metrics to the console or TensorBoard and
``CheckpointSaver`` keeps the best model, but no handler leaves a plain record of the run in the bundle's
folder; this one does, with PIL for the plot (no matplotlib dependency).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from PIL import Image, ImageDraw

from custom_components.files import atomic_write

__all__ = ["ValidationLog", "plot_curve", "plot_curves"]

logger = logging.getLogger("custom_components")

CSV_FILE, BEST_FILE, PLOT_FILE = "val_metrics.csv", "best_metric.json", "val_curve.png"
PLOT_SIZE = (640, 400)
MARGINS = (70, 36, 20, 44)  # left, top, right, bottom: room for tick labels, title and axis label


class ValidationLog:
    """Record every validation of a MONAI evaluator in ``output_dir``:

    - ``val_metrics.csv``: one row ``epoch,<metric>,...`` per validation with every scalar of
      ``engine.state.metrics`` (columns in order of first appearance, empty where a metric is missing);
    - ``best_metric.json``: ``{"<key_metric_name>": best value, "epoch": its epoch, "last": {metrics of this
      validation}, "history_file": "val_metrics.csv"}``, best being the maximum over this run's validations
      (NaN values are skipped and written as ``null``);
    - ``val_curve.png`` when ``plot``: the key metric against the epoch, best point marked (see :func:`plot_curve`).

    With ``class_names``, the key metric's per-case details (``engine.state.metric_details``, e.g. MONAI's
    ``MeanDice``) are also averaged per class over the cases that define them (NaN, e.g. a class absent from the
    reference, is left out): columns ``<key metric>[<class name>]`` in the CSV, ``per_class`` of
    the best validation in the JSON, and a log line that names the classes scoring 0 in every case ("missed") and
    those undefined in every case.

    The files are rewritten whole after each validation, atomically (temp file + ``os.replace``), so a reader never
    sees a partial file; the history is that of this handler's run. Attach it to the evaluator, e.g. in a bundle's
    ``validate#handlers``; MONAI's ``ValidationHandler`` runs the evaluator with ``state.epoch`` set to the
    trainer's epoch. Under ``torch.distributed`` only rank 0 writes.

    Args:
        output_dir: folder of the three files (created when needed).
        key_metric_name: name of the metric in ``engine.state.metrics`` whose maximum is the best validation.
        plot: also draw ``val_curve.png``.
        class_names: the name of each class (channel) of the key metric's details, in order; None logs the mean only.

    Raises:
        ValueError: at a validation whose ``engine.state.metrics`` has no scalar ``key_metric_name``.

    Example::

        {"_target_": "custom_components.handlers.validation_log.ValidationLog", "output_dir": "@output_dir"}
    """

    def __init__(
        self, output_dir: str | os.PathLike, key_metric_name: str = "val_mean_dice", plot: bool = True,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not key_metric_name:
            raise ValueError("key_metric_name must be a non-empty metric name.")
        self.output_dir = Path(output_dir)
        self.key_metric_name = key_metric_name
        self.plot = plot
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.rows: list[dict[str, float]] = []  # one per validation: "epoch" and the metrics

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        scalars = {name: _scalar(value) for name, value in engine.state.metrics.items()}
        metrics = {name: value for name, value in scalars.items() if value is not None}
        if self.key_metric_name not in metrics:
            raise ValueError(
                f"ValidationLog: key_metric_name '{self.key_metric_name}' is not a scalar in engine.state.metrics "
                f"(scalar metrics: {sorted(metrics)})."
            )
        epoch = engine.state.epoch
        per_class, remarks = self._per_class(engine)
        self.rows.append({"epoch": epoch, **metrics, **per_class})
        best = self.best_row()
        atomic_write(self.output_dir / CSV_FILE, lambda f: f.write(self._csv().encode()))
        summary = {
            self.key_metric_name: None if best is None else best[self.key_metric_name],
            "epoch": None if best is None else best["epoch"],
            "last": {name: _finite_or_none(value) for name, value in {**metrics, **per_class}.items()},
            "history_file": CSV_FILE,
        }
        if per_class and best is not None:
            summary["per_class"] = {name: _finite_or_none(best.get(f"{self.key_metric_name}[{name}]", math.nan))
                                    for name in self.class_names}
        atomic_write(self.output_dir / BEST_FILE, lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))
        if self.plot:
            epochs = [row["epoch"] for row in self.rows]
            values = [row.get(self.key_metric_name, math.nan) for row in self.rows]
            buffer = io.BytesIO()
            plot_curve(epochs, values, title=f"{self.key_metric_name} per validation").save(buffer, format="PNG")
            atomic_write(self.output_dir / PLOT_FILE, lambda f: f.write(buffer.getvalue()))
        best_text = "none yet" if best is None else f"{best[self.key_metric_name]:.4f} at epoch {best['epoch']}"
        logger.info(f"epoch {epoch}: {self.key_metric_name} {metrics[self.key_metric_name]:.4f} (best {best_text})"
                    + remarks)

    def _per_class(self, engine: Engine) -> tuple[dict[str, float], str]:
        """The key metric per class (mean over the cases where it is defined) as CSV columns, and the log text."""
        details = getattr(engine.state, "metric_details", {}).get(self.key_metric_name)
        if self.class_names is None or details is None:
            return {}, ""
        values = torch.as_tensor(details, dtype=torch.float64).reshape(-1, len(self.class_names))
        defined = ~torch.isnan(values)
        means = torch.nanmean(values, dim=0).tolist()
        columns = {f"{self.key_metric_name}[{name}]": mean for name, mean in zip(self.class_names, means)}
        missed = [name for i, name in enumerate(self.class_names)
                  if defined[:, i].any() and (values[:, i][defined[:, i]] == 0).all()]
        undefined = [name for i, name in enumerate(self.class_names) if not defined[:, i].any()]
        text = "; per class: " + ", ".join(f"{n} {m:.3f}" for n, m in zip(self.class_names, means))
        text += f"; 0 in every case (missed): {', '.join(missed) or 'none'}"
        if undefined:
            text += f"; undefined (NaN) in every case, left out of the mean: {', '.join(undefined)}"
        return columns, text

    def best_row(self) -> dict[str, float] | None:
        """The validation with the largest finite key metric so far (the first one on ties), or None."""
        finite = [row for row in self.rows if math.isfinite(row.get(self.key_metric_name, math.nan))]
        return max(finite, key=lambda row: row[self.key_metric_name], default=None)

    def _csv(self) -> str:
        columns = list(dict.fromkeys(name for row in self.rows for name in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return text.getvalue()


def plot_curve(epochs: list[int], values: list[float], title: str, mark_best: bool = True) -> Image.Image:
    """Line plot of ``values`` against ``epochs`` with axes, ticks, a title and (``mark_best``) the maximum circled
    in red. Non-finite values are left out of the line. Returns a ``PLOT_SIZE`` RGB picture.

    Raises:
        ValueError: ``epochs`` is empty or ``values`` has another length.
    """
    return plot_curves(epochs, {"": values}, title, mark_best=mark_best)


COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def plot_curves(epochs: list[int], series: dict[str, list[float]], title: str, mark_best: bool = False,
                hline: float | None = None) -> Image.Image:
    """Several lines against ``epochs`` in one ``PLOT_SIZE`` picture, with a legend of the series' names (unnamed
    series get none), an optional dashed horizontal reference line at ``hline``, and with ``mark_best`` the
    maximum of the first series circled in red. Non-finite values are left out of the lines.

    Raises:
        ValueError: ``epochs`` is empty, a series has another length, or there are no series.
    """
    if not epochs or not series or any(len(v) != len(epochs) for v in series.values()):
        raise ValueError(f"plot_curves needs one value per epoch in every series, got {len(epochs)} epochs and "
                         f"series of lengths {[len(v) for v in series.values()]}.")
    width, height = PLOT_SIZE
    left, top, right, bottom = MARGINS
    x1, y1 = width - right, height - bottom
    lines = {name: [(e, v) for e, v in zip(epochs, values, strict=True) if math.isfinite(v)]
             for name, values in series.items()}
    finite = [v for points in lines.values() for _, v in points] + ([hline] if hline is not None else [])
    x_ticks = _ticks(min(epochs), max(epochs), max_ticks=8, integer=True)
    y_ticks = _ticks(min(finite, default=0.0), max(finite, default=1.0), max_ticks=6)

    def to_pixel(epoch: float, value: float) -> tuple[float, float]:
        x = left + (epoch - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (x1 - left)
        y = y1 - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (y1 - top)
        return x, y

    canvas = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 10), title, fill="black", anchor="mt")
    for epoch in x_ticks:
        x, _ = to_pixel(epoch, y_ticks[0])
        draw.line((x, y1, x, y1 + 5), fill="black")
        draw.text((x, y1 + 8), f"{epoch:g}", fill="black", anchor="mt")
    for value in y_ticks:
        _, y = to_pixel(x_ticks[0], value)
        draw.line((left, y, x1, y), fill=(225, 225, 225))
        draw.line((left - 5, y, left, y), fill="black")
        draw.text((left - 8, y), f"{value:.4g}", fill="black", anchor="rm")
    draw.line((left, top, left, y1, x1, y1), fill="black")
    draw.text(((left + x1) / 2, height - 6), "epoch", fill="black", anchor="mb")
    if hline is not None:
        _, y = to_pixel(x_ticks[0], hline)
        for x in range(left, x1, 12):
            draw.line((x, y, min(x + 6, x1), y), fill=(120, 120, 120))
    for i, (name, points) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [to_pixel(e, v) for e, v in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        if len(points) < 60:
            for x, y in pixels:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        if name:
            draw.text((x1 - 4, top + 4 + 14 * i), name, fill=colour, anchor="ra")
    first = next(iter(lines.values()))
    if first and mark_best:
        best = max(range(len(first)), key=lambda i: first[i][1])
        (x, y), (epoch, value) = to_pixel(*first[best]), first[best]
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline="red", width=2)
        draw.text((x, y - 9), f"best {value:.4g} @ {epoch}", fill="red", anchor=_label_anchor(x, left, x1))
    return canvas


def _label_anchor(x: float, left: float, right: float) -> str:
    """Anchor for the best point's label so that it stays inside the plot near its left and right edges."""
    if x - left < 60:
        return "lb"
    return "rb" if right - x < 60 else "mb"


def _ticks(low: float, high: float, max_ticks: int, integer: bool = False) -> list[float]:
    """At most ``max_ticks`` + 1 evenly spaced round values (step 1, 2 or 5 x 10^k) covering ``[low, high]``."""
    span = high - low
    if span <= 0:
        span = 2.0 if integer else max(abs(low) * 0.1, 0.01)
        low, high = low - span / 2, high + span / 2
    raw = span / max_ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    start, stop = math.floor(low / step), math.ceil(high / step)
    return [i * step for i in range(start, stop + 1)]


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is one number (Python, numpy or a one-element tensor), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)) and value.size == 1 and np.issubdtype(value.dtype, np.number):
        return float(value.reshape(()))
    return None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
