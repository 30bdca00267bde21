"""The quickstart: GL-MAE pre-training, then fine-tuning from the pre-trained encoder (BTCV segmentation by default,
or another segmentation bundle, or the CC-CCII classifier), on synthetic data.

Runs each bundle exactly as a user would, with ``python -m monai.bundle run`` in the bundle's folder, using the
CPU-sized ``quickstart.json`` overlays (a synthetic CT-like dataset is written on the first run). Prints each
command before running it. Outputs land in each bundle's ``models/`` and ``runs/`` folders.

    python tools/quickstart.py            # pre-train, then fine-tune and print the validation Dice
    python tools/quickstart.py --skip-finetune
    python tools/quickstart.py --bundle glmae_btcv_segmentation   # the fine-tuning bundle (default)
    python tools/quickstart.py --bundle glmae_ccccii_classification   # the classifier; prints its validation AUC
"""

from __future__ import annotations

import argparse
import json
import os
import time

from custom_components.handlers.training_log import read_training_log
from tools.bundle_run import PRETRAINING_BUNDLE, bundle_dir, display_command, finetuning_bundles, run_bundle

CONFIGS = ["train.json", "quickstart.json"]
#: what to run next on the model the quickstart trained: (what it does, configs). quickstart.json rebuilds the
#: small network the model was trained with (the configs alone build the ViT-B default) and points at its data.
NEXT_STEPS = (
    ("evaluate it on the validation fold in each image's original space (Dice, HD95, NSD per class, runs/eval/)",
     ["train.json", "quickstart.json", "evaluate.json"]),
    ("segment the synthetic test images with it (runs/inference/: NIfTI label maps and overlays)",
     ["inference.json", "quickstart.json"]),
)
#: the same for a classification bundle (``*_classification``).
CLASSIFICATION_NEXT_STEPS = (
    ("evaluate it on the validation fold (accuracy, macro AUC, confusion matrix CSV and PNG, runs/eval/)",
     ["train.json", "quickstart.json", "evaluate.json"]),
    ("classify the synthetic test scans with it (runs/inference/predictions.csv: probabilities, predicted class)",
     ["inference.json", "quickstart.json"]),
)
#: the validation metric a fine-tuning bundle's best_metric.json reports, and its name, per kind of bundle.
KEY_METRICS = {"segmentation": ("val_mean_dice", "validation mean Dice"),
               "classification": ("val_auc", "validation macro AUC")}


def bundle_kind(bundle: str) -> str:
    """``"classification"`` for a ``*_classification`` bundle, else ``"segmentation"``."""
    return "classification" if bundle.endswith("_classification") else "segmentation"


def run_quickstart(bundle: str, overrides: dict | None = None) -> None:
    """The bundle's quickstart preset (``train.json`` + ``quickstart.json``), its command printed between blank
    lines and its output on the terminal; raises RuntimeError when it fails."""
    print(f"\n$ {display_command(bundle, CONFIGS, overrides)}\n", flush=True)
    run_bundle(bundle, CONFIGS, overrides, echo=False)


def consistency_report(train_log: str) -> str:
    """The last epoch's consistency terms and collapse monitors from a pre-training ``train_log.csv``."""
    value = read_training_log(train_log)[-1]
    log_k = value.get("log_k", float("nan"))
    information = value.get("teacher_mutual_information", float("nan"))  # none for BYOL
    alive = (value.get("teacher_entropy", log_k) < 0.9 * log_k and value.get("teacher_cls_cosine", 1.0) < 0.95
             and not information < 0.1)
    return (f"consistency branch at epoch {value['epoch']}: g2g {value['loss_g2g']:.3f}, g2l {value['loss_g2l']:.3f}, "
            f"teacher entropy {value.get('teacher_entropy', float('nan')):.3f} (trivial value log K = {log_k:.3f}), "
            f"mutual information between volume and prototype {information:.3f} nats (0 when collapsed), "
            f"teacher embedding cosine across volumes {value.get('teacher_cls_cosine', float('nan')):.3f} "
            f"-> {'alive' if alive else 'COLLAPSED (see the pre-training README, Collapse)'}\n"
            f"reconstruction: local {value['loss_rec_local']:.4f}, global {value['loss_rec_global']:.4f} (MSE); "
            f"curves: {os.path.relpath(os.path.join(os.path.dirname(train_log), 'train_curves.png'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-finetune", action="store_true", help="only run the pre-training bundle")
    parser.add_argument("--bundle", default="glmae_btcv_segmentation", choices=finetuning_bundles("quickstart.json"),
                        help="the fine-tuning bundle (default: %(default)s)")
    args = parser.parse_args()
    start = time.time()
    run_quickstart(PRETRAINING_BUNDLE)
    pretraining = bundle_dir(PRETRAINING_BUNDLE)
    encoder = os.path.join(pretraining, "models", "encoder.pt")
    print(f"\npre-training finished in {time.time() - start:.0f} s; encoder: {os.path.relpath(encoder)}")
    print(consistency_report(os.path.join(pretraining, "runs", "train_log.csv")))
    print(f"its features (runs/features/: per-volume embeddings, see the pre-training README):\n"
          f"  {display_command(PRETRAINING_BUNDLE, ['inference.json', 'quickstart.json'])}")
    if args.skip_finetune:
        return
    run_quickstart(args.bundle, {"pretrained_encoder": encoder})
    with open(os.path.join(bundle_dir(args.bundle), "runs", "best_metric.json")) as f:
        best = json.load(f)
    key, name = KEY_METRICS[bundle_kind(args.bundle)]
    print(f"\nfine-tuning finished; total {time.time() - start:.0f} s")
    print(f"{name} of the fine-tuned model: {best[key]:.4f} (epoch {best['epoch']})")
    print(per_class_text(best))
    print(next_steps_text(args.bundle))


def per_class_text(best: dict) -> str:
    """The best validation's Dice of every class, by name, from ``best_metric.json``; classes at 0 are flagged as
    missed and undefined ones (no such voxel in any reference) as such."""
    per_class = best.get("per_class")
    if not per_class:
        return ""
    width = max(map(len, per_class))
    lines = ["per class (mean over the validation cases):"]
    for name, value in per_class.items():
        note = "  <- missed: 0 in every validation case" if value == 0 else ""
        shown = f"{value:.4f}" if value is not None else "undefined (NaN): absent from every reference, left out"
        lines.append(f"  {name:<{width}}  {shown}{note}")
    return "\n".join(lines)


def next_steps_text(bundle: str) -> str:
    """The commands, ready to paste in the repository root, that evaluate and apply ``bundle``'s quickstart model."""
    lines = ["\nnext steps with this model (models/model.pt), from the repository root:"]
    steps = CLASSIFICATION_NEXT_STEPS if bundle_kind(bundle) == "classification" else NEXT_STEPS
    for what, configs in steps:
        lines += [f"  # {what}", f"  {display_command(bundle, configs)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
