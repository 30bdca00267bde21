"""Frozen-encoder evaluation as self-supervised papers report it: DINO's token k-NN, a token linear probe (MAE,
DINO), few-shot segmentation with a linear head on frozen tokens, and a volume-level context probe, for each
encoder given and for three baselines in the same run.

Baselines (``--no_baselines`` leaves out the first three; ``pos`` is always reported):

    init      the same ViT at the pre-training's own initialisation (GLMAE weight_init="mae", --seed): 0 steps
    raw+pos   each patch's voxels average-pooled to 4³ (64 values) plus its normalised (x, y, z) position
    oracle    the positive control, not an encoder: the histogram of the token's organ voxels around their median
              (it reads the labels); a probe that scores it near chance cannot rank encoders on that data
    pos       the normalised position alone: what a probe scores without looking at the image

Probe data: labelled synthetic CT (``--num_volumes`` varied volumes with the organ layout shuffled per volume and
organs that carry the inner structure of their kind, so organ identity depends on appearance, not position) or a
labelled datalist (``--datalist``), HU windowed like pre-training input. The last ``--num_test`` volumes are held
out: nothing is trained or chosen on them. Each probe is trained on ``--budgets`` labelled volumes, drawn
``--splits`` times. Token probes score organ tokens only (``--all_tokens`` adds background). Writes

    OUT/probe_results.csv   one row per encoder × probe × budget × split: the score and per-class IoU / Dice
    OUT/probe_results.md    mean ± std over splits per encoder, probe and budget (pos row in every table)
    OUT/probe_results.png   score against labelled volumes, one line per encoder, one panel per probe

    python tools/probe_encoder.py --encoder glmae=runs/pretrain/models/encoder.pt --num_heads 4 --out probe
    python tools/probe_encoder.py --encoder a.pt --name gl-mae --encoder b.pt --name mae3d --num_heads 4 --out probe
    python tools/probe_encoder.py --num_heads 4 --out probe_init        # baselines only (96-wide, 12 layers)
    python tools/probe_encoder.py --encoder vit_b.pt --datalist /data/btcv/dataset_0.json --volume_shape 96 96 96 \\
        --device cuda --out probe_btcv

Runtime at the defaults (40 volumes of 128×128×96, 7 classes, 5 splits, budgets 1/2/4/8), measured on 2 CPU cores
(AMD EPYC, nothing else running): about 56 s per feature set (395 s for three 96-wide encoders and the four
baselines), most of it the segmentation head and the logistic regressions; making the volumes takes 22 s. On a GPU
pass ``--device cuda`` (features, k-NN and the segmentation head move there; scikit-learn stays on the CPU).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from custom_components.probes import (
    EncoderSize, ProbeData, ProbeSettings, datalist_probe_data, draw_splits, encoder_features, evaluate_features,
    init_encoder_state, load_frozen_encoder, organ_oracle_features, position_features, raw_position_features,
    resolve_num_heads,
    synthetic_probe_data, token_grid, vit_size,
)
from tools.plots import plot_panels

PROBE_TITLES = {"knn": "Token k-NN (DINO: cosine, k = 20, T = 0.07), balanced accuracy",
                "linear": "Token linear probe (logistic regression, C = 1), balanced accuracy",
                "segmentation": "Few-shot segmentation (linear head on frozen tokens), mean foreground Dice"}
CONTEXT_TITLE = "## Volume context (mean-pooled tokens, cross-validated logistic regression), balanced accuracy"
PLOT_TITLES = {"knn": "token k-NN: balanced accuracy", "linear": "token linear probe: balanced accuracy",
               "segmentation": "segmentation head: Dice"}
BASELINES = ("init", "raw+pos", "oracle", "pos")


def parse_encoders(values: Sequence[str], names: Sequence[str]) -> list[tuple[str, str]]:
    """``(name, path)`` per ``--encoder``: ``NAME=PATH`` names itself; plain paths take the ``--name`` values in
    order, else the file's stem."""
    pairs: list[tuple[str | None, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        pairs.append((name, path) if sep and not os.path.exists(value) else (None, value))
    unnamed = [i for i, (name, _) in enumerate(pairs) if name is None]
    if names and len(names) != len(unnamed):
        raise ValueError(f"{len(names)} --name values for {len(unnamed)} unnamed --encoder paths; give one name per "
                         f"path (or write --encoder NAME=PATH).")
    for i, name in zip(unnamed, names or [None] * len(unnamed)):
        pairs[i] = (name or os.path.splitext(os.path.basename(pairs[i][1]))[0], pairs[i][1])
    taken = [name for name, _ in pairs]
    if len(set(taken)) != len(taken) or set(BASELINES) & set(taken):
        raise ValueError(f"encoder names must be distinct and none of the baselines' {BASELINES}; got {taken}.")
    return pairs


def feature_sets(args: argparse.Namespace, data: ProbeData) -> dict[str, torch.Tensor]:
    """Token features ``[V, N, D]`` of every encoder, then the baselines, in the order the report lists them.

    ``init`` is built once per architecture among the encoders (named ``init (WIDTHxDEPTH)`` when there are
    several), or from ``--hidden_size/--mlp_dim/--num_layers/--num_heads`` when no encoder is given.
    """
    shape, features, sizes = data.volume_shape, {}, []
    for name, path in parse_encoders(args.encoder, args.name):
        start = time.time()
        vit = load_frozen_encoder(path, shape, args.num_heads)
        features[name] = encoder_features(vit, data.images, device=args.device)
        sizes.append(vit_size(vit))
        print(f"features of {name}: {tuple(features[name].shape)} in {time.time() - start:.1f} s", flush=True)
    if not args.no_baselines:
        if not sizes:
            heads = resolve_num_heads(args.hidden_size, args.num_heads, f"--hidden_size {args.hidden_size}")
            sizes = [EncoderSize(args.hidden_size, args.mlp_dim, args.num_layers, heads)]
        architectures = list(dict.fromkeys(sizes))
        for size in architectures:
            name = "init" if len(architectures) == 1 else f"init ({size.hidden_size}x{size.num_layers})"
            vit = load_frozen_encoder(init_encoder_state(size, shape, args.seed), shape, size.num_heads)
            features[name] = encoder_features(vit, data.images, device=args.device)
        features["raw+pos"] = raw_position_features(data.images)
        features["oracle"] = organ_oracle_features(data.images, data.labels, data.num_classes,
                                                   args.min_organ_fraction)
    features["pos"] = position_features(data.images.shape[0], token_grid(shape))
    return features


def probe_data(args: argparse.Namespace) -> ProbeData:
    if args.datalist:
        return datalist_probe_data(args.datalist, args.volume_shape, args.hu_range)
    return synthetic_probe_data(args.num_volumes, args.volume_shape, args.num_classes, args.data_seed, args.hu_range,
                                shuffle_layout=not args.fixed_layout, organ_texture=not args.plain_organs)


def summarise(rows: list[dict]) -> dict:
    """``{probe: {encoder: {budget: (mean, std, n)}}}`` over splits, in the rows' order."""
    scores: dict = {}
    for row in rows:
        scores.setdefault(row["probe"], {}).setdefault(row["encoder"], {}).setdefault(row["budget"], [])
        scores[row["probe"]][row["encoder"]][row["budget"]].append(row["score"])
    return {probe: {encoder: {b: _mean_std(v) for b, v in cells.items()} for encoder, cells in encoders.items()}
            for probe, encoders in scores.items()}


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def _cell(stats: tuple[float, float, int] | None) -> str:
    return "–" if stats is None or not stats[2] else f"{stats[0]:.3f} ± {stats[1]:.3f}"


def markdown(table: dict, data: ProbeData, args: argparse.Namespace) -> str:
    """The report: one table per budgeted probe (encoders × budgets) and one for the context probe."""
    source = (f"datalist {args.datalist}" if args.datalist else
              f"{args.num_volumes} synthetic CT volumes ({'fixed' if args.fixed_layout else 'shuffled'} organ layout, "
              f"organs {'without' if args.plain_organs else 'with'} their inner structure)")
    classes = data.num_classes if args.all_tokens else data.num_classes - 1
    tokens = "organ and background tokens" if args.all_tokens else "organ tokens only (which organ is it?)"
    intro = (
        f"Data: {source}, {'×'.join(map(str, data.volume_shape))} voxels, {data.num_classes} classes; the last "
        f"{args.num_test} volumes held out; mean ± std over {args.splits} draws of the labelled volumes. Token "
        f"probes: {tokens}, labelled where an organ fills {args.min_organ_fraction:g} of the patch; chance balanced "
        f"accuracy 1/{classes} = {1 / classes:.3f}. `pos` (where a token is, nothing else) is the floor a probe "
        f"must clear; `raw+pos` and `init` are the baselines an encoder must beat; `oracle` (it reads the labels) "
        f"shows how high a probe can score on this data."
    )
    lines = ["# Frozen-encoder probes", "", intro, ""]
    for probe, title in PROBE_TITLES.items():
        lines += [f"## {title}", "", "| encoder | " + " | ".join(f"{b} labelled" for b in args.budgets) + " |",
                  "|---|" + "---|" * len(args.budgets)]
        for encoder, cells in table[probe].items():
            lines.append(f"| {encoder} | " + " | ".join(_cell(cells.get(b)) for b in args.budgets) + " |")
        lines.append("")
    attributes = [p.split(":", 1)[1] for p in table if p.startswith("context:")]
    lines += [CONTEXT_TITLE, "", "| encoder | " + " | ".join(attributes) + " |", "|---|" + "---|" * len(attributes)]
    for encoder in table[f"context:{attributes[0]}"]:
        cells = [_cell(next(iter(table[f"context:{a}"][encoder].values()))) for a in attributes]
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path: str, table: dict, budgets: list[int]) -> None:
    """Score against labelled volumes, one panel per budgeted probe, one coloured line per encoder (PIL)."""
    panels = {PLOT_TITLES[probe]: {encoder: {b: stats[0] for b, stats in cells.items()}
                                   for encoder, cells in table[probe].items()} for probe in PROBE_TITLES}
    plot_panels(path, panels, budgets, "labelled training volumes")


def write_csv(path: str, rows: list[dict], num_classes: int) -> None:
    fields = ["encoder", "probe", "budget", "split", "metric", "score", *(f"class_{k}" for k in range(num_classes))]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", action="append", default=[], metavar="[NAME=]PATH",
                        help="encoder checkpoint (any layout custom_components.weights.load_encoder reads); repeatable")
    parser.add_argument("--name", action="append", default=[], help="name of each plain --encoder path, in order")
    parser.add_argument("--num_heads", type=int,
                        help="attention heads of the encoders (not stored in a checkpoint; default 12 for 768 wide)")
    parser.add_argument("--no_baselines", action="store_true", help="leave out init, raw+pos and oracle (pos stays)")
    parser.add_argument("--hidden_size", type=int, default=96, help="init-only runs: ViT width (default 96)")
    parser.add_argument("--mlp_dim", type=int, default=384, help="init-only runs: MLP width (default 384)")
    parser.add_argument("--num_layers", type=int, default=12, help="init-only runs: depth (default 12)")
    parser.add_argument("--datalist", help="labelled decathlon JSON (image, label) instead of synthetic data")
    parser.add_argument("--num_volumes", type=int, default=40, help="synthetic volumes (default 40)")
    parser.add_argument("--num_classes", type=int, default=7, help="synthetic classes incl. background (default 7)")
    parser.add_argument("--fixed_layout", action="store_true",
                        help="synthetic organs in their fixed grid cells (position then predicts the organ)")
    parser.add_argument("--volume_shape", type=int, nargs=3, default=[128, 128, 96],
                        help="multiples of 16 (default 128 128 96: the study preset's volumes)")
    parser.add_argument("--hu_range", type=float, nargs=2, default=[-1000.0, 1000.0], help="HU window to [0, 1]")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 8], help="labelled training volumes")
    parser.add_argument("--splits", type=int, default=5, help="draws of the labelled volumes (default 5)")
    parser.add_argument("--num_test", type=int, default=16, help="held-out volumes, the last ones (default 16)")
    parser.add_argument("--min_organ_fraction", type=float, default=0.25,
                        help="part of a patch an organ must fill to label its token (default 0.25; 0.5: majority)")
    parser.add_argument("--all_tokens", action="store_true",
                        help="token probes also train and score background tokens (no organ above "
                             "--background_fraction of the patch; tokens in between are left out)")
    parser.add_argument("--background_fraction", type=float, default=0.02,
                        help="with --all_tokens: a token is background below this organ part (default 0.02)")
    parser.add_argument("--plain_organs", action="store_true",
                        help="synthetic organs without their inner structure (HU alone tells them apart)")
    parser.add_argument("--seg_steps", type=int, default=100, help="Adam steps of the segmentation head")
    parser.add_argument("--seg_stride", type=int, default=4,
                        help="voxels per segmentation logit edge (default 4; 1: per voxel)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and of the init baseline")
    parser.add_argument("--data_seed", type=int, default=1000, help="seed of the first synthetic volume")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the probes and write the report; returns ``summarise``'s table. Bad input raises ``ValueError`` (or
    ``FileNotFoundError``) with one sentence."""
    args = parse_args(argv)
    start = time.time()
    token_grid(args.volume_shape)
    parse_encoders(args.encoder, args.name)
    settings = ProbeSettings(budgets=tuple(args.budgets), num_splits=args.splits, num_test=args.num_test,
                             min_fraction=args.min_organ_fraction, background_fraction=args.background_fraction,
                             organs_only=not args.all_tokens, seg_steps=args.seg_steps,
                             seg_stride=args.seg_stride, seed=args.seed)
    data = probe_data(args)
    print(f"probe data: {data.images.shape[0]} volumes {'×'.join(map(str, data.volume_shape))}, "
          f"{data.num_classes} classes ({time.time() - start:.1f} s)", flush=True)
    draw_splits(data.images.shape[0], args.num_test, args.budgets, args.splits)  # impossible budgets fail here
    features = feature_sets(args, data)
    rows = []
    for index, (name, tokens) in enumerate(features.items(), 1):
        for row in evaluate_features(name, tokens, data, settings, args.device):
            rows.append(row)
            if row["probe"] == "segmentation" and row["budget"] == max(args.budgets):
                print(f"[{index}/{len(features)}] {name}, split {row['split'] + 1}/{args.splits}: "
                      + ", ".join(f"{r['probe']} {r['score']:.3f}" for r in rows[-3:])
                      + f" at {row['budget']} labelled ({time.time() - start:.0f} s so far)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    table = summarise(rows)
    write_csv(os.path.join(args.out, "probe_results.csv"), rows, data.num_classes)
    report = markdown(table, data, args)
    with open(os.path.join(args.out, "probe_results.md"), "w") as f:
        f.write(report)
    plot(os.path.join(args.out, "probe_results.png"), table, args.budgets)
    print(report + f"\nwrote {args.out}/probe_results.{{csv,md,png}} in {time.time() - start:.0f} s", flush=True)
    return table


def cli(argv: list[str] | None = None) -> None:
    """``main`` with bad input reported as one line on stderr and exit status 1."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"probe_encoder: error: {e}")


if __name__ == "__main__":
    cli()
