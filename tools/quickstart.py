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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-finetune", action="store_true", help="only run the pre-training bundle")
    args = parser.parse_args()
    start = time.time()
    run_bundle("glmae_pretraining", ["train.json", "quickstart.json"], {})
    encoder = os.path.join(BUNDLES, "glmae_pretraining", "models", "encoder.pt")
    print(f"\npre-training finished in {time.time() - start:.0f} s; encoder: {os.path.relpath(encoder)}")
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
