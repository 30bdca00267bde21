"""ValidationLog: CSV history, best-metric JSON and PNG curve of a MONAI evaluator run by a trainer."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from PIL import Image

import custom_components.handlers.validation_log as validation_log
from custom_components.handlers.validation_log import PLOT_SIZE, ValidationLog, plot_curve

DICE = {1: 0.5, 2: 0.8, 3: 0.7}


def train_with_validation(tmp_path, dice: dict[int, float], **kwargs) -> None:
    """Run a tiny SupervisedTrainer for ``len(dice)`` epochs, validating every epoch with a SupervisedEvaluator
    whose metrics at epoch ``e`` are ``val_mean_dice = dice[e]``, ``val_hd95 = 10 * e`` and a per-class tensor."""
    data = [{"image": torch.rand(1, 4, 4, 4), "label": torch.rand(1, 4, 4, 4)} for _ in range(2)]
    network = torch.nn.Conv3d(1, 1, 1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data), network=network)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def set_metrics(engine: Engine) -> None:
        epoch = engine.state.epoch
        engine.state.metrics.update(
            val_mean_dice=torch.tensor(dice[epoch]), val_hd95=10.0 * epoch, val_dice_per_class=torch.rand(3)
        )

    ValidationLog(output_dir=str(tmp_path), **kwargs).attach(evaluator)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=len(dice),
        train_data_loader=DataLoader(data),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=torch.nn.MSELoss(),
        train_handlers=[ValidationHandler(interval=1, validator=evaluator)],
    )
    trainer.run()


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_three_validations(tmp_path):
    train_with_validation(tmp_path, DICE)
    rows = read_csv(tmp_path / "val_metrics.csv")
    assert (tmp_path / "val_metrics.csv").read_text().splitlines()[0] == "epoch,val_mean_dice,val_hd95"
    assert [(int(r["epoch"]), float(r["val_mean_dice"]), float(r["val_hd95"])) for r in rows] == [
        (e, pytest.approx(d), 10.0 * e) for e, d in DICE.items()
    ]
    best = json.loads((tmp_path / "best_metric.json").read_text())
    assert best["val_mean_dice"] == pytest.approx(0.8) and best["epoch"] == 2
    assert best["last"] == {"val_mean_dice": pytest.approx(0.7), "val_hd95": 30.0}
    assert best["history_file"] == "val_metrics.csv"
    with Image.open(tmp_path / "val_curve.png") as picture:
        assert picture.format == "PNG" and picture.size == PLOT_SIZE
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # axes, text, line, marker
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 20  # the best point's marker
    assert not list(tmp_path.glob(".*.tmp"))


def test_per_class_values_with_names_missed_and_undefined_classes(tmp_path, caplog):
    """The key metric's per-case details become named per-class means (NaN cases left out); a class at 0 in every
    case is called missed, one undefined in every case is named as left out."""
    details = torch.tensor([[0.5, 0.0, math.nan], [0.7, 0.0, math.nan], [math.nan, 0.0, math.nan]])
    engine = Engine(lambda engine, batch: None)
    engine.state.epoch = 4
    engine.state.metrics = {"val_mean_dice": torch.tensor(0.2)}
    engine.state.metric_details = {"val_mean_dice": details}
    with caplog.at_level("INFO", logger="custom_components"):
        ValidationLog(output_dir=str(tmp_path), class_names=["liver", "spleen", "lesion"], plot=False)(engine)
    row = read_csv(tmp_path / "val_metrics.csv")[0]
    assert float(row["val_mean_dice[liver]"]) == pytest.approx(0.6) and float(row["val_mean_dice[spleen]"]) == 0.0
    assert math.isnan(float(row["val_mean_dice[lesion]"]))
    best = json.loads((tmp_path / "best_metric.json").read_text())
    assert best["per_class"] == {"liver": pytest.approx(0.6), "spleen": 0.0, "lesion": None}
    assert "per class: liver 0.600, spleen 0.000, lesion nan; 0 in every case (missed): spleen; undefined (NaN) in " \
           "every case, left out of the mean: lesion" in caplog.text


def test_other_key_metric_nan_and_no_plot(tmp_path):
    train_with_validation(tmp_path, {1: math.nan, 2: 0.3}, key_metric_name="val_hd95", plot=False)
    best = json.loads((tmp_path / "best_metric.json").read_text())
    assert best["val_hd95"] == 20.0 and best["epoch"] == 2
    assert best["last"]["val_mean_dice"] == pytest.approx(0.3)
    assert read_csv(tmp_path / "val_metrics.csv")[0]["val_mean_dice"] == "nan"
    assert not (tmp_path / "val_curve.png").exists()


def test_all_nan_key_metric(tmp_path):
    train_with_validation(tmp_path, {1: math.nan})
    best = json.loads((tmp_path / "best_metric.json").read_text())
    assert best["val_mean_dice"] is None and best["epoch"] is None and best["last"]["val_mean_dice"] is None
    assert (tmp_path / "val_curve.png").exists()


def test_missing_key_metric_raises(tmp_path):
    with pytest.raises(ValueError, match="'val_dice'.*scalar metrics: \\['val_hd95', 'val_mean_dice'\\]"):
        train_with_validation(tmp_path, DICE, key_metric_name="val_dice")
    with pytest.raises(ValueError, match="key_metric_name"):
        ValidationLog(output_dir=str(tmp_path), key_metric_name="")


def test_rank_above_zero_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(validation_log.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(validation_log.dist, "get_rank", lambda: 1)
    engine = Engine(lambda engine, batch: None)
    ValidationLog(output_dir=str(tmp_path / "logs")).attach(engine)
    engine.run([0])
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("epochs, values", [([1], [0.4]), ([5, 10, 15], [math.nan] * 3), ([2, 4], [0.2, 0.2])])
def test_plot_edge_cases(epochs, values):
    assert plot_curve(epochs, values, title="t").size == PLOT_SIZE


@pytest.mark.parametrize("epochs, values", [([], []), ([1, 2], [0.5])])
def test_plot_bad_lengths(epochs, values):
    with pytest.raises(ValueError, match="one value per epoch"):
        plot_curve(epochs, values, title="t")
