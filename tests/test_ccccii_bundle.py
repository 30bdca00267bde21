"""The CC-CCII classification bundle: train / evaluate / infer through ConfigWorkflow on synthetic PNG slice folders,
encoder loading, bad inputs named, folds by patient, and distributed evaluation under torchrun."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from bundle_utils import make_workflow, mlflow_run, run_error, run_torchrun, run_workflow, tracked
from PIL import Image

from custom_components.data import CCCCII_CLASSES
from custom_components.networks import GLMAE
from custom_components.synthetic import write_synthetic_classification_dataset
from custom_components.weights import encoder_state_dict, save_state_dict
from tools.quickstart import CLASSIFICATION_NEXT_STEPS, CONFIGS, next_steps_text

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

BUNDLE = "glmae_ccccii_classification"
SIZES = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4, "roi_size": [32, 32, 16]}


def train_overrides(folder, datalist, **extra):
    """Tiny-size overrides of train.json (and evaluate.json); the device as a string, as on the command line."""
    return dict(datalist=str(datalist), dataset_dir=os.path.dirname(datalist), ckpt_dir=str(folder / "models"),
                output_dir=str(folder / "runs"), max_epochs=2, val_interval=1, warmup_epochs=1, batch_size=2,
                amp=False, num_workers=0, cache_rate=0.0, device="cpu") | SIZES | extra


def inference_overrides(datalist, checkpoint, out, **extra):
    return dict(datalist=str(datalist), checkpoint=str(checkpoint), output_dir=str(out), amp=False, num_workers=0,
                device="cpu") | SIZES | extra


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """9 patients (3 per class, some with two scans of other slice counts) in 3 folds, and 2 test scans."""
    return write_synthetic_classification_dataset(tmp_path_factory.mktemp("ccccii_data"), num_patients=9,
                                                  shape=(48, 48, 12), num_folds=3, num_test=2, seed=1)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ccccii_run")
    run_workflow(make_workflow(BUNDLE, ["train.json"], **train_overrides(folder, dataset), **tracked(folder)))
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def validation_scans(datalist, fold=0):
    return [e for e in json.load(open(datalist))["training"] if e["fold"] == fold]


def test_train_keeps_the_best_model_by_validation_macro_auc(trained):
    rows = list(csv.DictReader(open(trained / "runs" / "val_metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and {"val_auc", "val_accuracy"} <= set(rows[0])
    best = json.load(open(trained / "runs" / "best_metric.json"))
    assert best["val_auc"] == max(float(r["val_auc"]) for r in rows)
    params, history, artifacts = mlflow_run(trained / "runs")  # --tracking mlflow
    assert params["max_epochs"] == "2" and artifacts == ["config_executed.json"] and history["train_loss"]
    assert history["val_auc"] == pytest.approx([float(r["val_auc"]) for r in rows])
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert state["head.weight"].shape == (3, SIZES["hidden_size"])


def test_evaluate_writes_metrics_and_the_confusion_matrix(trained, dataset):
    run_workflow(make_workflow(BUNDLE, ["train.json", "evaluate.json"], **train_overrides(trained, dataset)))
    eval_dir = trained / "runs" / "eval"
    metrics = dict(read_csv(eval_dir / "metrics.csv"))
    assert set(metrics) == {"val_auc", "val_accuracy"}
    matrix = read_csv(eval_dir / "confusion_matrix.csv")
    assert matrix[0] == ["true \\ predicted", *CCCCII_CLASSES] and [r[0] for r in matrix[1:]] == list(CCCCII_CLASSES)
    counts = np.array([[int(v) for v in r[1:]] for r in matrix[1:]])
    validation = validation_scans(dataset)
    assert counts.sum() == len(validation)
    assert [int(n) for n in counts.sum(axis=1)] == [sum(e["label"] == c for e in validation) for c in CCCCII_CLASSES]
    assert float(metrics["val_accuracy"]) == pytest.approx(np.trace(counts) / counts.sum())
    per_class = read_csv(eval_dir / "per_class_metrics.csv")
    assert per_class[0] == ["class", "cases", "sensitivity", "specificity"] and len(per_class) == 5
    with Image.open(eval_dir / "confusion_matrix.png") as image:
        assert image.size[0] > 300
    assert len(read_csv(eval_dir / "predictions.csv")) == len(validation) + 1


def test_inference_writes_probabilities_and_the_predicted_class(trained, dataset):
    out = trained / "inference"
    run_workflow(make_workflow(BUNDLE, ["inference.json"], workflow_type="infer",
                               **inference_overrides(dataset, trained / "models" / "model.pt", out)))
    rows = read_csv(out / "predictions.csv")
    assert rows[0] == ["image", *CCCCII_CLASSES, "predicted"]
    test_scans = [os.path.join(os.path.dirname(dataset), e["image"]) for e in json.load(open(dataset))["testing"]]
    assert [os.path.normpath(r[0]) for r in rows[1:]] == [os.path.normpath(p) for p in test_scans]
    for row in rows[1:]:
        probabilities = [float(v) for v in row[1:4]]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert row[4] == CCCCII_CLASSES[int(np.argmax(probabilities))]


def test_finetune_starts_from_the_pretrained_encoder(tmp_path, dataset):
    """A GL-MAE encoder pre-trained on 32³ cubes loads into the classifier's 32x32x16 grid (2x2x1 tokens): blocks
    copied, position embeddings interpolated; null trains from scratch."""
    glmae = GLMAE(img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, decoder_hidden_size=48,
                  decoder_num_layers=1, decoder_num_heads=4, head_out_dim=16, head_hidden_dim=32, head_bottleneck_dim=8)
    save_state_dict(encoder_state_dict(glmae), tmp_path / "encoder.pt")
    workflow = make_workflow(BUNDLE, ["train.json"], **train_overrides(
        tmp_path, dataset, pretrained_encoder=str(tmp_path / "encoder.pt")))
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    assert torch.equal(network.vit.blocks[1].attn.qkv.weight, glmae.encoder.blocks[1].attn.qkv.weight)
    assert network.vit.patch_embedding.position_embeddings.shape == (1, 4, 48)
    scratch = make_workflow(BUNDLE, ["train.json"], **train_overrides(tmp_path, dataset))
    scratch.initialize()
    assert not torch.equal(scratch.parser.get_parsed_content("network").vit.blocks[1].attn.qkv.weight,
                           glmae.encoder.blocks[1].attn.qkv.weight)


def test_linear_probe_trains_only_the_norm_and_the_linear_layer(tmp_path, dataset):
    """--freeze_encoder True is a linear probe: the pre-trained encoder in model.pt is the one given, the head moved."""
    glmae = GLMAE(img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, decoder_hidden_size=48,
                  decoder_num_layers=1, decoder_num_heads=4, head_out_dim=16, head_hidden_dim=32, head_bottleneck_dim=8)
    save_state_dict(encoder_state_dict(glmae), tmp_path / "encoder.pt")
    workflow = make_workflow(BUNDLE, ["train.json"], **train_overrides(
        tmp_path, dataset, pretrained_encoder=str(tmp_path / "encoder.pt"), freeze_encoder=True, max_epochs=1))
    workflow.initialize()
    optimizer = workflow.parser.get_parsed_content("optimizer")
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4  # norm (weight, bias), head (weight, bias)
    head_before = workflow.parser.get_parsed_content("network").head.weight.detach().clone()
    workflow.run()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert torch.equal(state["vit.blocks.1.attn.qkv.weight"], glmae.encoder.blocks[1].attn.qkv.weight)
    assert not torch.equal(state["head.weight"], head_before)


def corrupt_slice(scan):
    (scan / "3.png").write_bytes(b"not a png")
    return "3.png"


@pytest.mark.parametrize("change,named", [
    (lambda entry, scan: corrupt_slice(scan), ["3.png", "cannot be read"]),
    (lambda entry, scan: entry.update(label="COVID"), ["'COVID'", "NCP, CP, Normal"]),
    (lambda entry, scan: entry.pop("label"), ["has no label"]),
])
def test_a_bad_training_entry_is_an_error_naming_it(tmp_path, dataset, change, named):
    """A corrupt slice image, an unknown class name and a training entry without a label each stop the run with an
    error that names the scan (and the slice, the value, the allowed names)."""
    root = os.path.dirname(dataset)
    entries = [dict(e, image=os.path.join(root, e["image"])) for e in json.load(open(dataset))["training"][:3]]
    scan = tmp_path / "scan_copy"
    scan.mkdir()
    for f in os.listdir(entries[1]["image"]):
        (scan / f).write_bytes(open(os.path.join(entries[1]["image"], f), "rb").read())
    entries[1]["image"] = str(scan)
    named = named + [str(scan)]
    change(entries[1], scan)
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps({"training": entries, "validation": entries[:1]}))
    workflow = make_workflow(BUNDLE, ["train.json"], **train_overrides(tmp_path, datalist, fold=None, max_epochs=1))
    chain = run_error(workflow)
    assert all(text in chain for text in named), chain[-2000:]


def test_distributed_evaluation_gathers_every_scan(trained, dataset):
    """Two CPU processes (gloo) split the validation scans; the confusion matrix and the predictions rank 0 writes
    hold every scan once."""
    out = trained / "runs_ddp"
    run_torchrun(BUNDLE, ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
                 **train_overrides(trained, dataset, output_dir=str(out)))
    matrix = read_csv(out / "eval" / "confusion_matrix.csv")
    assert sum(int(v) for row in matrix[1:] for v in row[1:]) == len(validation_scans(dataset))
    images = [row[0] for row in read_csv(out / "eval" / "predictions.csv")[1:]]
    assert len(images) == len(set(images)) == len(validation_scans(dataset))


def test_quickstart_and_its_printed_next_steps_run(tmp_path):
    """The quickstart overlay writes its synthetic scans and trains; the evaluate and inference commands the
    quickstart tool prints for this bundle run on the model it trained (sizes made tiny)."""
    tiny = dict(synthetic_data_dir=str(tmp_path / "data"), num_patients=6, volume_shape=[32, 32, 8], num_folds=2,
                ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), max_epochs=1, val_interval=1,
                device="cpu") | SIZES
    run_workflow(make_workflow(BUNDLE, CONFIGS, **tiny))
    evaluate, inference = (configs for _, configs in CLASSIFICATION_NEXT_STEPS)
    run_workflow(make_workflow(BUNDLE, evaluate, **tiny))
    assert (tmp_path / "runs" / "eval" / "confusion_matrix.png").exists()
    run_workflow(make_workflow(BUNDLE, inference, workflow_type="infer",
                               **tiny | {"output_dir": str(tmp_path / "inference")}))
    assert len(read_csv(tmp_path / "inference" / "predictions.csv")) == 1 + 3  # header, the 3 test scans
    assert "macro AUC" in next_steps_text(BUNDLE) and "'configs/evaluate.json'" in next_steps_text(BUNDLE)
