"""The app behind a real MONAI Label server on 127.0.0.1, driven with MONAI Label's own client (the REST calls
3D Slicer's plugin makes): every bundle served from its folder, segmentation and classification inference, and a
training run whose weights the next inference uses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import APP_DIR, CLASSIFICATION, SEGMENTATION, synthetic_cases, synthetic_scan, tiny_bundle
from monailabel.client import MONAILabelClient

BTCV = "glmae_btcv_segmentation"
START_TIMEOUT, TRAIN_TIMEOUT = 180, 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``monailabel start_server`` with this app in a subprocess (its own process group, so a training run it
    started goes with it), its log in a file."""

    def __init__(self, root: Path, bundles_dir: Path, studies: Path) -> None:
        self.port, self.log = free_port(), root / "server.log"
        command = [os.path.join(os.path.dirname(sys.executable), "monailabel"), "start_server", "--app", str(APP_DIR),
                   "--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port),
                   "--conf", "bundles_dir", str(bundles_dir)]
        # the monailabel script runs the `python` of PATH: this environment's, as in an activated venv
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self.client = MONAILabelClient(f"http://127.0.0.1:{self.port}", tmpdir=str(root / "client"))
        (root / "client").mkdir()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                return self.client.info()
            except OSError:
                time.sleep(1)
        raise AssertionError(f"the server did not answer in {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server by its PID, then anything left in its process group (a training run)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server over tiny copies of every segmentation and classification bundle and a study folder with one image
    per bundle; the BTCV images have final labels, for training."""
    root = tmp_path_factory.mktemp("server")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for name in SEGMENTATION + CLASSIFICATION:
        tiny_bundle(name, root / "bundles")
    for name in SEGMENTATION:
        cases = synthetic_cases(name, root / "data" / name, num=3 if name == BTCV else 1)
        for index, case in enumerate(cases):
            image_id = f"{name}_{index}"
            shutil.copy(case["image"], studies / f"{image_id}.nii.gz")
            if name == BTCV:
                shutil.copy(case["label"], studies / "labels" / "final" / f"{image_id}.nii.gz")
    synthetic_scan(studies / f"{CLASSIFICATION[0]}_0.nii.gz")
    server = Server(root, root / "bundles", studies)
    try:
        server.info = server.wait_ready()
        server.studies = studies
        server.bundles = root / "bundles"
        yield server
    finally:
        server.stop()


def segment(server: Server, name: str, image_id: str) -> np.ndarray:
    path, result = server.client.infer(name, image_id, {"device": "cpu"})
    image = nib.load(server.studies / f"{image_id}.nii.gz")
    label = nib.load(path)
    assert label.shape == image.shape[:3], f"{name}: label {label.shape}, image {image.shape}"
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    values = np.unique(np.asarray(label.dataobj)).astype(int)
    classes = server.info["models"][name]["labels"]
    assert set(values) <= {0, *classes.values()}, f"{name}: values {values} outside its classes {classes}"
    assert result["label_names"] == classes
    return np.asarray(label.dataobj)


def test_info_lists_every_bundle(server):
    assert sorted(server.info["models"]) == sorted(SEGMENTATION + CLASSIFICATION)
    assert sorted(server.info["trainers"]) == sorted(SEGMENTATION)
    btcv = server.info["models"][BTCV]
    assert btcv["type"] == "segmentation" and list(btcv["labels"])[:2] == ["spleen", "right kidney"]
    assert server.info["models"][CLASSIFICATION[0]]["type"] == "classification"


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation(server, name):
    segment(server, name, f"{name}_0")


def test_classification(server):
    name = CLASSIFICATION[0]
    _, result = server.client.infer(name, f"{name}_0", {"device": "cpu"})
    prediction = json.loads(result)["prediction"]  # a reply without a file comes back as the JSON text
    assert [p["label"] for p in prediction] == list(server.info["models"][name]["labels"])
    assert sum(p["score"] for p in prediction) == pytest.approx(1.0, abs=1e-4)


def train(server: Server, name: str, **params) -> None:
    """One training run through ``/train/<name>``, waited for; fails with its last output lines unless DONE."""
    server.client.train_start(name, {"device": "cpu", "multi_gpu": False, **params})
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while (status := server.client.train_status())["status"] not in ("DONE", "ERROR"):
        assert time.monotonic() < deadline, f"training ran past {TRAIN_TIMEOUT} s:\n{server.log_tail()}"
        time.sleep(2)
    assert status["status"] == "DONE", f"training {status['status']}:\n" + "\n".join(status.get("details", []))


def test_training_replaces_the_served_weights(server):
    """Validation picks the weights (the bundle's best checkpoint, models/model.pt); the next inference uses them."""
    weights = server.bundles / BTCV / "models" / "model.pt"
    before, stamp = segment(server, BTCV, f"{BTCV}_0"), weights.stat().st_mtime_ns
    train(server, BTCV, max_epochs=1, val_split=0.34)
    assert weights.stat().st_mtime_ns != stamp, "training did not write models/model.pt"
    assert (server.bundles / BTCV / "runs" / "val_metrics.csv").exists()
    after = segment(server, BTCV, f"{BTCV}_0")
    assert not np.array_equal(before, after), "the inference after training still uses the old weights"


def test_training_without_validation_cases_keeps_the_last_epoch(server):
    weights = server.bundles / BTCV / "models" / "model.pt"
    stamp = weights.stat().st_mtime_ns
    train(server, BTCV, max_epochs=1, val_split=0.0, pretrained=False)
    assert weights.stat().st_mtime_ns != stamp, "training without validation did not write models/model.pt"
    segment(server, BTCV, f"{BTCV}_0")
