"""Does pre-training give a better encoder than a random one? The CPU study: matched pre-training arms, several
pre-training seeds, frozen-encoder probes of every encoder, effect sizes against the spread over seeds.

Arms (each pre-trained with the pre-training bundle's ``train.json`` + ``study_cpu.json`` [+ the arm's overlay],
once per seed, with that seed):

    random (0-step)          no pre-training: the same ViT at the pre-training's own initialisation (the probe
                             tool's ``init`` baseline, built with the seed)
    MAE3D (equal compute)    local reconstruction only (``ablation_local_rec.json``) with 8 local views instead of 4:
                             without global views MAE3D would see about half the tokens per step; 8 local views of
                             64³ match GL-MAE's student and decoder tokens (2 global views of 80³ + 4 local views)
    +global_rec              local + global reconstruction, GL-MAE's views, no consistency terms
    GL-MAE                   the full objective

Every encoder of one seed is probed in one run of ``tools/probe_encoder.py`` (the same probe volumes and the same
draws of labelled volumes for every arm, so arms are compared pairwise), whose baselines ``raw+pos``, ``oracle``
(the positive control: how high a probe can score on the data) and ``pos`` come with it. Writes, in OUT:

    pretrain/<arm>_s<seed>/     each pre-training run: models/encoder.pt, train_log.csv, log.txt, seconds.txt
    probes/s<seed>/             each seed's probe report (probe_results.csv/.md/.png)
    study_results.csv           arm, seed, probe, budget, score (the mean over the probe's draws for that seed)
    study_results.md            mean ± std over seeds per arm, probe and budget; the effect of each arm against
                                random (0-step) beside 2 × the pooled std over seeds; the GL-MAE runs' monitors
    study_results.png           score against labelled volumes per probe, one line per arm (mean over seeds)

A second invocation skips what is done, so an interrupted study resumes.

    python tools/pretraining_study.py --out study                       # 3 seeds x 3 pre-trained arms, CPU
    python tools/pretraining_study.py --out study --seeds 3 4 5         # the same with other seeds
    python tools/pretraining_study.py --out study --device cuda --pretrain-datalist /data/ct/dataset.json \\
        --probe-datalist /data/btcv/dataset_0.json
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as `python tools/pretraining_study.py` from a checkout without installing
    sys.path.insert(0, REPO_ROOT)

from custom_components.handlers.training_log import read_training_log  # noqa: E402
from tools import probe_encoder  # noqa: E402
from tools.bundle_run import PRETRAINING_BUNDLE, run_bundle  # noqa: E402
from tools.plots import plot_panels  # noqa: E402

RANDOM = "random (0-step)"
#: arm -> (pre-training overlays after train.json + the preset, overrides); None: not pre-trained
ARMS = {
    RANDOM: None,
    "MAE3D (equal compute)": (["ablation_local_rec.json"], {"num_local_views": 8}),
    "+global_rec": (["ablation_global_rec.json"], {}),
    "GL-MAE": ([], {}),
}
PROBES = ("knn", "linear", "segmentation")
REFERENCES = ("raw+pos", "oracle", "pos")  # the probe tool's baselines that are no arm (no effect is computed)
MONITORS = ("loss_rec_local", "loss_g2g", "loss_g2l", "teacher_entropy", "teacher_marginal_entropy",
            "teacher_mutual_information", "teacher_cls_cosine")
#: the preset: pre-training overlay and overrides, the probe tool's arguments
PRESETS = {
    "cpu": {"pretrain": (["study_cpu.json"], {}), "num_heads": 4,
            "probe": ["--num_volumes", "40", "--num_test", "16", "--volume_shape", "128", "128", "96",
                      "--seg_stride", "4"]},  # the probe tool's defaults, spelled out
    "tiny": {  # the test suite's size: seconds per run
        "pretrain": (["study_cpu.json"], {"max_epochs": 1, "num_volumes": 3, "volume_shape": [64, 64, 48],
                                          "global_size": [48, 48, 48], "local_size": [32, 32, 32],
                                          "roi_size": [32, 32, 32], "hidden_size": 48, "mlp_dim": 96,
                                          "num_layers": 2, "num_heads": 4, "head_out_dim": 64,
                                          "decoder_hidden_size": 48, "decoder_num_layers": 1, "batch_size": 1}),
        "num_heads": 4,
        "probe": ["--num_volumes", "6", "--num_test", "2", "--volume_shape", "32", "32", "32", "--budgets", "1", "2",
                  "--splits", "2", "--seg_steps", "5", "--min_organ_fraction", "0.02"],
    },
}


def pretrain(arm: str, seed: int, args: argparse.Namespace) -> str:
    """Pre-train ``arm`` with ``seed`` (skipped when done); returns the encoder path."""
    folder = os.path.join(args.out, "pretrain", f"{slug(arm)}_s{seed}")
    encoder = os.path.join(folder, "models", "encoder.pt")
    if os.path.exists(os.path.join(folder, "seconds.txt")):
        return encoder
    configs, overrides = PRESETS[args.preset]["pretrain"]
    overlays, arm_overrides = ARMS[arm]
    overrides = overrides | arm_overrides | {"ckpt_dir": os.path.join(folder, "models"), "output_dir": folder,
                                             "seed": seed}
    if args.device:
        overrides["device"] = args.device
    if args.pretrain_datalist:
        overrides["datalist"] = args.pretrain_datalist
    else:
        overrides["synthetic_data_dir"] = os.path.join(args.out, "data", "pretrain")
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    run_bundle(PRETRAINING_BUNDLE, ["train.json", *configs, *overlays], overrides, os.path.join(folder, "log.txt"))
    with open(os.path.join(folder, "seconds.txt"), "w") as f:
        f.write(f"{time.time() - start:.1f}\n")
    return encoder


def probe(seed: int, encoders: dict[str, str], args: argparse.Namespace) -> str:
    """Probe every encoder of one seed, with the baselines; returns the probe folder."""
    folder = os.path.join(args.out, "probes", f"s{seed}")
    if not os.path.exists(os.path.join(folder, "probe_results.csv")):
        argv = [arg for name, path in encoders.items() for arg in ("--encoder", f"{name}={path}")]
        argv += ["--num_heads", str(PRESETS[args.preset]["num_heads"]), "--seed", str(seed), "--out", folder,
                 *PRESETS[args.preset]["probe"]]
        argv += ["--device", args.device] if args.device else []
        argv += ["--datalist", args.probe_datalist] if args.probe_datalist else []
        print("$ python tools/probe_encoder.py " + " ".join(argv), flush=True)
        probe_encoder.main(argv)
    return folder


def seed_scores(folder: str, seed: int) -> list[dict]:
    """The probe report of one seed as rows ``arm, seed, probe, budget, score``: the mean over the draws."""
    draws: dict = {}
    with open(os.path.join(folder, "probe_results.csv")) as f:
        for row in csv.DictReader(f):
            if row["probe"] in PROBES:
                arm = RANDOM if row["encoder"] == "init" else row["encoder"]
                draws.setdefault((arm, row["probe"], int(row["budget"])), [])
                if not math.isnan(float(row["score"])):  # NaN: no organ token in that draw's volumes
                    draws[arm, row["probe"], int(row["budget"])].append(float(row["score"]))
    return [{"arm": arm, "seed": seed, "probe": p, "budget": b, "score": statistics.mean(v)}
            for (arm, p, b), v in draws.items() if v]


def summarise(rows: list[dict]) -> dict:
    """``{probe: {arm: {budget: (mean, std, n)}}}`` over seeds."""
    scores: dict = {}
    for row in rows:
        scores.setdefault(row["probe"], {}).setdefault(row["arm"], {}).setdefault(row["budget"], []).append(row["score"])
    return {p: {a: {b: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
                    for b, v in cells.items()} for a, cells in arms.items()} for p, arms in scores.items()}


def effect(arm: tuple[float, float, int], base: tuple[float, float, int]) -> tuple[float, float]:
    """(difference of the means, 2 x the pooled std over seeds)."""
    return arm[0] - base[0], 2 * math.sqrt((arm[1] ** 2 + base[1] ** 2) / 2)


def monitors(args: argparse.Namespace, seeds: list[int]) -> list[str]:
    """Markdown rows of the last-epoch monitors and the time of every pre-training run."""
    lines = ["| run | seconds | " + " | ".join(MONITORS) + " |", "|---|---|" + "---|" * len(MONITORS)]
    for arm, spec in ARMS.items():
        for seed in seeds if spec is not None else []:
            folder = os.path.join(args.out, "pretrain", f"{slug(arm)}_s{seed}")
            rows = read_training_log(os.path.join(folder, "train_log.csv"))
            if not rows:
                continue
            with open(os.path.join(folder, "seconds.txt")) as f:
                seconds = f.read().strip()
            values = [f"{rows[-1][m]:.3f}" if m in rows[-1] else "–" for m in MONITORS]
            lines.append(f"| {arm}, seed {seed} | {seconds} | " + " | ".join(values) + " |")
    return lines


def write_markdown(path: str, table: dict, args: argparse.Namespace, seeds: list[int]) -> None:
    budgets = sorted({b for arms in table.values() for cells in arms.values() for b in cells})
    lines = ["# Pre-training study: frozen-encoder probes", "",
             f"Seeds {', '.join(map(str, seeds))}; each cell is the mean ± std over pre-training seeds of the probe "
             "score (itself the mean over the probe's draws of labelled volumes). Effect: the arm's mean minus "
             f"{RANDOM}'s, beside 2 × the pooled std over seeds: `above` or `below` random where the effect is larger "
             "than that, `within` where it is not.", ""]
    for probe in PROBES:
        if probe not in table:
            continue
        lines += [f"## {probe_encoder.PROBE_TITLES[probe]}", "",
                  "| arm | " + " | ".join(f"{b} labelled" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        base = table[probe].get(RANDOM, {})
        for arm, cells in table[probe].items():
            values = []
            for b in budgets:
                if b not in cells:
                    values.append("–")
                    continue
                mean, std, n = cells[b]
                text = f"{mean:.3f} ± {std:.3f} (n={n})"
                if arm not in (RANDOM, *REFERENCES) and b in base:
                    diff, bar = effect(cells[b], base[b])
                    verdict = "above" if diff > bar else "below" if diff < -bar else "within"
                    text += f"; {diff:+.3f} vs 2σ {bar:.3f}: {verdict}"
                values.append(text)
            lines.append(f"| {arm} | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["## Pre-training runs: time and last-epoch monitors", "", *monitors(args, seeds), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path: str, table: dict) -> None:
    """Mean score over seeds against labelled volumes, one panel per probe, one line per arm."""
    budgets = sorted({b for arms in table.values() for cells in arms.values() for b in cells})
    panels = {probe_encoder.PLOT_TITLES[p]: {arm: {b: s[0] for b, s in cells.items()} for arm, cells in table[p].items()}
              for p in PROBES if p in table}
    plot_panels(path, panels, budgets, "labelled training volumes", legend=190)


def slug(arm: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in arm).strip("_").lower()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="study folder (resumes what it finds there)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="pre-training seeds (default 0 1 2)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--device", help="e.g. cpu, cuda, for pre-training and probes (default: the bundle's choice, cpu for probes)")
    parser.add_argument("--pretrain-datalist", help="unlabelled datalist (default: the preset's synthetic data)")
    parser.add_argument("--probe-datalist", help="labelled datalist for the probes (default: synthetic)")
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    for name in ("pretrain_datalist", "probe_datalist"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for seed in args.seeds:
        encoders = {arm: pretrain(arm, seed, args) for arm in args.arms if ARMS[arm] is not None}
        rows += seed_scores(probe(seed, encoders, args), seed)
    rows = [r for r in rows if r["arm"] in args.arms or r["arm"] in REFERENCES]
    with open(os.path.join(args.out, "study_results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "seed", "probe", "budget", "score"])
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows)
    write_markdown(os.path.join(args.out, "study_results.md"), table, args, args.seeds)
    plot(os.path.join(args.out, "study_results.png"), table)
    print(open(os.path.join(args.out, "study_results.md")).read(), flush=True)
    return table


if __name__ == "__main__":
    main()
