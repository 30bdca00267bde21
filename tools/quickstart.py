"""The quickstart: GL-MAE pre-training, then BTCV-style fine-tuning from the pre-trained encoder, on synthetic data.

Runs each bundle exactly as a user would, with ``python -m monai.bundle run`` in the bundle's folder, using the
CPU-sized ``quickstart.json`` overlays (a synthetic CT-like dataset is written on the first run). Prints each
command before running it. Outputs land in each bundle's ``models/`` and ``runs/`` folders.

    python tools/quickstart.py            # pre-train, then fine-tune and print the validation Dice
    python tools/quickstart.py --skip-finetune
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as `python tools/quickstart.py` from a checkout without installing
    sys.path.insert(0, REPO_ROOT)

from custom_components.handlers.training_log import read_training_log  # noqa: E402

BUNDLES = os.path.join(REPO_ROOT, "bundles")


def run_bundle(bundle: str, configs: list[str], overrides: dict[str, str]) -> None:
    """``python -m monai.bundle run`` in ``bundles/<bundle>`` with ``configs`` merged in order."""
    config_arg = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    cwd = os.path.join(BUNDLES, bundle)
    print(f"\n$ cd {os.path.relpath(cwd)} && {shlex.join(['python', *command[1:]])}\n", flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    subprocess.run(command, cwd=cwd, env=env, check=True)


def consistency_report(train_log: str) -> str:
    """The last epoch's consistency terms and collapse monitors from a pre-training ``train_log.csv``."""
    value = read_training_log(train_log)[-1]
    log_k = value.get("log_k", float("nan"))
    alive = value.get("teacher_entropy", log_k) < 0.9 * log_k and value.get("teacher_cls_cosine", 1.0) < 0.95
    return (f"consistency branch at epoch {value['epoch']}: g2g {value['loss_g2g']:.3f}, g2l {value['loss_g2l']:.3f}, "
            f"teacher entropy {value.get('teacher_entropy', float('nan')):.3f} (trivial value log K = {log_k:.3f}), "
            f"teacher embedding cosine across volumes {value.get('teacher_cls_cosine', float('nan')):.3f} "
            f"-> {'alive' if alive else 'COLLAPSED (see the pre-training README, Collapse)'}\n"
            f"reconstruction: local {value['loss_rec_local']:.4f}, global {value['loss_rec_global']:.4f} (MSE); "
            f"curves: {os.path.relpath(os.path.join(os.path.dirname(train_log), 'train_curves.png'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-finetune", action="store_true", help="only run the pre-training bundle")
    args = parser.parse_args()
    start = time.time()
    run_bundle("glmae_pretraining", ["train.json", "quickstart.json"], {})
    encoder = os.path.join(BUNDLES, "glmae_pretraining", "models", "encoder.pt")
    print(f"\npre-training finished in {time.time() - start:.0f} s; encoder: {os.path.relpath(encoder)}")
    print(consistency_report(os.path.join(BUNDLES, "glmae_pretraining", "runs", "train_log.csv")))
    if args.skip_finetune:
        return
    finetune = os.path.join(BUNDLES, "glmae_btcv_segmentation")
    run_bundle("glmae_btcv_segmentation", ["train.json", "quickstart.json"], {"pretrained_encoder": encoder})
    with open(os.path.join(finetune, "runs", "best_metric.json")) as f:
        best = json.load(f)
    print(f"\nfine-tuning finished; total {time.time() - start:.0f} s")
    print(f"validation mean Dice of the fine-tuned model: {best['val_mean_dice']:.4f} (epoch {best['epoch']})")


if __name__ == "__main__":
    main()
