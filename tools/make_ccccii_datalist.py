"""Write the datalist of a CC-CCII folder tree (``<class>/<patient>/<scan>/<slice images>``), folds by patient.

Example (from the repository root)::

    python tools/make_ccccii_datalist.py --root /data/ccccii --out /data/ccccii/dataset.json --num-folds 5
    python tools/make_ccccii_datalist.py --root /data/ccccii --out /data/ccccii/dataset.csv   # one CSV table
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from custom_components.data import CCCCII_CLASSES, load_classification_datalist, write_classification_datalist


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a classification datalist for CC-CCII-style data: ROOT holds one folder per class "
        "(NCP, CP, Normal), each one folder per patient, each the patient's scans (folders of PNG/JPG slices, or "
        ".nii.gz/.nii/.npy volumes). Every scan of a patient goes to the same fold (patients are shuffled with "
        "--seed and dealt to the folds class by class); paths are written relative to the output's folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="folder holding the class folders")
    parser.add_argument("--out", required=True, help="datalist to write: .json (decathlon-style) or .csv")
    parser.add_argument("--num-folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle")
    parser.add_argument("--classes", nargs="+", default=list(CCCCII_CLASSES),
                        help="class folder names in class-index order")
    parser.add_argument("--test-dir", default=None, help="folder of unlabelled scans for the JSON 'testing' section")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        out = write_classification_datalist(args.root, args.out, args.classes, args.num_folds, args.seed,
                                            test_dir=args.test_dir)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    entries = load_classification_datalist(out, "training", args.classes, check_files=False)
    patients = {entry["patient"]: entry["fold"] for entry in entries}
    per_fold = Counter(entry["fold"] for entry in entries)
    print(f"wrote {out}: {len(entries)} scans of {len(patients)} patients, "
          f"{json.dumps(dict(Counter(args.classes[e['label']] for e in entries)))}; scans per fold "
          f"{dict(sorted(per_fold.items()))}")


if __name__ == "__main__":
    main()
