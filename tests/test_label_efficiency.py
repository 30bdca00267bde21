"""The ablation / label-efficiency study at its tiniest size, end to end, and its resume."""

import csv
import importlib.util
import os

import pytest
from PIL import Image

from conftest import REPO_ROOT

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("label_efficiency", os.path.join(REPO_ROOT, "tools", "label_efficiency.py"))
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

ARMS = ["scratch", "+g2l (GL-MAE)"]  # one arm from scratch, one pre-trained: each kind of run, fewest runs


def test_tiny_study_writes_table_plot_and_resumes(tmp_path, capsys):
    args = ["--preset", "tiny", "--out", str(tmp_path), "--arms", *ARMS, "--budgets", "1", "3"]
    table = study.main(args)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["arm"], r["budget"]) for r in rows] == [(a, b) for a in ARMS for b in ("1", "3")]
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert set(table) == set(ARMS) and all(set(cells) == {1, 3} for cells in table.values())
    markdown = (tmp_path / "results.md").read_text()
    assert "| scratch |" in markdown and "3 labelled" in markdown
    assert Image.open(tmp_path / "dice_vs_labels.png").size == (720, 440)
    # each pre-trained arm fine-tuned from its own encoder; scratch from none
    assert (tmp_path / "pretrain" / "g2l__gl_mae" / "models" / "encoder.pt").exists()
    assert not (tmp_path / "pretrain" / "scratch").exists()
    log = (tmp_path / "finetune" / "g2l__gl_mae_n1_s0" / "log.txt").read_text()
    assert "Loaded" in log and "encoder tensors" in log
    # a second call finds every run done and only rewrites the summary
    capsys.readouterr()
    study.main(args)
    assert "$ (cd bundles" not in capsys.readouterr().out
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 4


def test_paper_preset_needs_real_datalists(tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        study.parse_args(["--preset", "paper", "--out", str(tmp_path)])


def test_pretrain_per_seed_pre_trains_each_arm_with_each_seed(tmp_path):
    study.main(["--preset", "tiny", "--out", str(tmp_path), "--arms", "+g2l (GL-MAE)", "--budgets", "1",
                "--seeds", "0", "1", "--pretrain-per-seed"])
    for seed in (0, 1):
        assert (tmp_path / "pretrain" / f"g2l__gl_mae_s{seed}" / "models" / "encoder.pt").exists()
        log = (tmp_path / "finetune" / f"g2l__gl_mae_n1_s{seed}" / "log.txt").read_text()
        assert f"g2l__gl_mae_s{seed}" in log
    assert not (tmp_path / "pretrain" / "g2l__gl_mae").exists()
