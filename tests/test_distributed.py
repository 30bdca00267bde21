"""Scale-out checks on CPU with gloo: N ranks = one process with the same effective batch; distributed
validation = single-process validation."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from bundle_utils import REFERENCE_BUNDLE, make_workflow, run_torchrun, run_workflow, segmentation_overrides
from conftest import REPO_ROOT

from custom_components.synthetic import write_synthetic_dataset

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(REPO_ROOT, "tests", "distributed", "glmae_steps.py")


def run_steps(out_dir, nproc):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT,
               str(out_dir), "--batch", "2", "--steps", "3"]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_ranks_reach_the_weights_of_one_process_and_stay_identical(tmp_path):
    run_steps(tmp_path / "one", 1)
    run_steps(tmp_path / "two", 2)
    assert [open(tmp_path / "two" / f"rank{r}_identical.txt").read() for r in (0, 1)] == ["True", "True"]
    for name in ("student.pt", "teacher.pt", "center.pt"):
        one, two = torch.load(tmp_path / "one" / name), torch.load(tmp_path / "two" / name)
        one, two = (one, two) if isinstance(one, dict) else ({"center": one}, {"center": two})
        for key in one:
            assert torch.allclose(one[key], two[key], atol=1e-5), (name, key)
    # the comparison is meaningful: training moved the weights far more than the tolerance
    initial, trained = torch.load(tmp_path / "one" / "initial_student.pt"), torch.load(tmp_path / "one" / "student.pt")
    assert max((trained[k] - initial[k]).abs().max() for k in initial) > 1e-2
    assert torch.load(tmp_path / "one" / "center.pt").abs().max() > 1e-3


@pytest.fixture(scope="module")
def evaluated_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_eval")
    datalist = write_synthetic_dataset(root / "data", num_volumes=4, shape=(48, 48, 32), num_folds=2, num_test=0,
                                       seed=5)
    overrides = segmentation_overrides(root, datalist, max_epochs=1)
    run_workflow(make_workflow(REFERENCE_BUNDLE, ["train.json"], **overrides))
    return root, overrides


def mean_dice(eval_dir):
    rows = list(csv.reader(open(eval_dir / "metrics.csv")))
    return {row[0]: float(row[1]) for row in rows}


def test_distributed_validation_equals_single_process(evaluated_model):
    root, overrides = evaluated_model
    single = overrides | {"output_dir": str(root / "single")}
    run_workflow(make_workflow(REFERENCE_BUNDLE, ["train.json", "evaluate.json"], **single))
    run_torchrun(REFERENCE_BUNDLE, ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
                 **(overrides | {"output_dir": str(root / "dist")}))
    single, distributed = mean_dice(root / "single" / "eval"), mean_dice(root / "dist" / "eval")
    assert set(single) == {"val_mean_dice", "val_hd95", "val_nsd"}
    for key in single:
        assert distributed[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    raw = list(csv.reader(open(root / "dist" / "eval" / "val_mean_dice_raw.csv")))
    assert len(raw) == 1 + 2  # both validation cases, each once
