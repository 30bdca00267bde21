"""The pre-training study (matched arms x seeds, frozen-encoder probes, effect sizes) at its tiniest size."""

import csv
import math

import pytest
from PIL import Image

from tools import pretraining_study as study


def test_tiny_study_pretrains_each_arm_per_seed_probes_them_and_resumes(tmp_path, capsys):
    arms = [study.RANDOM, "MAE3D (equal compute)", "GL-MAE"]
    args = ["--preset", "tiny", "--out", str(tmp_path), "--seeds", "0", "1", "--arms", *arms]
    table = study.main(args)
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ (cd bundles")]
    assert len(commands) == 4  # 2 pre-trained arms x 2 seeds; the random arm is the probes' init baseline
    assert sum("--seed 1" in c for c in commands) == 2 and sum("--num_local_views 8" in c for c in commands) == 2
    rows = list(csv.DictReader(open(tmp_path / "study_results.csv")))
    assert {r["arm"] for r in rows} == {*arms, "raw+pos", "oracle", "pos"} and {r["seed"] for r in rows} == {"0", "1"}
    assert {(r["probe"], r["budget"]) for r in rows} == {(p, b) for p in study.PROBES for b in ("1", "2")}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert table["knn"]["GL-MAE"][2][2] == 2  # two seeds per cell
    assert all((tmp_path / "pretrain" / f"gl_mae_s{seed}" / "models" / "encoder.pt").exists() for seed in (0, 1))
    assert not (tmp_path / "pretrain" / "random__0_step__s0").exists()
    markdown = (tmp_path / "study_results.md").read_text()
    assert "| GL-MAE | " in markdown and "vs 2σ" in markdown and "teacher_mutual_information" in markdown
    assert Image.open(tmp_path / "study_results.png").size[0] > 900
    # a second call finds every run done
    capsys.readouterr()
    study.main(args)
    assert "$ python tools/probe_encoder.py" not in capsys.readouterr().out


def test_effect_is_the_difference_of_means_against_twice_the_pooled_seed_std():
    diff, bar = study.effect((0.6, 0.03, 3), (0.5, 0.04, 3))
    assert diff == pytest.approx(0.1) and bar == pytest.approx(2 * math.sqrt((0.03**2 + 0.04**2) / 2))
