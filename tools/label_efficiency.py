"""The paper's two claims as one runnable study: the ablation (each GL-MAE component helps) and label efficiency
(pre-training helps most when labels are scarce).

Pre-trains the four ablation variants with the pre-training bundle (local reconstruction only = MAE3D; + global
reconstruction; + global-to-global; + global-to-local = full GL-MAE), fine-tunes the BTCV bundle from each of
them and from scratch at several label budgets and seeds, and writes

    OUT/results.csv          arm,budget,seed,dice (one row per fine-tuning run, appended as runs finish)
    OUT/results.md           mean ± std validation Dice per arm and budget
    OUT/dice_vs_labels.png   Dice against the number of labelled volumes, one line per arm

Every run is a ``python -m monai.bundle run`` command (printed before it runs, see ``tools/bundle_run.py``) with
its own folder under OUT; a second invocation skips what is already done, so an interrupted study resumes where it
stopped.

``--bundle NAME`` picks the fine-tuning bundle under ``bundles/`` (default ``glmae_btcv_segmentation``). It is run
with ``train.json`` plus the preset's overlays and the overrides ``ckpt_dir``, ``output_dir``, ``num_labelled``,
``seed``, ``pretrained_encoder`` and ``synthetic_data_dir`` (or ``datalist``), and must write ``best_metric.json`` with
``val_mean_dice`` into ``output_dir``, as the BTCV bundle does.

    python tools/label_efficiency.py --preset cpu --out study          # synthetic data, ~30 min on 2 CPU cores
    python tools/label_efficiency.py --preset cpu --out study --arms scratch "local_rec (MAE3D)" "+g2l (GL-MAE)" \
        --seeds 0 1 2 --pretrain-per-seed                              # 3 arms x 3 seeds, pre-training included
    python tools/label_efficiency.py --preset paper --out study \\
        --pretrain-datalist /data/ct/dataset.json --finetune-datalist /data/btcv/dataset_0.json
    python tools/label_efficiency.py --preset tiny --out study_tiny --bundle glmae_btcv_segmentation
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time

from PIL import Image, ImageDraw

from tools.bundle_run import PRETRAINING_BUNDLE, finetuning_bundles, run_bundle
from tools.plots import draw_legend, draw_lines

DEFAULT_BUNDLE = "glmae_btcv_segmentation"

#: arm -> pre-training overlays on train.json (None: fine-tune from scratch). Order = the paper's ablation rows.
ARMS = {
    "scratch": None,
    "local_rec (MAE3D)": ["ablation_local_rec.json"],
    "+global_rec": ["ablation_global_rec.json"],
    "+g2g": ["ablation_g2g.json"],
    "+g2l (GL-MAE)": [],
}

#: pre-training overlays/overrides, fine-tuning overlays/overrides, budgets and seeds of each preset.
PRESETS = {
    "tiny": {  # the test suite's size: seconds per run
        "pretrain": (["quickstart.json"], {"max_epochs": 1, "num_volumes": 3, "volume_shape": [48, 48, 32],
                                           "hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "head_out_dim": 64,
                                           "decoder_hidden_size": 48, "decoder_num_layers": 1, "batch_size": 1}),
        "finetune": (["quickstart.json"], {"max_epochs": 1, "val_interval": 1, "num_volumes": 6, "num_folds": 3,
                                           "volume_shape": [48, 48, 32], "hidden_size": 48, "mlp_dim": 96,
                                           "num_heads": 4, "feature_size": 8, "num_samples": 1}),
        "budgets": [1, 3], "seeds": [0],
    },
    "cpu": {  # synthetic data, about 30 minutes on 2 CPU cores
        "pretrain": (["quickstart.json"], {}),
        "finetune": (["quickstart.json"], {"max_epochs": 30, "val_interval": 10}),
        "budgets": [2, 4, 8], "seeds": [0],
    },
    "paper": {  # real data on GPU: the paper's sizes, BTCV budgets 3 / 6 / 12 / all 24
        "pretrain": ([], {}),
        "finetune": ([], {}),
        "budgets": [3, 6, 12, 24], "seeds": [0, 1, 2],
    },
}


def pretrain(arm: str, overlays: list[str], preset: dict, args: argparse.Namespace, seed: int | None = None) -> str:
    """Pre-train one ablation variant (skipped when its encoder exists), with ``seed`` when given; returns the
    encoder path."""
    folder = os.path.join(args.out, "pretrain", slug(arm) + ("" if seed is None else f"_s{seed}"))
    encoder = os.path.join(folder, "models", "encoder.pt")
    if os.path.exists(os.path.join(folder, "done")):
        return encoder
    configs, overrides = preset["pretrain"]
    overrides = overrides | common_overrides(args) | {"ckpt_dir": os.path.join(folder, "models"), "output_dir": folder}
    overrides |= {} if seed is None else {"seed": seed}
    if args.pretrain_datalist:
        overrides["datalist"] = args.pretrain_datalist
    else:
        overrides["synthetic_data_dir"] = os.path.join(args.out, "data", "pretrain")
    os.makedirs(folder, exist_ok=True)
    run_bundle(PRETRAINING_BUNDLE, ["train.json", *configs, *overlays], overrides, os.path.join(folder, "log.txt"))
    open(os.path.join(folder, "done"), "w").close()
    return encoder


def finetune(arm: str, encoder: str | None, budget: int, seed: int, preset: dict, args: argparse.Namespace) -> float:
    """Fine-tune ``args.bundle`` (the BTCV bundle by default) with ``budget`` labelled volumes; returns the best
    validation mean Dice."""
    folder = os.path.join(args.out, "finetune", f"{slug(arm)}_n{budget}_s{seed}")
    configs, overrides = preset["finetune"]
    overrides = overrides | common_overrides(args) | {
        "ckpt_dir": os.path.join(folder, "models"), "output_dir": folder, "num_labelled": budget, "seed": seed,
        "pretrained_encoder": encoder or "",
    }
    if args.finetune_datalist:
        overrides["datalist"] = args.finetune_datalist
    else:
        overrides["synthetic_data_dir"] = os.path.join(args.out, "data", "finetune")
    os.makedirs(folder, exist_ok=True)
    run_bundle(args.bundle, ["train.json", *configs], overrides, os.path.join(folder, "log.txt"))
    with open(os.path.join(folder, "best_metric.json")) as f:
        return float(json.load(f)["val_mean_dice"])


def common_overrides(args: argparse.Namespace) -> dict:
    return {"device": args.device} if args.device else {}


def slug(arm: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in arm).strip("_").lower()


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{"arm": r["arm"], "budget": int(r["budget"]), "seed": int(r["seed"]), "dice": float(r["dice"])}
                for r in csv.DictReader(f)]


def append_result(path: str, row: dict) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "budget", "seed", "dice"])
        if new:
            writer.writeheader()
        writer.writerow(row)


def summarise(rows: list[dict], arms: list[str], budgets: list[int]) -> dict:
    """``{arm: {budget: (mean, std, n)}}`` over seeds."""
    table: dict = {}
    for arm in arms:
        for budget in budgets:
            values = [r["dice"] for r in rows if r["arm"] == arm and r["budget"] == budget]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                table.setdefault(arm, {})[budget] = (statistics.mean(values), std, len(values))
    return table


def write_markdown(path: str, table: dict, budgets: list[int]) -> None:
    lines = ["| arm | " + " | ".join(f"{b} labelled" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for arm, cells in table.items():
        values = [f"{cells[b][0]:.3f} ± {cells[b][1]:.3f} (n={cells[b][2]})" if b in cells else "–" for b in budgets]
        lines.append(f"| {arm} | " + " | ".join(values) + " |")
    with open(path, "w") as f:
        f.write("Validation mean Dice (mean ± std over seeds)\n\n" + "\n".join(lines) + "\n")


def plot(path: str, table: dict, budgets: list[int], size=(720, 440), margin=(70, 40, 200, 60)) -> None:
    """Dice against labelled volumes, one coloured line per arm, drawn with PIL."""
    left, top, right, bottom = margin
    width, height = size[0] - left - right, size[1] - top - bottom
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    series = {arm: {b: mean for b, (mean, _, _) in cells.items()} for arm, cells in table.items()}
    draw_lines(draw, (left, top, width, height), series, budgets, "validation mean Dice vs labels",
               "labelled training volumes")
    draw_legend(draw, (left + width + 15, top + 15), list(series))
    image.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", required=True, help="study folder (resumes what it finds there)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--budgets", nargs="+", type=int, help="labelled training volumes (default: the preset's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="fine-tuning seeds (default: the preset's)")
    parser.add_argument("--pretrain-per-seed", action="store_true",
                        help="pre-train every arm once per seed (with that seed), so the spread over seeds includes "
                             "pre-training; by default each arm is pre-trained once and the seeds vary fine-tuning")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, choices=finetuning_bundles("train.json"),
                        help="the fine-tuning bundle (default: %(default)s)")
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: the bundles' choice)")
    parser.add_argument("--pretrain-datalist", help="unlabelled datalist (default: synthetic data)")
    parser.add_argument("--finetune-datalist", help="labelled datalist with folds (default: synthetic data)")
    args = parser.parse_args(argv)
    if args.preset == "paper" and not (args.pretrain_datalist and args.finetune_datalist):
        parser.error("--preset paper needs --pretrain-datalist and --finetune-datalist")
    # the bundles run in their own folders: paths given relative to here must not be read relative to there
    args.out = os.path.abspath(args.out)
    for name in ("pretrain_datalist", "finetune_datalist"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    budgets, seeds = args.budgets or preset["budgets"], args.seeds or preset["seeds"]
    os.makedirs(args.out, exist_ok=True)
    results_csv = os.path.join(args.out, "results.csv")
    done = {(r["arm"], r["budget"], r["seed"]) for r in read_results(results_csv)}
    runs = [(arm, b, s) for arm in args.arms for b in budgets for s in seeds]
    start = time.time()
    for index, (arm, budget, seed) in enumerate(runs, 1):
        if (arm, budget, seed) in done:
            continue
        pretrain_seed = seed if args.pretrain_per_seed else None
        encoder = pretrain(arm, ARMS[arm], preset, args, pretrain_seed) if ARMS[arm] is not None else None
        dice = finetune(arm, encoder, budget, seed, preset, args)
        append_result(results_csv, {"arm": arm, "budget": budget, "seed": seed, "dice": dice})
        print(f"[{index}/{len(runs)}] {arm}, {budget} labelled, seed {seed}: Dice {dice:.4f} "
              f"({time.time() - start:.0f} s so far)", flush=True)
    table = summarise(read_results(results_csv), args.arms, budgets)
    write_markdown(os.path.join(args.out, "results.md"), table, budgets)
    plot(os.path.join(args.out, "dice_vs_labels.png"), table, budgets)
    print(open(os.path.join(args.out, "results.md")).read())
    return table


if __name__ == "__main__":
    main()
