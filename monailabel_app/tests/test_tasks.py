"""The app's tasks in-process, on tiny copies of the bundles: what they fix in MONAI Label 0.8.5 with MONAI 1.6
(each fix beside a test showing the stock task fails the same way), labels, and errors that name the problem."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLES, CLASSIFICATION, SEGMENTATION, synthetic_cases, synthetic_scan, tiny_bundle
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from custom_components.data import LABEL_CLASSES

BTCV, MMWHS, BRATS = "glmae_btcv_segmentation", "glmae_mmwhs_segmentation", "glmae_brats_segmentation"
CCCCII = CLASSIFICATION[0]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {name: str(tiny_bundle(name, root)) for name in (BTCV, MMWHS, BRATS, CCCCII)}


@pytest.fixture(scope="module")
def btcv_case(tmp_path_factory):
    return synthetic_cases(BTCV, tmp_path_factory.mktemp("btcv_data"))[0]


def test_segmentation_returns_a_label_map_in_the_input_grid(app, bundles, btcv_case):
    task = app.GLMAEBundleInferTask(bundles[BTCV], {})
    path, result = task({"image": btcv_case["image"], "device": "cpu"})
    label, image = nib.load(path), nib.load(btcv_case["image"])
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
    assert set(np.unique(np.asarray(label.dataobj)).astype(int)) <= {0, *task.labels.values()}
    assert result["label_names"] == task.labels


def test_stock_task_fails_on_the_image_path_field(bundles, btcv_case):
    """What GLMAEBundleInferTask.run_pre_transforms fixes: MONAI 1.6's Spacingd updates MONAI Label's
    ``image_path`` string as if it were a metadata dict of ``image``."""
    task = BundleInferTask(bundles[BTCV], {})
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        task({"image": btcv_case["image"], "device": "cpu"})


def test_classification_returns_named_class_probabilities(app, bundles, tmp_path):
    task = app.GLMAEBundleInferTask(bundles[CCCCII], {})
    assert task.type == InferType.CLASSIFICATION and task.labels == {"NCP": 0, "CP": 1, "Normal": 2}
    path, result = task({"image": str(synthetic_scan(tmp_path / "scan.nii.gz")), "device": "cpu"})
    assert path is None
    prediction = result["prediction"]
    assert [p["label"] for p in prediction] == ["NCP", "CP", "Normal"]
    assert sum(p["score"] for p in prediction) == pytest.approx(1.0, abs=1e-4)


def test_stock_task_fails_on_classification(bundles, tmp_path):
    """What the classification type without ``Restored`` fixes: the stock task restores a label map's shape."""
    task = BundleInferTask(bundles[CCCCII], {})
    with pytest.raises(ValueError, match="broadcast"):
        task({"image": str(synthetic_scan(tmp_path / "scan.nii.gz")), "device": "cpu"})


def test_labels_are_the_values_of_the_label_map(app, bundles):
    btcv = app.GLMAEBundleInferTask(bundles[BTCV], {}).labels
    assert list(btcv.items())[:2] == [("spleen", 1), ("right kidney", 2)] and len(btcv) == 13
    mmwhs = app.GLMAEBundleInferTask(bundles[MMWHS], {}).labels  # the dataset's own values (label_mapping)
    assert list(mmwhs.values()) == [205, 420, 500, 550, 600, 820, 850]
    assert next(iter(mmwhs)) == "left ventricle myocardium"
    brats = app.GLMAEBundleInferTask(bundles[BRATS], {}).labels  # label classes in the MSD layout's values
    assert brats == {LABEL_CLASSES[1]: 2, LABEL_CLASSES[2]: 1, LABEL_CLASSES[3]: 3}


def test_training_without_pretrained_weights(app, bundles):
    """``pretrained: false`` trains from train.json's network; MONAI Label 0.8.5 crashes on it."""
    handlers = []
    app.GLMAEBundleTrainTask(bundles[BTCV], {})._load_checkpoint(None, False, handlers)
    assert handlers == []
    with pytest.raises(TypeError):
        BundleTrainTask(bundles[BTCV], {})._load_checkpoint(None, False, [])


def test_training_schedule_and_weights_follow_the_run(app, bundles):
    task = app.GLMAEBundleTrainTask(bundles[BTCV], {})
    handlers = [{"_target_": "ValidationHandler"}, {"_target_": "StatsHandler"}]
    overrides = task._update_overrides({"train#trainer#max_epochs": 20, "train#handlers": list(handlers),
                                        "validate#dataset#data": [{"image": "a", "label": "b"}]})
    assert (overrides["max_epochs"], overrides["warmup_epochs"], overrides["val_interval"]) == (20, 2, 20)
    assert overrides["train#handlers"] == handlers
    overrides = task._update_overrides({"train#trainer#max_epochs": 1, "train#handlers": list(handlers),
                                        "validate#dataset#data": []})
    assert (overrides["warmup_epochs"], overrides["val_interval"]) == (0, 1)
    targets = [h["_target_"] for h in overrides["train#handlers"]]
    assert targets == ["StatsHandler", "custom_components.handlers.TrainingCheckpointSaver"]
    assert overrides["train#handlers"][-1]["final_filename"] == "model.pt"


def test_a_bundle_gets_served_once_its_weights_exist(app, tmp_path):
    bundle = tiny_bundle(BTCV, tmp_path / "bundles")
    weights = bundle / "models" / "model.pt"
    shutil.move(weights, tmp_path / "model.pt")
    ml = app.GLMAEApp(str(tmp_path / "app"), str(tmp_path / "studies"), {"bundles_dir": str(tmp_path / "bundles")})
    assert list(ml.info()["models"]) == [] and list(ml.info()["trainers"]) == [BTCV]
    with pytest.raises(MONAILabelException, match=f"bundle '{BTCV}' has no trained weights: {weights} does not"):
        ml.infer({"model": BTCV, "image": "x"})
    with pytest.raises(MONAILabelException, match="model 'spleen' is not served by this app; served: none"):
        ml.infer({"model": "spleen", "image": "x"})
    shutil.move(tmp_path / "model.pt", weights)
    assert list(ml.info()["models"]) == [BTCV]


@pytest.mark.parametrize("conf, message", [
    ({"bundles_dir": "{tmp}/nothing"}, "bundles_dir '{tmp}/nothing' is not a folder"),
    ({"bundles_dir": "{tmp}"}, "bundles_dir '{tmp}' holds no segmentation or classification bundle"),
    ({"models": "glmae_btcv"}, (f"bundle 'glmae_btcv' \\(--conf models\\) is not a folder of {BUNDLES}; available: "
                                f"{', '.join(sorted(CLASSIFICATION + SEGMENTATION))}")),
    ({"models": "glmae_pretraining"}, "bundle 'glmae_pretraining' cannot be served: only segmentation and"),
])
def test_bad_conf_is_named(app, tmp_path, conf, message):
    conf = {k: v.format(tmp=tmp_path) for k, v in conf.items()}
    with pytest.raises(ValueError, match=message.format(tmp=tmp_path)):
        app.GLMAEApp(str(tmp_path / "app"), str(tmp_path / "studies"), conf)


def test_a_bundle_without_inference_config_is_named(app, tmp_path):
    shutil.copytree(BUNDLES / BTCV / "configs", tmp_path / BTCV / "configs")
    (tmp_path / BTCV / "configs" / "inference.json").unlink()
    with pytest.raises(ValueError, match=f"bundle '{BTCV}' cannot be served: {tmp_path / BTCV}/configs/inference.json "
                                         f"does not exist"):
        app.GLMAEApp(str(tmp_path / "app"), str(tmp_path / "studies"), {"bundles_dir": str(tmp_path)})
