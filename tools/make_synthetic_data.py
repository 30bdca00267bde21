"""Write a synthetic CT-like NIfTI dataset and its decathlon-style datalist, for the quickstart and the tests.

Example (from the repository root)::

    python tools/make_synthetic_data.py --out data/synthetic --num-volumes 8 --shape 96 96 64
    python tools/make_synthetic_data.py --out data/mmwhs_like --task glmae_mmwhs_segmentation   # a bundle's layout
    python tools/make_synthetic_data.py --out data/brats_like --task glmae_brats_segmentation --layout brats2021
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from custom_components.data import BRATS_LAYOUTS
from custom_components.synthetic import SYNTHETIC_TASKS, write_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write synthetic CT-like volumes (int16 HU; air, fat, soft tissue, lungs, bones and organ-like "
        "blobs) as NIfTI under OUT/imagesTr, OUT/labelsTr and OUT/imagesTs, plus OUT/dataset.json, a MONAI "
        "decathlon-style datalist with folds assigned round-robin. Use it instead of downloading a dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--num-volumes", type=int, default=8, help="number of training volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], metavar=("H", "W", "D"), help="size")
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=[1.5, 1.5, 2.0], metavar=("SX", "SY", "SZ"), help="voxel mm"
    )
    parser.add_argument("--num-classes", type=int, default=14, help="classes incl. background (14: BTCV names)")
    parser.add_argument("--unlabelled", action="store_true", help="write images only (pre-training data)")
    parser.add_argument("--num-folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--num-test", type=int, default=2, help="extra unlabelled test images in imagesTs")
    parser.add_argument("--seed", type=int, default=0, help="base seed; case i uses seed + i")
    parser.add_argument("--varied", action="store_true",
                        help="vary body layout, organ set and intensity profile per volume (pre-training data)")
    parser.add_argument("--task", choices=sorted(SYNTHETIC_TASKS), default=None,
                        help="the layout of a segmentation bundle (classes, raw label values, spacing, lesions); "
                        "replaces --num-classes and --spacing; glmae_brats_segmentation writes four-modality "
                        "brain MRI with tumours instead of CT")
    parser.add_argument("--layout", choices=sorted(BRATS_LAYOUTS), default="msd",
                        help="with --task glmae_brats_segmentation: MSD Task01 (one 4D file per case) or BraTS 2021 "
                        "(a folder per case, one file per modality)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = {"spacing": tuple(args.spacing), "num_classes": args.num_classes}
    layout |= SYNTHETIC_TASKS[args.task] if args.task else {}
    if layout.get("brain_mri"):
        layout["layout"] = args.layout
    args.spacing, args.num_classes = layout["spacing"], layout["num_classes"]
    try:
        datalist = write_synthetic_dataset(
            args.out,
            num_volumes=args.num_volumes,
            shape=tuple(args.shape),
            labelled=not args.unlabelled,
            num_folds=args.num_folds,
            num_test=args.num_test,
            seed=args.seed,
            varied=args.varied,
            **layout,
        )
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    kind = "unlabelled" if args.unlabelled else f"labelled ({args.num_classes} classes)"
    print(
        f"wrote {args.num_volumes} {kind} training volumes of shape {tuple(args.shape)}, spacing "
        f"{tuple(args.spacing)} mm, in {args.num_folds} folds, and {args.num_test} test volumes to "
        f"{Path(args.out).resolve()}\ndatalist: {datalist}"
    )


if __name__ == "__main__":
    main()
