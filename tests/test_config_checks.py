"""Command-line overrides must name config ids that exist and spell constants the way the command line reads them."""

import os
import re
import subprocess
import sys

import pytest
from bundle_utils import BUNDLES
from conftest import REPO_ROOT

from custom_components.config_checks import check_cli_overrides

MAIN = os.path.join("site-packages", "monai", "bundle", "__main__.py")
CONFIGS = "['configs/train.json','configs/quickstart.json']"


@pytest.fixture
def in_pretraining_bundle(monkeypatch):
    monkeypatch.chdir(os.path.join(BUNDLES, "glmae_pretraining"))


def test_known_ids_nested_ids_and_run_arguments_pass(in_pretraining_bundle):
    check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, "--max_epochs", "2", "--train#trainer#amp=False",
                         "--meta_file", "configs/metadata.json", "--resume", "True"])


def test_a_typo_is_an_error_with_a_suggestion(in_pretraining_bundle):
    with pytest.raises(ValueError, match=r"--max_epoch \(did you mean --max_epochs\?\)"):
        check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, "--max_epoch", "2"])


def test_tracking_ids_are_known_with_tracking_only(in_pretraining_bundle):
    """``--tracking mlflow`` adds MONAI's tracking ids (tracking_uri, experiment_name, run_name, ...) to the config."""
    tracking = ["--tracking", "mlflow", "--tracking_uri", "http://127.0.0.1:5000", "--experiment_name", "glmae",
                "--run_name", "r1", "--save_execute_config", "runs/config.json"]
    check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, *tracking])
    with pytest.raises(ValueError, match=r"unknown config id\(s\) on the command line: --tracking_uri"):
        check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, *tracking[2:]])


@pytest.mark.parametrize("value, spelling", [("false", "False"), ("true", "True"), ("null", "'$None'"),
                                             ("None", "'$None'")])
def test_lowercase_constants_are_an_error_with_the_spelling_that_works(in_pretraining_bundle, value, spelling):
    """``--amp false`` reaches the config as the string 'false', which is truthy: mixed precision would stay on.
    ``--datalist None`` is dropped by MONAI's command line, so the config's datalist would be used after all."""
    with pytest.raises(ValueError, match=re.escape(f"--amp {spelling} instead of --amp {value}")):
        check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, "--amp", value])
    check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, f"--amp={spelling}"])


def test_outside_the_bundle_command_line_nothing_is_checked():
    check_cli_overrides(["pytest", "--max_epoch", "2"])


@pytest.mark.slow
def test_the_bundle_command_stops_on_an_unknown_override():
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS, "--num_volume", "2"]
    result = subprocess.run(command, cwd=os.path.join(BUNDLES, "glmae_pretraining"), capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=120)
    assert result.returncode != 0
    assert "unknown config id(s) on the command line: --num_volume (did you mean --num_volumes?)" in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ValueError: unknown config id(s) on the command line: --num_volume")


def run_btcv(*args, cwd_bundle="glmae_btcv_segmentation", config="configs/train.json"):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    return subprocess.run(command, cwd=os.path.join(BUNDLES, cwd_bundle), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=300)


def last_line(result) -> str:
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_the_cause_is_the_last_line_of_a_failed_run(tmp_path):
    """MONAI wraps a project error in 'Failed to evaluate ConfigExpression'; the run still ends on the cause."""
    result = run_btcv("--dataset_dir", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert last_line(result) == f"error: FileNotFoundError: datalist file '{tmp_path / 'nowhere'}/dataset_0.json' does not exist."
    assert "Traceback" in result.stderr  # the traceback is still there, above


@pytest.mark.slow
def test_the_cause_is_the_last_line_when_a_dataloader_worker_fails(tmp_path):
    """A bad label read in a DataLoader worker process comes back as text; its project error is still the last line."""
    import json

    import nibabel as nib
    import numpy as np

    image, label = np.zeros((32, 32, 16), np.int16), np.zeros((32, 32, 16), np.uint8)
    label[8:16, 8:16, 4:8] = 40
    for name, array in (("img.nii.gz", image), ("lab.nii.gz", label)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / name))
    entry = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    (tmp_path / "d.json").write_text(json.dumps({"training": [entry], "validation": [entry]}))
    result = run_btcv("--datalist", str(tmp_path / "d.json"), "--cache_rate", "0", "--num_workers", "1",
                      "--max_epochs", "1", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4",
                      "--feature_size", "8", "--roi_size", "[16, 16, 16]", "--output_dir", str(tmp_path / "runs"),
                      "--ckpt_dir", str(tmp_path / "models"))
    assert result.returncode != 0
    assert last_line(result).startswith(f"error: ValueError: label '{tmp_path / 'lab.nii.gz'}' (key 'label') has")
    assert "outside 0..13: 40" in last_line(result)


@pytest.mark.slow
@pytest.mark.parametrize("config,option", [("configs/train.json", "--pretrained_encoder"),
                                           ("configs/inference.json", "--checkpoint")])
def test_a_truncated_checkpoint_is_the_last_line_naming_it(tmp_path, config, option):
    """A truncated encoder file given to training, or model.pt at inference: one line, under the traceback."""
    import json

    import nibabel as nib
    import numpy as np
    import torch

    image, label = np.zeros((32, 32, 32), np.int16), np.zeros((32, 32, 32), np.uint8)
    for name, array in (("img.nii.gz", image), ("lab.nii.gz", label)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / name))
    entry = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    (tmp_path / "d.json").write_text(json.dumps({"training": [entry], "validation": [entry], "testing": [entry]}))
    torch.save({"weight": torch.zeros(64, 64)}, tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:500])
    result = run_btcv("--datalist", str(tmp_path / "d.json"), option, str(tmp_path / "truncated.pt"), "--output_dir",
                      str(tmp_path / "runs"), "--device", "$torch.device('cpu')", config=config)
    assert result.returncode != 0
    assert str(tmp_path / "truncated.pt") in last_line(result) and "truncated" in last_line(result), last_line(result)
    assert last_line(result).startswith("error: ValueError: "), last_line(result)
