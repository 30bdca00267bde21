"""Are the pre-training bundle's embeddings of two crops of one volume closer than those of two different volumes?

Writes held-out synthetic volumes (seeds the quickstart never trains on), cuts two random crops from each, and runs
the pre-training bundle's ``configs/inference.json`` (plus ``--overlay``) over the crops twice: with the encoder in
``--ckpt_dir`` and with the same architecture at the pre-training's own initialisation (0 steps, ``--init_seed``),
the control any gain must be measured against. For each, and for both per-volume embeddings (mean of the patch
tokens, and CLS), it reports ``custom_components.probes.crop_retrieval``: the mean centred cosine of crop pairs of
one volume and of two volumes, and how often a crop's nearest other crop is its sibling (chance is given).

    python tools/quickstart.py --skip-finetune          # the quickstart encoder, in bundles/glmae_pretraining/models
    python tools/crop_retrieval.py --out crop_retrieval  # then this, on that encoder

Writes ``OUT/crop_retrieval.md`` (the table), ``OUT/crop_retrieval.json`` and, per arm, the bundle's embedding
files under ``OUT/<arm>/``. The crops are in ``OUT/crops/``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from custom_components.data import load_datalist
from custom_components.handlers import read_embeddings
from custom_components.probes import EncoderSize, crop_retrieval, init_encoder_state
from custom_components.synthetic import write_synthetic_dataset
from tools.bundle_run import PRETRAINING_BUNDLE, bundle_dir, run_bundle

EMBEDDINGS = {"mean": False, "cls": True}  # embedding name -> read_embeddings(cls=...)


def configured_encoder(overlay: str | None, overrides: dict) -> tuple[EncoderSize, list[int]]:
    """The encoder sizes and window that ``inference.json`` + ``overlay`` (+ ``overrides``) build."""
    parser = ConfigParser()
    configs = os.path.join(bundle_dir(PRETRAINING_BUNDLE), "configs")
    parser.read_config([os.path.join(configs, name) for name in ["inference.json", *([overlay] if overlay else [])]])
    parser.update(overrides)
    size = EncoderSize(*(int(parser[k]) for k in ("hidden_size", "mlp_dim", "num_layers", "num_heads")))
    return size, [int(s) for s in parser["roi_size"]]


def parse_overrides(values: list[str]) -> dict:
    """``["hidden_size=48", "roi_size=[32, 32, 32]"]`` -> ``{"hidden_size": 48, "roi_size": [32, 32, 32]}`` (JSON
    values; anything else stays a string)."""
    overrides = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise ValueError(f"--override {value!r}: expected KEY=VALUE, e.g. hidden_size=768")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def write_crops(out: str, num_volumes: int, volume_shape: list[int], crop: list[int], seed: int) -> dict[str, int]:
    """Two random ``crop``-sized crops of each of ``num_volumes`` new varied synthetic volumes, as NIfTI with their
    own affine, in ``out/crops``; returns ``{crop file name: its volume's index}``."""
    if any(c > s for c, s in zip(crop, volume_shape)):
        raise ValueError(f"--crop {crop} is larger than --volume_shape {volume_shape}.")
    datalist = write_synthetic_dataset(os.path.join(out, "volumes"), num_volumes=num_volumes, shape=volume_shape,
                                       labelled=False, num_folds=1, num_test=0, seed=seed, varied=True)
    rng = np.random.default_rng(seed)
    crops = os.path.join(out, "crops")
    os.makedirs(crops, exist_ok=True)
    groups = {}
    for index, entry in enumerate(load_datalist(datalist, "training", keys=("image",))):
        volume = nib.load(entry["image"])
        array = np.asarray(volume.dataobj)
        for k in range(2):
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(volume_shape, crop)]
            box = tuple(slice(a, a + c) for a, c in zip(start, crop))
            affine = volume.affine.copy()
            affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
            image = nib.Nifti1Image(np.ascontiguousarray(array[box]), affine)
            image.header.set_qform(affine, code=1)
            name = f"volume{index:03d}_crop{k}.nii.gz"
            nib.save(image, os.path.join(crops, name))
            groups[name] = index
    return groups


def measure(args: argparse.Namespace) -> dict:
    overlay = None if args.overlay in ("", "none") else args.overlay
    configs = ["inference.json", *([overlay] if overlay else [])]
    groups = write_crops(args.out, args.num_volumes, args.volume_shape, args.crop, args.seed)
    overrides = parse_overrides(args.override)
    size, window = configured_encoder(overlay, overrides)
    init_dir = os.path.join(args.out, "init_models")
    os.makedirs(init_dir, exist_ok=True)
    torch.save(init_encoder_state(size, window, seed=args.init_seed), os.path.join(init_dir, "model.pt"))
    arms = {"pre-trained": os.path.abspath(args.ckpt_dir), "init (0 steps)": os.path.abspath(init_dir)}
    results = {}
    for arm, ckpt_dir in arms.items():
        output = os.path.join(os.path.abspath(args.out), arm.split()[0])
        start = time.perf_counter()
        run_bundle(PRETRAINING_BUNDLE, configs, {**overrides, "ckpt_dir": ckpt_dir, "datalist": "$None", "dataset_dir":
                   os.path.abspath(os.path.join(args.out, "crops")), "output_dir": output, "device": args.device},
                   log_file=os.path.join(args.out, f"{arm.split()[0]}.log"), echo=False)
        for name, cls in EMBEDDINGS.items():
            embeddings, rows = read_embeddings(output, cls=cls)
            volumes = [groups[os.path.basename(row["image"])] for row in rows]
            results[f"{arm}, {name}"] = crop_retrieval(embeddings, volumes)
        print(f"{arm}: encoded {len(groups)} crops in {time.perf_counter() - start:.0f} s", flush=True)
    return {"settings": {**vars(args), "encoder": vars(size), "window": window},
            "results": results}


def markdown(report: dict) -> str:
    s = report["settings"]
    chance = next(iter(report["results"].values()))["chance"]
    lines = [f"{s['num_volumes']} held-out varied synthetic volumes of {'x'.join(map(str, s['volume_shape']))} "
             f"(seed {s['seed']}), two random {'x'.join(map(str, s['crop']))} crops of each; encoder "
             f"{s['encoder']['hidden_size']} wide, {s['encoder']['num_layers']} layers, window "
             f"{'x'.join(map(str, s['window']))}. Cosines centred on the mean of all crops; retrieval: a crop's "
             f"nearest other crop is its sibling (chance {chance:.3f}).", "",
             "| encoder, embedding | same volume | different volumes | margin | retrieval | raw cosine same / different |",
             "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['same']:.3f} | {r['different']:.3f} | {r['margin']:+.3f} | {r['retrieval']:.3f} "
                     f"| {r['raw_same']:.3f} / {r['raw_different']:.3f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt_dir", default=os.path.join(bundle_dir(PRETRAINING_BUNDLE), "models"),
                        help="folder whose model.pt is the pre-trained encoder")
    parser.add_argument("--overlay", default="quickstart.json",
                        help="config of the pre-training bundle merged over inference.json (the run's sizes); "
                        "'none' for the ViT-B default")
    parser.add_argument("--num_volumes", type=int, default=16)
    parser.add_argument("--volume_shape", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--crop", type=int, nargs=3, default=[48, 48, 32])
    parser.add_argument("--seed", type=int, default=1000, help="the volumes' base seed (the quickstart uses 0..15)")
    parser.add_argument("--init_seed", type=int, default=0, help="seed of the 0-step control's initialisation")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config id of the run, as --KEY VALUE on monai.bundle run (JSON value), e.g. the "
                        "encoder's sizes; repeat for several")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    weights = os.path.join(args.ckpt_dir, "model.pt")
    if not os.path.isfile(weights):
        raise SystemExit(f"error: {weights} does not exist: pre-train first (python tools/quickstart.py "
                         f"--skip-finetune writes bundles/glmae_pretraining/models/model.pt) or give --ckpt_dir")
    os.makedirs(args.out, exist_ok=True)
    report = measure(args)
    table = markdown(report)
    with open(os.path.join(args.out, "crop_retrieval.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "crop_retrieval.md"), "w") as f:
        f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
