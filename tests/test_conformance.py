"""Every bundle has the files of the bundle spec, train.json and inference.json agree on the task and the network, and
every bundle's metadata is versioned like the project and describes every channel (tests/test_verify_bundles.py runs
the model-zoo checks: schema, changelog, pins, JSON format, properties, exports).

That a segmentation bundle differs from the reference ``glmae_btcv_segmentation`` only where its task file says
(``tools/bundle_tasks/<bundle>.json``: task ids and named variation points) is guaranteed by
``tools/generate_bundles.py`` and checked by tests/test_generated_bundles.py.
"""

import json
import os
import re
import tomllib

import pytest
from bundle_utils import BUNDLES, REFERENCE_BUNDLE, all_bundles, classification_bundles, segmentation_bundles
from conftest import REPO_ROOT

import custom_components

REQUIRED_FILES = [
    "LICENSE", "configs/metadata.json", "configs/logging.conf", "configs/train.json", "configs/evaluate.json",
    "configs/inference.json", "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json",
    "configs/quickstart.json", "docs/README.md", "docs/data_license.txt",
]  # fmt: skip
#: ids train.json and inference.json must agree on: the task and the network that inference rebuilds.
SHARED_IDS = ["num_classes", "class_names", "in_channels", "modalities", "data_layout", "pixdim", "hu_range",
              "intensity_normalisation", "label_mapping", "regions", "roi_size", "feature_size", "hidden_size",
              "mlp_dim", "num_heads", "network_def"]
#: ids train.json and inference.json of a classification bundle must agree on.
CLASSIFICATION_SHARED_IDS = ["class_names", "num_classes", "in_channels", "intensity_range", "intensity_normalisation",
                             "roi_size", "hidden_size", "mlp_dim", "num_layers", "num_heads", "dropout_rate",
                             "network_def"]


def read_config(bundle: str, name: str) -> dict:
    """A config's top-level ids and values, without ``_comment*`` documentation entries."""
    with open(os.path.join(BUNDLES, bundle, "configs", name)) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_comment")}


@pytest.mark.parametrize("bundle", segmentation_bundles() + classification_bundles())
def test_required_files(bundle):
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(BUNDLES, bundle, f))]
    assert not missing, f"{bundle} lacks {missing}"


@pytest.mark.parametrize("bundle", segmentation_bundles())
def test_train_and_inference_agree_on_the_task_and_the_network(bundle):
    train, inference = read_config(bundle, "train.json"), read_config(bundle, "inference.json")
    differ = [k for k in SHARED_IDS if train.get(k, KeyError) != inference.get(k, KeyError)]
    assert not differ, f"{bundle}: train.json and inference.json differ in {differ}"


@pytest.mark.parametrize("bundle", classification_bundles())
def test_classification_train_and_inference_agree(bundle):
    train, inference = read_config(bundle, "train.json"), read_config(bundle, "inference.json")
    differ = [k for k in CLASSIFICATION_SHARED_IDS if train.get(k, KeyError) != inference.get(k, KeyError)]
    assert not differ, f"{bundle}: train.json and inference.json differ in {differ}"


@pytest.mark.parametrize("bundle", classification_bundles())
def test_classification_bundles_keep_the_reference_ids_and_handlers(bundle):
    """Where a classification bundle means what the segmentation reference means (run ids, schedule, data, size,
    overlays), it uses the same ids and the same training / validation handler sets."""
    ours, reference = read_config(bundle, "train.json"), read_config(REFERENCE_BUNDLE, "train.json")
    shared = ["bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "datalist", "fold", "num_labelled", "device",
              "seed", "pretrained_encoder", "max_epochs", "val_interval", "warmup_epochs", "batch_size",
              "learning_rate", "weight_decay", "amp", "num_workers", "cache_rate", "checkpoint_interval", "resume",
              "roi_size", "hidden_size", "mlp_dim", "num_heads", "network", "initialize", "run"]
    assert [k for k in shared if k not in ours] == []
    for section in ("train", "validate"):
        targets = [[h["_target_"] for h in config[section]["handlers"]] for config in (ours, reference)]
        assert targets[0] == targets[1], f"{bundle}: {section}#handlers differ from {REFERENCE_BUNDLE}'s"
    for name in ("multi_gpu_train.json", "multi_gpu_evaluate.json"):
        assert read_config(bundle, name).keys() == read_config(REFERENCE_BUNDLE, name).keys()


def test_handler_sets_are_the_references():
    """The handler lists are part of the compared values; this names them when the reference loses one."""
    train = read_config(REFERENCE_BUNDLE, "train.json")
    targets = [h["_target_"].rsplit(".", 1)[-1] for h in train["train"]["handlers"]]
    assert targets == ["TrainingCheckpointLoader", "SeedEachEpoch", "LrScheduleHandler", "ValidationHandler",
                       "TrainingCheckpointSaver", "ProgressBarHandler", "StatsHandler", "TensorBoardStatsHandler"]
    validation = [h["_target_"].rsplit(".", 1)[-1] for h in train["validate"]["handlers"]]
    assert validation == ["StatsHandler", "TensorBoardStatsHandler", "ValidationLog", "TrainingCheckpointSaver"]


@pytest.mark.parametrize("bundle", all_bundles())
def test_overlays_use_no_index_based_overrides(bundle):
    """``validate#handlers#1#...`` silently hits another handler when a list changes; overlays name ids instead."""
    folder = os.path.join(BUNDLES, bundle, "configs")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            indexed = [k for k in json.load(open(os.path.join(folder, name))) if re.search(r"#\d+(#|$)", k)]
            assert not indexed, f"{bundle}/configs/{name}: index-based overrides {indexed}"


@pytest.mark.parametrize("bundle", all_bundles())
def test_metadata_is_versioned_and_names_every_channel(bundle):
    with open(os.path.join(BUNDLES, bundle, "configs", "metadata.json")) as f:
        metadata = json.load(f)
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project_version = tomllib.load(f)["project"]["version"]
    assert metadata["version"] == project_version == custom_components.__version__
    if bundle in segmentation_bundles():
        train = read_config(bundle, "train.json")
        pred = metadata["network_data_format"]["outputs"]["pred"]
        assert pred["num_channels"] == train["num_classes"] == len(pred["channel_def"])
        assert sorted(pred["channel_def"], key=int) == [str(k) for k in range(train["num_classes"])]
        assert pred["spatial_shape"] == train["roi_size"]
        assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == train["in_channels"]
        scored = range(0 if train["validate"]["key_metric"]["val_mean_dice"]["include_background"] else 1,
                       train["num_classes"])
        assert train["class_names"] == [pred["channel_def"][str(k)] for k in scored], "class_names: the scored channels"
    if bundle in classification_bundles():
        train = read_config(bundle, "train.json")
        pred = metadata["network_data_format"]["outputs"]["pred"]
        assert pred["type"] == "probabilities" and pred["num_channels"] == len(train["class_names"])
        assert [pred["channel_def"][str(k)] for k in range(pred["num_channels"])] == train["class_names"]
        assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == train["roi_size"]

