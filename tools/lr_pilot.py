"""Learning-rate pilot for GL-MAE pre-training: the pre-training bundle at a few learning rates, side by side.

Runs ``bundles/glmae_pretraining`` once per learning rate (``--base_learning_rate``, an absolute rate at these
batches) with every other setting equal, reads each run's ``train_log.csv`` and writes

    OUT/lr_pilot.csv   lr, then the means over the last 10 % of epochs of the reconstruction and consistency
                       terms, the teacher entropy, log K and the teacher's embedding cosine across volumes
    OUT/lr_pilot.md    the same as a table
    OUT/lr_pilot.png   curves per learning rate: local reconstruction, g2g, teacher entropy, teacher cosine

A good learning rate lowers the reconstruction *and* keeps the consistency branch alive (g2g / g2l and the teacher
entropy well below log K, cosine across volumes well below 1). Every run is a printed ``python -m monai.bundle
run`` command with its own folder under OUT; finished runs are skipped when the pilot is run again.

    python tools/lr_pilot.py --preset quickstart --out pilot_qs --lrs 1e-4 3e-4 1e-3 3e-3
    python tools/lr_pilot.py --preset cpu-large --out pilot_large --lrs 1e-4 3e-4 1e-3
    python tools/lr_pilot.py --preset paper --out pilot_paper --datalist /data/ct/dataset.json --device cuda \\
        --max-epochs 100
"""

from __future__ import annotations

import argparse
import csv
import math
import os

from PIL import Image

from custom_components.handlers.training_log import read_training_log
from custom_components.handlers.validation_log import PLOT_SIZE, plot_curves
from tools.bundle_run import run_bundle

#: pre-training overlays and overrides of each preset (on train.json)
PRESETS = {
    "quickstart": (["quickstart.json"], {}),
    # 4x the quickstart's width at 1.5x its view sizes: 192 wide x 8 layers, 96³ global / 48³ local views
    "cpu-large": (["quickstart.json"], {
        "volume_shape": [96, 96, 64], "global_size": [96, 96, 96], "local_size": [48, 48, 48],
        "roi_size": [48, 48, 48], "hidden_size": 192, "mlp_dim": 768, "num_layers": 8, "num_heads": 6,
        "decoder_hidden_size": 128, "decoder_num_layers": 2, "decoder_num_heads": 4,
    }),
    "paper": ([], {}),
}
SUMMARY = ("loss_rec_local", "loss_rec_global", "loss_g2g", "loss_g2l", "teacher_entropy", "log_k",
           "teacher_cls_cosine")
PANELS = (("loss_rec_local", False), ("loss_g2g", True), ("teacher_entropy", True), ("teacher_cls_cosine", False))


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of ``SUMMARY`` over the last 10 % of epochs (at least one)."""
    tail = rows[-max(1, len(rows) // 10):]
    return {name: sum(r.get(name, math.nan) for r in tail) / len(tail) for name in SUMMARY}


def plot(path: str, logs: dict[str, list[dict[str, float]]]) -> None:
    width, height = PLOT_SIZE
    canvas = Image.new("RGB", (2 * width, 2 * height), "white")
    for i, (name, with_log_k) in enumerate(PANELS):
        longest = max(logs.values(), key=len)
        epochs = [r["epoch"] for r in longest]
        series = {f"lr {lr}": [r.get(name, math.nan) for r in rows] + [math.nan] * (len(epochs) - len(rows))
                  for lr, rows in logs.items()}
        log_k = longest[-1].get("log_k") if with_log_k else None
        title = name + (f" (dashed: log K = {log_k:.3f})" if log_k else "")
        canvas.paste(plot_curves(epochs, series, title, hline=log_k), ((i % 2) * width, (i // 2) * height))
    canvas.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
    parser.add_argument("--out", required=True, help="pilot folder (finished runs in it are reused)")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3], help="base learning rates")
    parser.add_argument("--max-epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--device", help="e.g. cpu, cuda (default: the bundle's choice)")
    parser.add_argument("--datalist", help="unlabelled datalist (default: the quickstart's synthetic data)")
    args = parser.parse_args(argv)
    if args.preset == "paper" and not args.datalist:
        parser.error("--preset paper needs --datalist")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    overlays, preset = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    logs = {}
    for lr in args.lrs:
        folder = os.path.join(os.path.abspath(args.out), f"lr_{lr:g}")
        log = os.path.join(folder, "train_log.csv")
        if not os.path.exists(os.path.join(folder, "done")):
            overrides = preset | {"base_learning_rate": lr, "ckpt_dir": os.path.join(folder, "models"),
                                  "output_dir": folder, "preview_interval": 10**6}
            overrides |= {"max_epochs": args.max_epochs} if args.max_epochs else {}
            overrides |= {"device": args.device} if args.device else {}
            overrides |= ({"datalist": args.datalist} if args.datalist else
                          {"synthetic_data_dir": os.path.join(os.path.abspath(args.out), "data")})
            os.makedirs(folder, exist_ok=True)
            run_bundle("glmae_pretraining", ["train.json", *overlays], overrides, os.path.join(folder, "log.txt"))
            open(os.path.join(folder, "done"), "w").close()
        logs[f"{lr:g}"] = read_training_log(log)
    results = {lr: summary(rows) for lr, rows in logs.items()}
    with open(os.path.join(args.out, "lr_pilot.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["lr", *SUMMARY])
        writer.writeheader()
        writer.writerows({"lr": lr, **{k: f"{v:.4g}" for k, v in row.items()}} for lr, row in results.items())
    lines = ["| lr | " + " | ".join(SUMMARY) + " |", "|---|" + "---|" * len(SUMMARY)]
    lines += [f"| {lr} | " + " | ".join(f"{v:.4g}" for v in row.values()) + " |" for lr, row in results.items()]
    with open(os.path.join(args.out, "lr_pilot.md"), "w") as f:
        f.write(f"Means over the last 10 % of epochs, preset {args.preset}\n\n" + "\n".join(lines) + "\n")
    plot(os.path.join(args.out, "lr_pilot.png"), logs)
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
