"""Resume after an interruption: the run continues from its newest checkpoint and ends where an uninterrupted run
ends; checkpoints are complete files even when the process is killed."""

import csv
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from bundle_utils import BUNDLES, error_chain, pretraining_workflow, run_error, run_workflow
from conftest import REPO_ROOT
from ignite.engine import Events

from custom_components.handlers import latest_checkpoint

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow


class Interrupted(Exception):
    pass


def interrupt_after_epoch(workflow, epoch):
    def stop(engine):
        raise Interrupted(f"stopped after epoch {engine.state.epoch}")

    workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_COMPLETED(once=epoch), stop)


def final_state(folder):
    return torch.load(glob.glob(str(folder / "models" / "checkpoint_*epoch=3.pt"))[0], weights_only=True)


def test_resumed_run_reaches_the_weights_of_an_uninterrupted_run(tmp_path):
    data = str(tmp_path / "data")
    run_workflow(pretraining_workflow(tmp_path / "a", synthetic_data_dir=data, max_epochs=3))

    interrupted = pretraining_workflow(tmp_path / "b", synthetic_data_dir=data, max_epochs=3)
    interrupted.initialize()
    interrupt_after_epoch(interrupted, 2)
    with pytest.raises(Exception) as info:
        interrupted.run()
    assert "stopped after epoch 2" in error_chain(info.value)
    resumed = run_workflow(pretraining_workflow(tmp_path / "b", synthetic_data_dir=data, max_epochs=3, resume=True))
    assert resumed.parser.get_parsed_content("train#trainer").state.iteration == 6

    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for part in ("model", "teacher", "loss"):
        for key in a[part]:
            assert torch.allclose(a[part][key], b[part][key], atol=1e-6), (part, key)
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    assert a["lr_scheduler"] == b["lr_scheduler"]
    # the resumed run's train_log.csv keeps the epochs before the interruption and continues it
    logs = [list(csv.DictReader(open(tmp_path / run / "runs" / "train_log.csv"))) for run in ("a", "b")]
    assert [row["epoch"] for row in logs[1]] == ["1", "2", "3"]
    assert [float(row["loss"]) for row in logs[1]] == pytest.approx([float(row["loss"]) for row in logs[0]], rel=1e-4)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    chain = run_error(pretraining_workflow(tmp_path, resume=True))
    assert "no checkpoint to resume from" in chain and str(tmp_path / "models") in chain


def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path):
    run_workflow(pretraining_workflow(tmp_path, max_epochs=1))
    path = glob.glob(str(tmp_path / "models" / "checkpoint_*.pt"))[0]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    chain = run_error(pretraining_workflow(tmp_path, max_epochs=2, resume=True))
    assert "cannot resume from checkpoint" in chain and os.path.basename(path) in chain


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    """Kill -9 a pre-training process while it trains (saving every epoch), resume it, and compare its end with an
    uninterrupted run of the same command."""
    args = {"synthetic_data_dir": tmp_path / "data", "num_volumes": 3, "volume_shape": "[64,64,48]", "hidden_size": 48,
            "mlp_dim": 96, "num_heads": 4, "decoder_hidden_size": 48, "decoder_num_layers": 1, "head_out_dim": 64,
            "head_hidden_dim": 64, "head_bottleneck_dim": 16, "checkpoint_interval": 1, "preview_interval": 100,
            "max_epochs": 12, "batch_size": 2}
    cwd, env = os.path.join(BUNDLES, "glmae_pretraining"), dict(os.environ, PYTHONPATH=REPO_ROOT)

    def command(run, **extra):
        words = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
                 "['configs/train.json','configs/quickstart.json']"]
        for key, value in (args | {"ckpt_dir": tmp_path / run / "models", "output_dir": tmp_path / run} | extra).items():
            words += [f"--{key}", str(value)]
        return words

    def finish(words):
        result = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    finish(command("uninterrupted"))
    process = subprocess.Popen(command("killed"), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(tmp_path / "killed" / "models" / "checkpoint_*epoch=3.pt")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = glob.glob(str(tmp_path / "killed" / "models" / "checkpoint_*.pt"))
    assert len(saved) == 1, saved  # one complete checkpoint, no temporary leftovers named like one
    assert 3 <= torch.load(saved[0], weights_only=True)["trainer"]["iteration"] // 2 < 12
    assert "resumed from" in finish(command("killed", resume=True))
    final, reference = (torch.load(latest_checkpoint(str(tmp_path / run / "models")), weights_only=True)
                        for run in ("killed", "uninterrupted"))
    assert final["trainer"]["iteration"] == reference["trainer"]["iteration"] == 24
    for part in ("model", "teacher"):
        for key in reference[part]:
            assert torch.allclose(final[part][key], reference[part][key], atol=1e-5), (part, key)


def test_checkpoint_tensors_are_moved_to_cpu_before_saving():
    from custom_components.handlers.checkpoint import CPUSaveHandler, to_cpu

    written = {}

    class Recorder(CPUSaveHandler.__mro__[1]):  # a BaseSaveHandler that keeps what it is given
        def __call__(self, checkpoint, filename, metadata=None):
            written[filename] = checkpoint

        def remove(self, filename):
            written.pop(filename)

    class FakeDevice(torch.Tensor):  # stands for a CUDA tensor: .cpu() gives a plain CPU tensor
        def cpu(self):
            return torch.Tensor(self.data.clone())

    state = {"model": {"w": torch.ones(2).as_subclass(FakeDevice)}, "optimizer": {"state": {0: {"step": 3.0}}}}
    CPUSaveHandler(Recorder())(state, "c.pt")
    assert type(written["c.pt"]["model"]["w"]) is torch.Tensor and written["c.pt"]["optimizer"]["state"][0]["step"] == 3.0
    assert to_cpu([torch.zeros(1), (1, "a")])[1] == (1, "a")
