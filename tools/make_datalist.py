"""Write a decathlon-style datalist JSON for a folder of images and a folder of labels with the same file names, or
for a folder of BraTS 2021 case folders.

Example (from the repository root)::

    python tools/make_datalist.py --images data/BTCV/imagesTr --labels data/BTCV/labelsTr \
        --test-images data/BTCV/imagesTs --out data/BTCV/dataset_folds.json --num-folds 5
    # images and labels in one folder, told apart by a suffix (MM-WHS)
    python tools/make_datalist.py --images data/mmwhs/ct_train --labels data/mmwhs/ct_train \
        --pattern "*_image.nii.gz" --label-pattern "*_label.nii.gz" --out data/mmwhs/dataset_0.json --num-folds 5
    # BraTS 2021: one folder per case with a file per modality and the label (<case>_{flair,t1,t1ce,t2,seg}.nii.gz)
    python tools/make_datalist.py --layout brats2021 --images data/brats/BraTS2021_Training_Data \
        --out data/brats/dataset_folds.json --num-folds 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from custom_components.data import write_brats2021_datalist, write_datalist_from_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a MONAI decathlon-style datalist JSON from folders: images and labels are paired by "
        "file name (any image without a label, or label without an image, is an error), sorted by name and "
        "assigned to folds round-robin; paths are written relative to the JSON's folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", required=True,
                        help="folder of training images (with --layout brats2021: folder of the case folders)")
    parser.add_argument("--labels", default=None, help="folder of labels named like the images (omit: images only)")
    parser.add_argument("--test-images", default=None, help="folder of unlabelled images (or case folders) for the "
                        "'testing' section")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--num-folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--pattern", default="*.nii.gz", help="glob pattern of the image (and test image) files")
    parser.add_argument("--label-pattern", default=None,
                        help="glob pattern of the label files (default: --pattern, paired by file name); when it "
                        "differs, both are '*<suffix>' and files pair by the name before the suffix")
    parser.add_argument("--layout", choices=["files", "brats2021"], default="files",
                        help="files: images and labels as above; brats2021: --images holds one folder per case with "
                        "<case>_flair/_t1/_t1ce/_t2/_seg.nii.gz, listed as four image channels (in that order) and "
                        "the label")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.layout == "brats2021":
            if args.labels is not None:
                raise ValueError("--labels is not used with --layout brats2021: each case folder holds its label.")
            out = write_brats2021_datalist(args.images, args.out, args.num_folds, test_dir=args.test_images)
        else:
            out = write_datalist_from_folder(
                args.images,
                args.labels,
                out_file=args.out,
                num_folds=args.num_folds,
                test_images_dir=args.test_images,
                pattern=args.pattern,
                label_pattern=args.label_pattern,
            )
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    content = json.loads(Path(out).read_text())
    print(
        f"wrote {out}: {content['numTraining']} training entries "
        f"({'with' if args.labels or args.layout == 'brats2021' else 'without'} labels, {args.num_folds} folds), "
        f"{content.get('numTest', 0)} testing entries"
    )


if __name__ == "__main__":
    main()
