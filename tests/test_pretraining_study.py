"""The pre-training study (matched arms x seeds, frozen-encoder probes, effect sizes) at its tiniest size."""

import csv
import json
import math

import pytest
from PIL import Image

from tools import pretraining_study as study

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow


def test_tiny_study_pretrains_each_arm_per_seed_probes_and_fine_tunes_them_and_resumes(tmp_path, capsys):
    arms = [study.RANDOM, "MAE3D (equal compute)"]  # GL-MAE's run is the quickstart's, tested elsewhere
    args = ["--preset", "tiny", "--out", str(tmp_path), "--seeds", "0", "1", "--arms", *arms]
    table = study.main(args)
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ (cd bundles")]
    pretraining = [c for c in commands if "glmae_pretraining" in c]
    finetuning = [c for c in commands if study.FINETUNE_BUNDLE in c]
    assert len(pretraining) == 2  # 1 pre-trained arm x 2 seeds; the random arm is the probes' init baseline
    assert sum("--seed 1" in c for c in pretraining) == 1 and all("--num_local_views 8" in c for c in pretraining)
    assert len(finetuning) == 4  # every arm x seed, from its own encoder
    assert all("--val_interval 1 " in c and "--max_epochs 1 " in c for c in finetuning)  # one evaluation, at the end
    assert {c.split("--pretrained_encoder ")[1].split()[0] for c in finetuning} == {
        str(tmp_path / "pretrain" / f"{study.slug(arm)}_s{seed}" / "models" / "encoder.pt")
        for arm in arms for seed in (0, 1)}
    rows = list(csv.DictReader(open(tmp_path / "study_results.csv")))
    assert {r["arm"] for r in rows} == {*arms, "raw+pos", "oracle", "pos"} and {r["seed"] for r in rows} == {"0", "1"}
    probed = {(p, b) for p in study.PROBES if p != study.FINETUNE for b in ("1", "2")}
    assert {(r["probe"], r["budget"]) for r in rows} == probed | {(study.FINETUNE, "1")}
    assert {r["arm"] for r in rows if r["probe"] == study.FINETUNE} == set(arms)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert table["knn"][arms[1]][2][2] == 2 and table[study.FINETUNE][arms[1]][1][2] == 2  # two seeds per cell
    assert not (tmp_path / "pretrain" / f"{study.slug(study.RANDOM)}_s0" / "seconds.txt").exists()  # not pre-trained
    # the labelled volumes are the probe's first draw, the held-out ones never trained on
    datalist = json.loads((tmp_path / "finetune" / "datalist_s1.json").read_text())
    assert len(datalist["training"]) == 1 and len(datalist["validation"]) == 2
    assert not {c["image"] for c in datalist["training"]} & {c["image"] for c in datalist["validation"]}
    assert len((tmp_path / "finetune" / "mae3d__equal_compute_s1" / "val_metrics.csv").read_text().splitlines()) == 2
    markdown = (tmp_path / "study_results.md").read_text()
    assert f"| {arms[1]} | " in markdown and "vs 2σ" in markdown and "teacher_mutual_information" in markdown
    assert "## Fine-tuning (BTCV bundle" in markdown and "## Fine-tuning runs: time" in markdown
    assert Image.open(tmp_path / "study_results.png").size[0] > 900
    # a second call finds every run done
    capsys.readouterr()
    study.main(args)
    out = capsys.readouterr().out
    assert "$ python tools/probe_encoder.py" not in out and "$ (cd bundles" not in out


def test_effect_is_the_difference_of_means_against_twice_the_pooled_seed_std():
    diff, bar = study.effect((0.6, 0.03, 3), (0.5, 0.04, 3))
    assert diff == pytest.approx(0.1) and bar == pytest.approx(2 * math.sqrt((0.03**2 + 0.04**2) / 2))
