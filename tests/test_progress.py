"""ProgressBarHandler: a bar only on a terminal, and the time left for the whole run in the log."""

import logging

import pytest
from ignite.engine import Engine, Events

from custom_components.handlers.progress import ProgressBarHandler, format_duration


def run(epochs: int, handler: ProgressBarHandler) -> Engine:
    engine = Engine(lambda engine, batch: {"loss": 0.5})
    handler.attach(engine)
    engine.run(range(3), max_epochs=epochs)
    return engine


def test_time_left_is_logged_per_interval_and_at_the_end(caplog):
    with caplog.at_level(logging.INFO, logger="custom_components"):
        run(3, ProgressBarHandler(eta_interval=0.0, bar=False))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "s per epoch" in lines[0] and "left" in lines[0] and lines[-1].endswith("done")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="custom_components"):
        run(3, ProgressBarHandler(eta_interval=3600.0, bar=False))
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("epoch ")] == [
        "epoch 1/3", "epoch 3/3"]  # within the interval: the first estimate and the end


def test_no_bar_when_the_error_stream_is_not_a_terminal(capsys):
    run(2, ProgressBarHandler(output_transform=lambda output: output))  # pytest's captured stderr is no terminal
    assert "%|" not in capsys.readouterr().err
    run(2, ProgressBarHandler(output_transform=lambda output: output, bar=True))
    assert "%|" in capsys.readouterr().err


@pytest.mark.parametrize("seconds, text", [(42.3, "42 s"), (75, "1 min 15 s"), (5400, "1 h 30 min"), (-1, "0 s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_epoch_metrics_are_logged_without_the_repeated_key_metric_line(caplog):
    from monai.handlers import StatsHandler

    from custom_components.handlers import log_epoch_metrics

    engine = Engine(lambda engine, batch: None)
    engine.state.key_metric_name = "train_mean_dice"
    StatsHandler(iteration_log=False, epoch_print_logger=log_epoch_metrics).attach(engine)

    @engine.on(Events.ITERATION_COMPLETED)
    def set_metric(engine):
        engine.state.metrics["train_mean_dice"] = 0.25
        engine.state.best_metric, engine.state.best_metric_epoch = 0.25, 1

    with caplog.at_level(logging.INFO):
        engine.run(range(1), max_epochs=2)
    messages = [r.getMessage() for r in caplog.records]
    assert "Epoch[2] Metrics -- train_mean_dice: 0.2500" in messages
    assert not any(m.startswith("Key metric") for m in messages)
