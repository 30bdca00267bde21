"""Per-epoch training record of GL-MAE pre-training, with collapse monitors: CSV, TensorBoard, a PNG and warnings.

The consistency branch can collapse silently: the teacher's distribution turns uniform (entropy at ``log K``) and
every volume gets the same embedding, while the reconstruction loss keeps falling. This handler writes what shows
it, every epoch, and warns when it happens.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from PIL import Image, ImageDraw

from custom_components.collapse_metrics import cross_volume_cosine
from custom_components.files import atomic_write
from custom_components.handlers.validation_log import PLOT_SIZE, plot_curves

__all__ = ["TrainingLog", "COLUMNS", "read_training_log"]

logger = logging.getLogger("custom_components")

CSV_FILE, PLOT_FILE = "train_log.csv", "train_curves.png"
COLUMNS = (
    "epoch", "loss", "loss_rec_local", "loss_rec_global", "loss_g2g", "loss_g2l", "teacher_entropy",
    "teacher_marginal_entropy", "teacher_mutual_information", "kl_g2g", "kl_g2l", "teacher_logit_spread",
    "teacher_logit_spread_batch", "log_k", "student_cls_cosine", "teacher_cls_cosine", "student_cls_cosine_centred",
    "teacher_cls_cosine_centred", "learning_rate", "ema_momentum", "teacher_temp",
)  # fmt: skip
PANELS = (  # title, columns, with a log K line
    ("masked reconstruction (MSE)", ("loss_rec_local", "loss_rec_global"), False),
    ("consistency (DINO cross-entropy)", ("loss_g2g", "loss_g2l"), True),
    ("teacher entropy: per sample, epoch marginal, their difference",
     ("teacher_entropy", "teacher_marginal_entropy", "teacher_mutual_information"), True),
    ("embedding cosine across volumes (raw, centred)",
     ("student_cls_cosine", "teacher_cls_cosine", "student_cls_cosine_centred", "teacher_cls_cosine_centred"), False),
)
GO_SPREAD = 1.0  # step-0 teacher logit spread (units of tau_t) below which the branch starts at its uniform fixed point


class TrainingLog:
    """Write one row per epoch of means over its iterations to ``output_dir/train_log.csv``.

    Columns: ``COLUMNS`` (empty where a value does not apply: the DINO monitors and ``log_k`` for BYOL, the
    teacher columns without a consistency term). ``*_cls_cosine`` is the mean cosine between the embeddings of
    different volumes of a batch (``*_centred``: on features centred by the batch mean); when batches hold one
    volume it is computed across the epoch's batches instead. ``teacher_marginal_entropy`` is the entropy of the
    teacher's distribution averaged over every sample of the epoch, and ``teacher_mutual_information`` that minus
    the mean per-sample ``teacher_entropy``: the information the teacher's output carries about its input, ~0 in
    both collapse modes (every output uniform; every input on the same few prototypes). It cannot exceed the log of
    the number of distinct volumes seen in the epoch. The same values go to TensorBoard (``epoch/<column>``) when
    ``tensorboard``, and ``train_curves.png`` draws the reconstruction and consistency terms, the three entropies
    and the cosines against the epoch. They are also put in ``engine.state.metrics`` (by column name), where
    handlers attached after this one read them, e.g. the MLflow handler of ``--tracking mlflow``.

    Step-0 line: after the first iteration of a run that starts at epoch 1, the teacher's logit spreads (standard
    deviation over K, in units of ``tau_t``) around the centre and across the batch's inputs are logged, with "go"
    when the first is at least ``GO_SPREAD`` (1.0) and a NO-GO warning below it: there the teacher's
    distribution is within ~0.5 nats of uniform from the start and the consistency gradient is ~0.

    Collapse warning: from epoch ``check_after`` on, when for ``patience`` epochs in a row the teacher's mutual
    information stays below ``information_floor`` (0.1 nats), its entropy within ``entropy_margin`` (2 %) of
    ``log K``, or the raw teacher cosine above ``cosine_limit`` (0.99, identical embeddings; the one check BYOL
    has), a warning naming the collapse mode is logged, and ``engine.state.consistency`` (shown by the progress
    bar) reads ``"COLLAPSED?"`` instead of ``"ok"`` until the monitors recover.

    A resumed run keeps the rows of the epochs it resumes after and appends to them. Under ``torch.distributed``
    only rank 0 writes (its own batches' values).

    Args:
        output_dir: folder of the CSV, the PNG and the TensorBoard events.
        patience: epochs in a row before the warning.
        check_after: first epoch that is checked (the teacher starts near uniform; give it the warm-up).
        entropy_margin: relative distance to ``log K`` below which the teacher counts as uniform.
        cosine_limit: teacher cosine across volumes above which the embeddings count as identical.
        information_floor: teacher mutual information (nats) below which the teacher output says nothing about
            its input.
        tensorboard: also write the epoch means to TensorBoard.
        plot: also draw ``train_curves.png``.
    """

    def __init__(self, output_dir: str | os.PathLike, patience: int = 3, check_after: int = 1,
                 entropy_margin: float = 0.02, cosine_limit: float = 0.99, information_floor: float = 0.1,
                 tensorboard: bool = True, plot: bool = True) -> None:
        if (patience < 1 or check_after < 0 or not 0 < entropy_margin < 1 or not -1 <= cosine_limit <= 1
                or information_floor < 0):
            raise ValueError(f"need patience >= 1, check_after >= 0, 0 < entropy_margin < 1, cosine_limit in [-1, 1] "
                             f"and information_floor >= 0, got {patience}, {check_after}, {entropy_margin}, "
                             f"{cosine_limit}, {information_floor}.")
        self.output_dir = Path(output_dir)
        self.patience = patience
        self.check_after = check_after
        self.entropy_margin = entropy_margin
        self.cosine_limit = cosine_limit
        self.information_floor = information_floor
        self.tensorboard = tensorboard
        self.plot = plot
        self.rows: list[dict[str, float]] = []
        self.streak = 0
        self._started = False
        self._writer = None
        self._reset_epoch()

    def attach(self, engine: Engine) -> None:
        engine.state.consistency = "-"
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _reset_epoch(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.features: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
        self.marginal: torch.Tensor | None = None  # sum of the steps' mean teacher distributions, on the device
        self.marginal_steps = 0

    def epoch_started(self, engine: Engine) -> None:
        if not self._started:  # first epoch of this run: keep the rows a resumed run continues from
            self._started = True
            start_epoch = engine.state.epoch - 1
            if start_epoch > 0:
                self.rows = [row for row in read_training_log(self.output_dir / CSV_FILE) if row["epoch"] <= start_epoch]
        self._reset_epoch()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output[0]
        if engine.state.iteration == 1 and "teacher_logit_spread" in output:
            self._go_no_go(output)
        marginal = getattr(engine.state, "teacher_marginal", None)
        if marginal is not None:
            self.marginal = marginal.detach() if self.marginal is None else self.marginal + marginal.detach()
            self.marginal_steps += 1
        for name, value in output.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1
        for name, value in (getattr(engine.state, "glmae_features", None) or {}).items():
            if value is not None and value.shape[0] == 1:  # one volume per batch: pool over the epoch
                self.features[name].append(value)

    def epoch_completed(self, engine: Engine) -> None:
        row = {"epoch": engine.state.epoch, **{n: self.sums[n] / self.counts[n] for n in self.sums}}
        for name, vectors in self.features.items():
            column = f"{name}_cls_cosine"
            if column not in self.counts and len(vectors) > 1:
                row[column] = cross_volume_cosine(torch.cat(vectors)[:, None]).item()
                row[f"{column}_centred"] = cross_volume_cosine(torch.cat(vectors)[:, None], centred=True).item()
        if self.marginal is not None and "teacher_entropy" in row:
            marginal = (self.marginal / self.marginal_steps).float()
            row["teacher_marginal_entropy"] = -(marginal * marginal.clamp_min(1e-30).log()).sum().item()
            row["teacher_mutual_information"] = row["teacher_marginal_entropy"] - row["teacher_entropy"]
        self.rows.append({name: row[name] for name in COLUMNS if name in row})
        engine.state.metrics.update({name: value for name, value in self.rows[-1].items() if name != "epoch"})
        self._check_collapse(engine, row)
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        atomic_write(self.output_dir / CSV_FILE, lambda f: f.write(self._csv().encode()))
        if self.tensorboard:
            self._tensorboard(row)
        if self.plot:
            buffer = io.BytesIO()
            self._plot().save(buffer, format="PNG")
            atomic_write(self.output_dir / PLOT_FILE, lambda f: f.write(buffer.getvalue()))

    def _go_no_go(self, output: dict[str, float]) -> None:
        spread, entropy, log_k = output["teacher_logit_spread"], output["teacher_entropy"], output.get("log_k", math.nan)
        values = (f"teacher logit spread {spread:.2f} tau_t around the centre, "
                  f"{output.get('teacher_logit_spread_batch', math.nan):.2f} tau_t across the batch's inputs "
                  f"(teacher entropy {entropy:.3f} of log K {log_k:.3f})")
        if spread >= GO_SPREAD:
            logger.info(f"step 0: {values}: go.")
            return
        logger.warning(
            f"step 0: {values}: NO-GO. The teacher starts within ~{spread ** 2 / 2:.2f} nats of uniform, where the "
            f"consistency gradient is ~0, and the branch may never leave its uniform start. A batch-normalised "
            f"projection head (head_batch_norm), a colder early teacher (warmup_teacher_temp) or a smaller "
            f"head_bottleneck_dim widens it (see the pre-training bundle's README, 'Collapse')."
        )

    def _check_collapse(self, engine: Engine, row: dict[str, float]) -> None:
        entropy, log_k = row.get("teacher_entropy", math.nan), row.get("log_k", math.nan)
        information = row.get("teacher_mutual_information", math.nan)
        cosine = row.get("teacher_cls_cosine", math.nan)
        if row["epoch"] < self.check_after or all(math.isnan(v) for v in (entropy, information, cosine)):
            return
        uniform = entropy >= (1.0 - self.entropy_margin) * log_k
        uninformative = information < self.information_floor
        identical = cosine > self.cosine_limit
        self.streak = self.streak + 1 if uniform or uninformative or identical else 0
        values = (f"teacher entropy {entropy:.3f} of log K {log_k:.3f}, epoch marginal "
                  f"{row.get('teacher_marginal_entropy', math.nan):.3f}, mutual information {information:.3f} nats, "
                  f"raw teacher cosine across volumes {cosine:.4f}")
        if self.streak and self.streak % self.patience == 0:
            engine.state.consistency = "COLLAPSED?"
            mode = ("identical embeddings for every volume" if not (uniform or uninformative) else
                    "uniform: every teacher output is near uniform" if uniform or entropy >= 0.5 * log_k else
                    "one mode: the teacher puts every input on the same few prototypes")
            logger.warning(
                f"epoch {row['epoch']}: the consistency branch looks collapsed for the last {self.streak} epochs "
                f"({mode}): {values}. g2g/g2l then teach the encoder nothing and the run trains like a plain MAE. "
                f"Check learning_rate, ema_momentum, teacher_temp, center_momentum, freeze_last_layer_epochs and the "
                f"data's variety (see the pre-training bundle's README, 'Collapse')."
            )
        elif not self.streak:
            if engine.state.consistency == "COLLAPSED?":
                logger.info(f"epoch {row['epoch']}: the consistency branch recovered ({values}).")
            engine.state.consistency = "ok"

    def _csv(self) -> str:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" for k, v in row.items()} for row in self.rows)
        return text.getvalue()

    def _tensorboard(self, row: dict[str, float]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir))
        for name, value in row.items():
            if name != "epoch":
                self._writer.add_scalar(f"epoch/{name}", value, row["epoch"])
        self._writer.flush()

    def _plot(self) -> Image.Image:
        """Reconstruction, consistency, teacher entropy and cross-volume cosine against the epoch (2 x 2 panels);
        a dashed line marks log K, the trivial value of the DINO terms."""
        width, height = PLOT_SIZE
        canvas = Image.new("RGB", (2 * width, 2 * height), "white")
        epochs = [row["epoch"] for row in self.rows]
        log_k = self.rows[-1].get("log_k")
        for i, (title, names, hline) in enumerate(PANELS):
            series = {name: [row.get(name, math.nan) for row in self.rows] for name in names}
            title = title + (f" (dashed: log K = {log_k:.3f})" if hline and log_k is not None else "")
            panel = plot_curves(epochs, series, title=title, hline=log_k if hline else None)
            canvas.paste(panel, ((i % 2) * width, (i // 2) * height))
        ImageDraw.Draw(canvas).line((0, height, 2 * width, height), fill=(200, 200, 200))
        return canvas

    def close(self, engine: Engine | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_training_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``train_log.csv`` as numbers (``epoch`` an int, empty cells dropped); none when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)]
