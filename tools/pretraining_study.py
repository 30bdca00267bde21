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
(the positive control: how high a probe can score on the data) and ``pos`` come with it.

Then every arm's encoder (``random (0-step)``: the initialisation written as a file) is fine-tuned with the BTCV
bundle on the probe volumes: the same labelled volumes for every arm of a seed (the probe's first draw at the
preset's budget), a fixed number of epochs, and one evaluation, after the last epoch, on the held-out probe
volumes. Nothing picks a checkpoint and nothing is tuned on the held-out volumes. Writes, in OUT:

    pretrain/<arm>_s<seed>/     each pre-training run: models/encoder.pt, train_log.csv, log.txt, seconds.txt
    probes/s<seed>/             each seed's probe report (probe_results.csv/.md/.png)
    finetune/<arm>_s<seed>/     each fine-tuning run: best_metric.json (the one evaluation), log.txt, seconds.txt
    study_results.csv           arm, seed, probe, budget, score (the mean over the probe's draws for that seed;
                                probe "finetune": the held-out mean Dice of that seed's fine-tuning run)
    study_results.md            mean ± std over seeds per arm, probe and budget; the effect of each arm against
                                random (0-step) beside 2 × the pooled std over seeds; the GL-MAE runs' monitors
    study_results.png           score against labelled volumes per probe, one line per arm (mean over seeds)

A second invocation skips what is done, so an interrupted study resumes.

    python tools/pretraining_study.py --out study                       # 3 seeds x 4 arms, CPU
    python tools/pretraining_study.py --out study --seeds 3 4 5         # the same with other seeds
    python tools/pretraining_study.py --out study --device cuda --pretrain-datalist /data/ct/dataset.json \\
        --probe-datalist /data/btcv/dataset_0.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import time

from custom_components.data import load_datalist
from custom_components.handlers.training_log import read_training_log
from custom_components.probes import draw_splits, encoder_size, init_encoder_state
from custom_components.synthetic import ensure_synthetic_dataset
from custom_components.weights import load_state_dict_file, save_state_dict, to_vit_state_dict
from tools import probe_encoder
from tools.bundle_run import PRETRAINING_BUNDLE, run_bundle
from tools.plots import plot_panels

RANDOM = "random (0-step)"
#: arm -> (pre-training overlays after train.json + the preset, overrides); None: not pre-trained
ARMS = {
    RANDOM: None,
    "MAE3D (equal compute)": (["ablation_local_rec.json"], {"num_local_views": 8}),
    "+global_rec": (["ablation_global_rec.json"], {}),
    "GL-MAE": ([], {}),
}
PROBES = ("knn", "linear", "segmentation", "finetune")
FINETUNE = "finetune"
FINETUNE_BUNDLE = "glmae_btcv_segmentation"
TITLES = {**probe_encoder.PROBE_TITLES,
          FINETUNE: "Fine-tuning (BTCV bundle, UNETR from the arm's encoder, fixed epochs), held-out mean Dice"}
PLOT_TITLES = {**probe_encoder.PLOT_TITLES, FINETUNE: "fine-tuned UNETR: held-out Dice"}
REFERENCES = ("raw+pos", "oracle", "pos")  # the probe tool's baselines that are no arm (no effect is computed)
MONITORS = ("loss_rec_local", "loss_g2g", "loss_g2l", "teacher_entropy", "teacher_marginal_entropy",
            "teacher_mutual_information", "teacher_cls_cosine")
#: the preset: pre-training overlay and overrides, the probe tool's arguments
PRESETS = {
    "cpu": {"pretrain": (["study_cpu.json"], {}), "num_heads": 4,
            "probe": ["--num_volumes", "40", "--num_test", "16", "--volume_shape", "128", "128", "96",
                      "--seg_stride", "4"],  # the probe tool's defaults, spelled out
            # fine-tuning: the BTCV bundle's train.json (its HU window too) at the encoders' sizes (UNETR's 12
            # blocks: the 8 pre-trained ones load, the other 4 start from the fine-tuning seed, the same for every
            # arm) and the probe volumes' spacing; one evaluation after the last epoch. The recipe the study was
            # run with: every layer at 2e-3, no layer-wise decay (the bundles' default with an encoder since 0.11.0)
            "finetune": {"budget": 4, "overrides": {
                "roi_size": [64, 64, 64], "hidden_size": 96, "mlp_dim": 384, "num_heads": 4, "feature_size": 8,
                "pixdim": [1.5, 1.5, 2.0], "max_epochs": 30, "val_interval": 30,
                "checkpoint_interval": 30, "warmup_epochs": 2, "num_samples": 2, "learning_rate": 2e-3,
                "layer_decay": 1.0, "num_workers": 0, "sw_batch_size": 2, "log_interval": 30}}},
    "tiny": {  # the test suite's size: seconds per run
        "pretrain": (["study_cpu.json"], {"max_epochs": 1, "num_volumes": 3, "volume_shape": [64, 64, 48],
                                          "global_size": [48, 48, 48], "local_size": [32, 32, 32],
                                          "roi_size": [32, 32, 32], "hidden_size": 48, "mlp_dim": 96,
                                          "num_layers": 2, "num_heads": 4, "head_out_dim": 64,
                                          "decoder_hidden_size": 48, "decoder_num_layers": 1, "batch_size": 1}),
        "num_heads": 4,
        "probe": ["--num_volumes", "6", "--num_test", "2", "--volume_shape", "32", "32", "32", "--budgets", "1", "2",
                  "--splits", "2", "--seg_steps", "5", "--min_organ_fraction", "0.02"],
        "finetune": {"budget": 1, "overrides": {
            "roi_size": [32, 32, 32], "hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8,
            "pixdim": [1.5, 1.5, 2.0], "max_epochs": 1, "val_interval": 1,
            "checkpoint_interval": 1, "warmup_epochs": 0, "num_samples": 1, "layer_decay": 1.0, "num_workers": 0,
            "sw_batch_size": 1}},
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


def probe_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The probe tool's settings for this preset (volumes, held-out count, data seed, ...)."""
    return probe_encoder.parse_args([*PRESETS[args.preset]["probe"], "--out", args.out])


def finetune_datalist(seed: int, args: argparse.Namespace) -> tuple[str, list[str]]:
    """Write the fine-tuning datalist of ``seed``: ``training`` holds the labelled volumes of the probe's first draw
    at the preset's budget, ``validation`` the probe's held-out volumes. Returns its path and the class names."""
    settings, budget = probe_arguments(args), PRESETS[args.preset]["finetune"]["budget"]
    if args.probe_datalist:
        source = args.probe_datalist
        with open(source) as f:
            labels = json.load(f).get("labels")
        if not isinstance(labels, dict) or len(labels) < 2:
            raise ValueError(f"{source} has no \"labels\" map of at least 2 classes (value: name), which the "
                             "fine-tuning stage needs for the class count; add one or pass --no-finetune.")
        class_names = [labels[k] for k in sorted(labels, key=int)][1:]
    else:  # the probe volumes, written to disk: the same generator call and seeds as the probe tool's
        source = ensure_synthetic_dataset(
            os.path.join(args.out, "data", "finetune"), num_volumes=settings.num_volumes,
            shape=settings.volume_shape, num_classes=settings.num_classes, num_folds=1, num_test=0,
            seed=settings.data_seed, varied=True, organ_texture=True, shuffle_layout=True)
        class_names = [f"organ_{k}" for k in range(1, settings.num_classes)]
    cases = load_datalist(source, "training", keys=("image", "label"))
    cases = [{"image": c["image"], "label": c["label"]} for c in cases]
    _, budgets = draw_splits(len(cases), settings.num_test, [budget], 1, seed)[0]
    path = os.path.join(args.out, "finetune", f"datalist_s{seed}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"training": [cases[i] for i in budgets[budget]],
                   "validation": cases[len(cases) - settings.num_test:]}, f, indent=1)
    return path, class_names


def initial_encoder(seed: int, reference: str, args: argparse.Namespace) -> str:
    """Write ``random (0-step)``'s encoder for fine-tuning: the pre-training's initialisation under ``seed`` at the
    size of ``reference`` (a pre-trained arm's encoder.pt), as the probe tool builds its ``init`` baseline."""
    path = os.path.join(args.out, "pretrain", f"{slug(RANDOM)}_s{seed}", "models", "encoder.pt")
    if not os.path.exists(path):
        state = to_vit_state_dict(load_state_dict_file(reference))[0]
        size = encoder_size(state, PRESETS[args.preset]["num_heads"], reference)
        roi = PRESETS[args.preset]["finetune"]["overrides"]["roi_size"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_state_dict(init_encoder_state(size, roi, seed), path)
    return path


def finetune(arm: str, seed: int, encoder: str, datalist: str, class_names: list[str],
             args: argparse.Namespace) -> dict:
    """Fine-tune the BTCV bundle from ``encoder`` (skipped when done); returns the study row of its one held-out
    evaluation, made after the last epoch (``val_interval`` = ``max_epochs``: no checkpoint is picked)."""
    folder = os.path.join(args.out, "finetune", f"{slug(arm)}_s{seed}")
    result = os.path.join(folder, "best_metric.json")
    spec = PRESETS[args.preset]["finetune"]
    if not os.path.exists(os.path.join(folder, "seconds.txt")):
        overrides = spec["overrides"] | {
            "datalist": datalist, "num_classes": len(class_names) + 1, "class_names": class_names, "seed": seed,
            "pretrained_encoder": encoder, "ckpt_dir": os.path.join(folder, "models"), "output_dir": folder}
        if args.device:
            overrides["device"] = args.device
        os.makedirs(folder, exist_ok=True)
        start = time.time()
        run_bundle(FINETUNE_BUNDLE, ["train.json"], overrides, os.path.join(folder, "log.txt"))
        with open(os.path.join(folder, "seconds.txt"), "w") as f:
            f.write(f"{time.time() - start:.1f}\n")
    with open(result) as f:
        dice = float(json.load(f)["val_mean_dice"])
    return {"arm": arm, "seed": seed, "probe": FINETUNE, "budget": spec["budget"], "score": dice}


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
        cell = scores.setdefault(row["probe"], {}).setdefault(row["arm"], {}).setdefault(row["budget"], [])
        cell.append(row["score"])
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
        lines += [f"## {TITLES[probe]}", "",
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
    runs = [(arm, seed, os.path.join(args.out, FINETUNE, f"{slug(arm)}_s{seed}", "seconds.txt"))
            for arm in ARMS for seed in seeds]
    times = [f"{arm}, seed {seed}: {open(seconds).read().strip()} s" for arm, seed, seconds in runs
             if os.path.exists(seconds)]
    if times:
        lines += ["## Fine-tuning runs: time", "", *(f"- {t}" for t in times), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path: str, table: dict) -> None:
    """Mean score over seeds against labelled volumes, one panel per probe, one line per arm."""
    budgets = sorted({b for arms in table.values() for cells in arms.values() for b in cells})
    panels = {PLOT_TITLES[p]: {arm: {b: s[0] for b, s in cells.items()} for arm, cells in table[p].items()}
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
    parser.add_argument("--device", help="e.g. cpu, cuda, for pre-training, probes and fine-tuning (default: the "
                        "bundles' choice, cpu for probes)")
    parser.add_argument("--pretrain-datalist", help="unlabelled datalist (default: the preset's synthetic data)")
    parser.add_argument("--probe-datalist", help="labelled datalist for the probes and fine-tuning (default: "
                        "synthetic); its last volumes are held out, its \"labels\" map gives the classes")
    parser.add_argument("--no-finetune", action="store_true", help="probes only: skip the fine-tuning stage")
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
        if not args.no_finetune and encoders:
            datalist, class_names = finetune_datalist(seed, args)
            for arm in args.arms:
                encoder = encoders.get(arm) or initial_encoder(seed, next(iter(encoders.values())), args)
                rows.append(finetune(arm, seed, encoder, datalist, class_names, args))
                print(f"fine-tuned {arm}, seed {seed}: held-out mean Dice {rows[-1]['score']:.4f}", flush=True)
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
