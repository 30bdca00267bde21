"""tools/bundle_run.py: the one builder of ``python -m monai.bundle run`` command lines, and its runner."""

import json
import os
import shlex
import sys
import time

import pytest

from conftest import REPO_ROOT
from tools import bundle_run
from tools.bundle_run import bundle_command, display_command, finetuning_bundles, run_bundle

BUNDLE = "glmae_btcv_segmentation"
CONFIGS = ["train.json", "quickstart.json"]
CONFIG_ARG = "['configs/train.json','configs/quickstart.json']"


def test_single_process_argv():
    command = bundle_command(BUNDLE, CONFIGS, {"max_epochs": 2, "device": "cpu"})
    assert command == [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIG_ARG,
                       "--max_epochs", "2", "--device", "cpu"]
    assert bundle_command(BUNDLE, ["train.json"]) == [sys.executable, "-m", "monai.bundle", "run", "--config_file",
                                                      "['configs/train.json']"]


def test_torchrun_argv():
    command = bundle_command(BUNDLE, ["train.json", "multi_gpu_train.json"], {"seed": 1}, nproc=2)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "monai.bundle", "run", "--config_file",
                       "['configs/train.json','configs/multi_gpu_train.json']", "--seed", "1"]
    with pytest.raises(ValueError, match="nproc"):
        bundle_command(BUNDLE, CONFIGS, nproc=0)


def test_lists_and_dicts_are_json_encoded_others_str():
    overrides = {"volume_shape": [48, 48, 32], "extra": {"a": 1}, "lr": 1e-4, "flag": True, "path": "/x y/z.pt"}
    command = bundle_command(BUNDLE, CONFIGS, overrides)
    values = dict(zip(command[6::2], command[7::2]))
    assert values == {"--volume_shape": "[48, 48, 32]", "--extra": '{"a": 1}', "--lr": "0.0001", "--flag": "True",
                      "--path": "/x y/z.pt"}
    assert json.loads(values["--volume_shape"]) == [48, 48, 32]


def test_missing_bundle_or_config_is_a_value_error_naming_it():
    missing = os.path.join(bundle_run.BUNDLES, BUNDLE, "configs", "no_such.json")
    with pytest.raises(ValueError, match="no_such.json") as error:
        bundle_command(BUNDLE, ["train.json", "no_such.json"])
    assert missing in str(error.value)
    with pytest.raises(ValueError, match="no_such_bundle"):
        bundle_command("no_such_bundle", CONFIGS)
    with pytest.raises(ValueError, match="non-empty"):
        bundle_command(BUNDLE, [])


def test_display_command_is_copy_pasteable(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    line = display_command(BUNDLE, CONFIGS, {"path": "/a b/c.pt", "volume_shape": [4, 4]}, nproc=2)
    assert line.startswith(f"(cd bundles/{BUNDLE} && python -m torch.distributed.run --standalone ")
    assert line.endswith(")")
    inner = line[1:-1].split(" && ", 1)[1]
    assert shlex.split(inner)[1:] == bundle_command(BUNDLE, CONFIGS, {"path": "/a b/c.pt", "volume_shape": [4, 4]},
                                                    nproc=2)[1:]


def test_finetuning_bundles_exclude_pretraining():
    assert BUNDLE in finetuning_bundles("quickstart.json")
    assert bundle_run.PRETRAINING_BUNDLE not in finetuning_bundles("quickstart.json")
    assert finetuning_bundles("no_such.json") == []


@pytest.fixture
def scratch_bundle(tmp_path, monkeypatch):
    """A bundle ``scratch`` under a temporary BUNDLES folder, with an empty ``configs/run.json``."""
    monkeypatch.setattr(bundle_run, "BUNDLES", str(tmp_path / "bundles"))
    (tmp_path / "bundles" / "scratch" / "configs").mkdir(parents=True)
    (tmp_path / "bundles" / "scratch" / "configs" / "run.json").write_text("{}")
    return tmp_path / "bundles" / "scratch"


def fake_command(monkeypatch, code: str) -> None:
    """Make run_bundle run ``python -c code`` instead of a bundle, to check the runner in milliseconds."""
    monkeypatch.setattr(bundle_run, "bundle_command", lambda *args, **kwargs: [sys.executable, "-c", code])


def test_runs_in_the_bundle_folder_with_repo_on_pythonpath_and_env(scratch_bundle, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    fake_command(monkeypatch, "import os; print(os.getcwd()); print(os.environ['PYTHONPATH']); "
                              "print(os.environ['OMP_NUM_THREADS'])")
    result = run_bundle("scratch", ["run.json"], env={"OMP_NUM_THREADS": "1"}, capture=True)
    assert result.returncode == 0
    assert result.stdout.split("\n")[:3] == [str(scratch_bundle), os.pathsep.join([REPO_ROOT, "/elsewhere"]), "1"]
    assert capsys.readouterr().out.startswith(f"$ (cd {os.path.relpath(scratch_bundle)} && python -c ")


def test_failure_with_capture_quotes_the_output_tail(scratch_bundle, monkeypatch):
    fake_command(monkeypatch, "import sys; print('x' * 5000 + 'the end'); sys.exit(3)")
    with pytest.raises(RuntimeError, match="scratch failed with exit code 3") as error:
        run_bundle("scratch", ["run.json"], capture=True, echo=False)
    assert "the end" in str(error.value) and len(str(error.value)) < bundle_run.TAIL_CHARS + 200


def test_timeout_kills_the_whole_process_group(scratch_bundle, monkeypatch):
    # the child starts a grandchild that holds the output pipe, as torchrun's workers do
    fake_command(monkeypatch, "import subprocess, sys, time; print('started', flush=True); "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    start = time.time()
    with pytest.raises(RuntimeError, match="timed out after 1 s") as error:
        run_bundle("scratch", ["run.json"], capture=True, echo=False, timeout=1)
    assert time.time() - start < 15 and "started" in str(error.value)


@pytest.mark.slow
def test_failing_bundle_run_names_the_log_file(scratch_bundle, tmp_path):
    """A real ``python -m monai.bundle run`` whose ``run`` expression fails (about 4 s: importing MONAI)."""
    (scratch_bundle / "configs" / "run.json").write_text(json.dumps({"run": "$int('not a number')"}))
    log_file = str(tmp_path / "log.txt")
    with pytest.raises(RuntimeError, match="scratch failed with exit code 1") as error:
        run_bundle("scratch", ["run.json"], {"unused": [1, 2]}, log_file, echo=False)
    assert log_file in str(error.value)
    assert "not a number" in open(log_file).read()
    with pytest.raises(ValueError, match="not both"):
        run_bundle("scratch", ["run.json"], log_file=log_file, capture=True)
