"""Every CT segmentation bundle trains, evaluates and infers through ConfigWorkflow on its own synthetic layout (the
BraTS bundle, MRI in and regions out, has its own tests in test_brats_bundle.py)."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import make_workflow, mlflow_run, run_error, run_workflow, segmentation_bundles, tracked
from ignite.engine import Events

from custom_components.synthetic import SYNTHETIC_TASKS, make_synthetic_ct, write_synthetic_dataset

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

TINY = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8}
#: per bundle: the tiny ROI and the synthetic volume shape the tests use (COVID-19-20 crops are flat).
SHAPES = {"glmae_covid19_20_segmentation": ([32, 32, 16], (48, 48, 24))}
DEFAULT_SHAPE = ([32, 32, 32], (48, 48, 32))
BUNDLES = [b for b in segmentation_bundles() if not SYNTHETIC_TASKS.get(b, {}).get("brain_mri")]


def roi_and_shape(bundle):
    return SHAPES.get(bundle, DEFAULT_SHAPE)


def test_every_segmentation_bundle_has_a_synthetic_layout():
    assert set(segmentation_bundles()) == set(SYNTHETIC_TASKS)


def overrides(bundle, folder, datalist, **extra):
    """Tiny-size overrides of train.json (and evaluate.json) for ``bundle``'s synthetic dataset; the device is given
    as a string, as on the command line (``--device cpu``)."""
    layout = SYNTHETIC_TASKS[bundle]
    roi, _ = roi_and_shape(bundle)
    return dict(datalist=datalist, dataset_dir=os.path.dirname(datalist), ckpt_dir=str(folder / "models"),
                output_dir=str(folder / "runs"), max_epochs=2, val_interval=1, warmup_epochs=1, num_samples=1,
                amp=False, num_workers=0, cache_rate=0.0, pixdim=list(layout["spacing"]), sw_batch_size=1,
                roi_size=roi, device="cpu") | TINY | ({"ct_only": False} if "amos" in bundle else {}) | extra


def inference_overrides(bundle, datalist, checkpoint, out, **extra):
    layout = SYNTHETIC_TASKS[bundle]
    roi, _ = roi_and_shape(bundle)
    return dict(datalist=datalist, checkpoint=checkpoint, output_dir=str(out), amp=False, num_workers=0,
                pixdim=list(layout["spacing"]), sw_batch_size=1, roi_size=roi, device="cpu") | TINY | extra


@pytest.fixture(scope="module", params=BUNDLES)
def trained(request, tmp_path_factory):
    """``(bundle, folder, datalist)``: the bundle trained for 2 epochs on 4 synthetic volumes of its layout."""
    bundle = request.param
    folder = tmp_path_factory.mktemp(bundle)
    _, shape = roi_and_shape(bundle)
    datalist = write_synthetic_dataset(folder / "data", num_volumes=4, shape=shape, num_folds=2, num_test=1, seed=3,
                                       **SYNTHETIC_TASKS[bundle])
    run_workflow(make_workflow(bundle, ["train.json"], **overrides(bundle, folder, datalist), **tracked(folder)))
    return bundle, folder, datalist


def test_train_evaluate_infer(trained):
    bundle, folder, datalist = trained
    num_classes = make_workflow(bundle, ["train.json"]).parser.get_parsed_content("num_classes")
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert state["out.conv.conv.weight"].shape[0] == num_classes
    rows = list(csv.DictReader(open(folder / "runs" / "val_metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    best = json.load(open(folder / "runs" / "best_metric.json"))
    assert best["val_mean_dice"] == max(float(r["val_mean_dice"]) for r in rows)
    # --tracking mlflow: the loss of every iteration, the validation Dice of every epoch, the executed config
    params, history, artifacts = mlflow_run(folder / "runs")
    assert params["max_epochs"] == "2" and len(history["train_loss"]) == 2 * 2  # 4 volumes, batch 2
    assert history["val_mean_dice"] == pytest.approx([float(r["val_mean_dice"]) for r in rows])
    assert artifacts == ["config_executed.json"]

    run_workflow(make_workflow(bundle, ["train.json", "evaluate.json"], **overrides(bundle, folder, datalist)))
    eval_dir = folder / "runs" / "eval"
    class_names = make_workflow(bundle, ["train.json"]).parser.get_parsed_content("class_names")
    assert len(class_names) == num_classes - 1
    for name in ("val_mean_dice_raw.csv", "val_hd95_raw.csv", "val_nsd_raw.csv"):
        assert next(csv.reader(open(eval_dir / name))) == ["filename", *class_names, "mean"], name
    assert rows[0][f"val_mean_dice[{class_names[0]}]"]  # the training run's validations, per class
    for name in ("val_hd95_raw.csv", "val_nsd_raw.csv", "metrics.csv", "best_metric.json"):
        assert (eval_dir / name).exists(), name
    predictions = sorted(os.listdir(eval_dir / "predictions"))
    validation = [e for e in json.load(open(datalist))["training"] if e["fold"] == 0]
    assert len(predictions) == len(validation) == 2
    source = nib.load(os.path.join(os.path.dirname(datalist), validation[0]["image"]))
    pred = nib.load(eval_dir / "predictions" / predictions[0])
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine, atol=1e-4)

    out = folder / "inference"
    run_workflow(make_workflow(bundle, ["inference.json"], workflow_type="infer",
                               **inference_overrides(bundle, datalist, str(folder / "models" / "model.pt"), out)))
    test_image = json.load(open(datalist))["testing"][0]["image"]
    source = nib.load(os.path.join(os.path.dirname(datalist), test_image))
    name = os.path.basename(test_image).replace(".nii.gz", "")
    pred = nib.load(out / f"{name}_seg.nii.gz")
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine, atol=1e-4)
    assert np.asarray(pred.dataobj).max() < num_classes and pred.get_data_dtype() == np.uint8
    assert (out / "overlays" / f"{name}_overlay.png").exists()


def test_inference_segments_the_way_the_evaluation_scored(trained, tmp_path):
    """Inference applies the preprocessing the model was trained and evaluated with, the foreground crop included:
    on the validation cases its label maps are the evaluation's predictions. (Without the crop, the windows of the
    whole image held margins no training crop had, and a model that scored 0.76 Dice segmented at 0.45.)"""
    bundle, folder, datalist = trained
    run_workflow(make_workflow(bundle, ["train.json", "evaluate.json"],
                               **overrides(bundle, folder, datalist, output_dir=str(tmp_path / "runs"))))
    validation = [e for e in json.load(open(datalist))["training"] if e["fold"] == 0]
    cases = tmp_path / "validation.json"
    root = os.path.dirname(datalist)
    cases.write_text(json.dumps({"testing": [{"image": os.path.join(root, e["image"])} for e in validation]}))
    out = tmp_path / "inference"
    run_workflow(make_workflow(bundle, ["inference.json"], workflow_type="infer", **inference_overrides(
        bundle, str(cases), str(folder / "models" / "model.pt"), out, save_overlays=False)))
    for entry in validation:
        name = os.path.basename(entry["image"]).replace(".nii.gz", "_seg.nii.gz")
        scored = np.asarray(nib.load(tmp_path / "runs" / "eval" / "predictions" / name).dataobj)
        inferred = np.asarray(nib.load(out / name).dataobj)
        assert (scored != inferred).sum() == 0, f"{bundle} {name}: {(scored != inferred).sum()} voxels differ"


def write_case(folder, name, image, label, spacing):
    affine = np.diag([*spacing, 1.0])
    paths = {"image": str(folder / f"{name}_img.nii.gz"), "label": str(folder / f"{name}_lab.nii.gz")}
    nib.save(nib.Nifti1Image(image, affine), paths["image"])
    nib.save(nib.Nifti1Image(label, affine), paths["label"])
    return paths


def test_evaluation_scores_against_the_label_as_stored(tmp_path):
    """Original-space metrics compare with the label file itself, not one resampled to pixdim and back: on a
    0.75 x 0.75 x 3 mm case resampled to 1.5 mm, the round trip alone moves many boundary voxels."""
    bundle = "glmae_btcv_segmentation"
    image, label = make_synthetic_ct((64, 64, 20), num_classes=14, seed=1)
    case = write_case(tmp_path, "thin", image, label, (0.75, 0.75, 3.0))
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps({"training": [case], "validation": [case]}))
    workflow = make_workflow(bundle, ["train.json", "evaluate.json"],
                             **overrides(bundle, tmp_path, str(datalist), pixdim=[1.5, 1.5, 1.5]))
    workflow.initialize()
    (tmp_path / "models").mkdir()
    torch.save(workflow.parser.get_parsed_content("network").state_dict(), tmp_path / "models" / "model.pt")
    scored = []
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                lambda engine: scored.append(engine.state.output[0]["label"].argmax(0)))
    workflow.run()
    assert len(scored) == 1 and tuple(scored[0].shape) == label.shape
    differ = int((scored[0].numpy() != label).sum())
    assert differ == 0, f"the metrics saw a label that differs from the file in {differ} voxels"


@pytest.fixture(scope="module")
def mmwhs_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmwhs")
    layout = SYNTHETIC_TASKS["glmae_mmwhs_segmentation"]
    return folder, write_synthetic_dataset(folder / "data", num_volumes=2, shape=(48, 48, 32), num_folds=2,
                                           num_test=1, seed=4, **layout)


def test_mmwhs_raw_values_train_and_inference_writes_them_back(mmwhs_data):
    bundle = "glmae_mmwhs_segmentation"
    folder, datalist = mmwhs_data
    run_workflow(make_workflow(bundle, ["train.json"], **overrides(bundle, folder, datalist, max_epochs=1)))
    out = folder / "original_values"
    run_workflow(make_workflow(bundle, ["inference.json"], workflow_type="infer", **inference_overrides(
        bundle, datalist, str(folder / "models" / "model.pt"), out, write_original_labels=True)))
    pred = nib.load(next(out.glob("*_seg.nii.gz")))
    values = set(np.unique(np.asarray(pred.dataobj)).tolist())
    assert pred.get_data_dtype() == np.uint16 and values <= {0, 205, 420, 500, 550, 600, 820, 850}, values


def test_mmwhs_unknown_raw_value_names_the_file_and_the_value(mmwhs_data, tmp_path):
    bundle = "glmae_mmwhs_segmentation"
    _, datalist = mmwhs_data
    case = json.load(open(datalist))["training"][0]
    root = os.path.dirname(datalist)
    label = nib.load(os.path.join(root, case["label"]))
    data = np.asarray(label.dataobj).copy()
    data[data == 500] = 300
    bad = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(data, label.affine), str(bad))
    cases = tmp_path / "cases.json"
    entry = {"image": os.path.join(root, case["image"]), "label": str(bad)}
    cases.write_text(json.dumps({"training": [entry], "validation": [entry]}))
    workflow = make_workflow(bundle, ["train.json"], **overrides(bundle, tmp_path, str(cases), max_epochs=1))
    chain = run_error(workflow)
    assert "bad_label.nii.gz" in chain and "300" in chain and "label mapping" in chain


def test_amos_dataset_json_is_the_datalist_and_mri_cases_are_left_out(tmp_path):
    """AMOS22's own dataset.json: './imagesTr/amos_NNNN.nii.gz' paths, training and validation sections, CT cases
    below 500 and MRI cases from 500 on in the same folders."""
    bundle = "glmae_amos_segmentation"
    spacing = SYNTHETIC_TASKS[bundle]["spacing"]
    sections = {"training": [1, 5, 540], "validation": [14, 590]}
    content = {"name": "AMOS", "labels": {"0": "background"}}
    for section, numbers in sections.items():
        folder = "Tr" if section == "training" else "Va"
        for sub in (f"images{folder}", f"labels{folder}"):
            (tmp_path / sub).mkdir(exist_ok=True)
        content[section] = []
        for number in numbers:
            image, label = make_synthetic_ct((48, 48, 32), num_classes=16, seed=number)
            name = f"amos_{number:04d}.nii.gz"
            for sub, array in ((f"images{folder}", image), (f"labels{folder}", label)):
                nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(tmp_path / sub / name))
            content[section].append({"image": f"./images{folder}/{name}", "label": f"./labels{folder}/{name}"})
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    workflow = make_workflow(bundle, ["train.json"], dataset_dir=str(tmp_path))
    workflow.initialize()
    train = workflow.parser.get_parsed_content("train_data")
    validation = workflow.parser.get_parsed_content("validation_data")
    assert [os.path.basename(e["image"]) for e in train] == ["amos_0001.nii.gz", "amos_0005.nii.gz"]
    assert [os.path.basename(e["image"]) for e in validation] == ["amos_0014.nii.gz"]
    assert all(os.path.isfile(e["label"]) for e in train + validation)
    run_workflow(make_workflow(bundle, ["train.json"], **overrides(bundle, tmp_path, str(tmp_path / "dataset.json"),
                                                                  max_epochs=1, ct_only=True)))


def test_a_model_of_other_sizes_or_a_missing_one_is_one_clear_sentence(tmp_path):
    """The quickstart's small model given to the default-size inference stops with the file, the shapes, the size
    ids it was trained with and the overlay to add, not a page of load_state_dict output."""
    bundle = "glmae_btcv_segmentation"
    datalist = write_synthetic_dataset(tmp_path / "data", num_volumes=1, shape=(48, 48, 32), num_folds=1,
                                       num_test=1, **SYNTHETIC_TASKS[bundle])
    small = make_workflow(bundle, ["inference.json"], workflow_type="infer",
                          **inference_overrides(bundle, datalist, "unused", tmp_path / "out"))
    model = tmp_path / "model.pt"
    torch.save(small.parser.get_parsed_content("network_def").state_dict(), model)
    wide = make_workflow(bundle, ["inference.json"], workflow_type="infer", **inference_overrides(
        bundle, datalist, str(model), tmp_path / "out", hidden_size=96, mlp_dim=192, feature_size=16))
    with pytest.raises(RuntimeError) as info:  # MONAI wraps what the config's initialize raises
        wide.initialize()
    message = str(info.value.__cause__)
    assert isinstance(info.value.__cause__, ValueError) and str(model) in message and "--hidden_size 48" in message and "--feature_size 8" in message
    assert "[48, 1, 16, 16, 16] in the file, [96, 1, 16, 16, 16] in the network" in message
    assert "configs/quickstart.json" in message and "\n" not in message
    state = small.parser.get_parsed_content("network_def").state_dict()
    torch.save(state | {"extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    extra = make_workflow(bundle, ["inference.json"], workflow_type="infer", **inference_overrides(
        bundle, datalist, str(tmp_path / "extra.pt"), tmp_path / "out"))
    with pytest.raises(RuntimeError) as info:
        extra.initialize()
    assert "0 missing, e.g. []; 1 unexpected, e.g. ['extra.weight']" in str(info.value.__cause__)
    missing = make_workflow(bundle, ["inference.json"], workflow_type="infer", **inference_overrides(
        bundle, datalist, str(tmp_path / "nowhere" / "model.pt"), tmp_path / "out"))
    with pytest.raises(RuntimeError) as info:
        missing.initialize()
    assert "nowhere/model.pt' does not exist: train first" in str(info.value.__cause__)
    # a truncated file, and one that holds code to unpickle, are refused in one sentence that names the file
    truncated, pickled = tmp_path / "truncated.pt", tmp_path / "pickled.pt"
    truncated.write_bytes(model.read_bytes()[:1000])
    torch.save({"network": torch.nn.Linear(1, 1)}, pickled)
    for path, reason in ((truncated, "it is truncated or corrupt"), (pickled, "it holds objects other than tensors")):
        broken = make_workflow(bundle, ["inference.json"], workflow_type="infer",
                               **inference_overrides(bundle, datalist, str(path), tmp_path / "out"))
        with pytest.raises(RuntimeError) as info:
            broken.initialize()
        message = str(info.value.__cause__)
        assert isinstance(info.value.__cause__, ValueError) and "\n" not in message
        assert message.startswith(f"model checkpoint '{path}' cannot be loaded: {reason}"), message
