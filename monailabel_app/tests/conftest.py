"""Fixtures of the MONAI Label tests: the app loaded the way MONAI Label loads it, tiny copies of the bundles
(their quickstart sizes, freshly initialised weights) and synthetic images for each bundle."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monailabel.utils.others.class_utils import module_from_file

from custom_components.data import load_datalist
from custom_components.synthetic import SYNTHETIC_TASKS, make_synthetic_scan, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "monailabel_app"
BUNDLES = REPO / "bundles"
SEGMENTATION = sorted(n for n in os.listdir(BUNDLES) if n.endswith("_segmentation"))
CLASSIFICATION = sorted(n for n in os.listdir(BUNDLES) if n.endswith("_classification"))
#: the ids of quickstart.json copied into the tiny bundles' train.json and inference.json (sizes, no workers).
SIZE_IDS = ("roi_size", "pixdim", "feature_size", "hidden_size", "mlp_dim", "num_heads", "num_layers",
            "sw_batch_size", "num_workers", "amp")
IMAGE_SHAPE = {"glmae_covid19_20_segmentation": (48, 48, 24)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def app():
    """The app's ``main`` module, imported with MONAI Label's own loader (which puts the app folder on sys.path
    while ``main.py`` imports ``lib``)."""
    return module_from_file("main", str(APP_DIR / "main.py"))


def tiny_bundle(name: str, bundles_dir: Path) -> Path:
    """Copy bundle ``name`` into ``bundles_dir`` with its quickstart sizes written into train.json and
    inference.json, and a ``models/model.pt`` of its freshly initialised network (seed 0)."""
    path = bundles_dir / name
    shutil.copytree(BUNDLES / name, path, ignore=shutil.ignore_patterns("models", "runs", "eval", "synthetic_data"))
    quickstart = json.loads((path / "configs" / "quickstart.json").read_text())
    for config in ("train.json", "inference.json"):
        file = path / "configs" / config
        ids = json.loads(file.read_text())
        ids.update({k: quickstart[k] for k in SIZE_IDS if k in quickstart and k in ids})
        file.write_text(json.dumps(ids, indent=4))
    parser = ConfigParser()
    parser.read_config(str(path / "configs" / "inference.json"))
    torch.manual_seed(0)
    (path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), path / "models" / "model.pt")
    return path


def synthetic_cases(name: str, out_dir: Path, num: int = 1) -> list[dict[str, str]]:
    """``num`` synthetic image/label pairs of segmentation bundle ``name``'s layout (BraTS: 4-channel MRI)."""
    datalist = write_synthetic_dataset(out_dir, num_volumes=num, shape=IMAGE_SHAPE.get(name, (48, 48, 32)),
                                       num_folds=1, num_test=0, **SYNTHETIC_TASKS[name])
    return load_datalist(datalist, "training", keys=("image", "label"))


def synthetic_scan(path: Path, label: int = 0) -> Path:
    """A synthetic CC-CCII-like scan (64 x 64 x 20, uint8) as NIfTI."""
    nib.save(nib.Nifti1Image(make_synthetic_scan((64, 64, 20), label, seed=label), np.diag([0.7, 0.7, 5.0, 1.0])),
             path)
    return path
