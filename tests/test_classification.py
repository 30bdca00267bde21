"""Units of the classification bundle: the classifier, the slice-folder reader, classification datalists and their
folds by patient, the synthetic scans, the confusion-matrix arithmetic and the probability CSV."""

import csv
import json
import os
from collections import defaultdict

import numpy as np
import pytest
import torch
from monai.transforms import EnsureChannelFirstd
from PIL import Image

from custom_components.data import CCCCII_CLASSES, load_classification_datalist, write_classification_datalist
from custom_components.data.classification import class_index
from custom_components.handlers.classification import ProbabilityCSVSaver, per_class_metrics
from custom_components.networks import ViTClassifier
from custom_components.synthetic import make_synthetic_scan, write_synthetic_classification_dataset
from custom_components.transforms import LoadScand
from custom_components.weights import load_encoder


def test_classifier_shapes_and_ill_arguments():
    net = ViTClassifier(1, 3, (32, 32, 16), hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    assert net(torch.rand(2, 1, 32, 32, 16)).shape == (2, 3)
    assert net.feat_size == (2, 2, 1)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTClassifier(1, 3, (32, 32, 20))
    with pytest.raises(ValueError, match="num_classes"):
        ViTClassifier(1, 1, 32)


def test_classifier_loads_an_encoder_of_another_grid():
    """A ViT encoder of a 32³ grid (2x2x2 tokens) loads into a 64x64x16 classifier (4x4x1): every block tensor
    arrives, the position embeddings are interpolated to 16 tokens, the head stays as it was."""
    source = ViTClassifier(1, 3, 32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4).vit
    target = ViTClassifier(1, 3, (64, 64, 16), hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    head = target.head.weight.clone()
    report = load_encoder(target, source.state_dict())
    assert report.interpolated and not [k for k in report.missing if "norm_cross_attn" not in k]
    assert torch.equal(target.vit.blocks[1].mlp.linear1.weight, source.blocks[1].mlp.linear1.weight)
    assert target.vit.patch_embedding.position_embeddings.shape == (1, 16, 48)
    assert torch.equal(target.head.weight, head)


def write_scan(folder, sizes):
    folder.mkdir(parents=True)
    for index, size in enumerate(sizes):
        Image.fromarray(np.full(size, index * 10, np.uint8)).save(folder / f"{index}.png")
    return folder


def test_slice_folder_reads_slices_in_numeric_order(tmp_path):
    scan = write_scan(tmp_path / "scan", [(20, 24)] * 12)
    image = EnsureChannelFirstd("image")(LoadScand("image", image_only=True)({"image": str(scan)}))["image"]
    assert image.shape == (1, 20, 24, 12)
    assert image[0, 0, 0].tolist() == [10.0 * k for k in range(12)]  # 10.png after 9.png, not after 1.png


@pytest.mark.parametrize("sizes,message", [
    ([(20, 24), (20, 24), (24, 20)], "'2.png' is 24x20 but '0.png' is 20x24"),
    ([], "holds no slice image"),
])
def test_slice_folder_problems_name_the_folder(tmp_path, sizes, message):
    scan = write_scan(tmp_path / "scan", sizes)
    with pytest.raises(ValueError, match=message) as info:
        LoadScand("image", image_only=True)({"image": str(scan)})
    assert str(scan) in str(info.value)


def test_class_index_accepts_names_any_case_and_indices():
    assert [class_index(v, CCCCII_CLASSES, "x") for v in ("NCP", "cp", "normal", 2, "1")] == [0, 1, 2, 2, 1]
    with pytest.raises(ValueError, match=r"entry 7: unknown class 'COVID'; allowed class names: NCP, CP, Normal"):
        class_index("COVID", CCCCII_CLASSES, "entry 7")
    with pytest.raises(ValueError, match="unknown class 3"):
        class_index(3, CCCCII_CLASSES, "entry 0")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A synthetic CC-CCII tree: 12 patients, half of them with two scans."""
    root = tmp_path_factory.mktemp("tree")
    write_synthetic_classification_dataset(root, num_patients=12, shape=(32, 32, 8), num_folds=3, num_test=0)
    return root / "ccccii"


@pytest.mark.parametrize("seed,num_folds", [(0, 3), (1, 4), (7, 5)])
def test_a_patient_never_appears_in_two_folds(tree, tmp_path, seed, num_folds):
    datalist = write_classification_datalist(tree, tmp_path / "d.json", num_folds=num_folds, seed=seed)
    entries = json.load(open(datalist))["training"]
    folds = defaultdict(set)
    for entry in entries:
        folds[entry["patient"]].add(entry["fold"])
    assert len(entries) > len(folds)  # some patients have two scans
    assert all(len(f) == 1 for f in folds.values()), folds
    per_fold = np.bincount([next(iter(f)) for f in folds.values()], minlength=num_folds)
    assert per_fold.max() - per_fold.min() <= 1  # patients dealt evenly
    again = write_classification_datalist(tree, tmp_path / "again.json", num_folds=num_folds, seed=seed)
    assert json.load(open(again))["training"] == entries


def test_csv_datalist_reads_like_the_json(tree, tmp_path):
    as_json = write_classification_datalist(tree, tmp_path / "d.json", num_folds=3)
    as_csv = write_classification_datalist(tree, tmp_path / "d.csv", num_folds=3)
    for section in ("training", "validation"):
        assert (load_classification_datalist(as_json, section, fold=1)
                == load_classification_datalist(as_csv, section, fold=1))
    assert next(csv.reader(open(as_csv))) == ["image", "label", "patient", "fold"]


def test_a_datalist_with_a_patient_in_two_folds_is_refused(tree, tmp_path):
    datalist = write_classification_datalist(tree, tmp_path / "d.json", num_folds=3)
    content = json.load(open(datalist))
    first = content["training"][0]
    content["training"].append(dict(first, image=first["image"] + "_copy", fold=(first["fold"] + 1) % 3))
    (tmp_path / "leak.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"patient '{first['patient']}' is in fold {first['fold']}"):
        load_classification_datalist(tmp_path / "leak.json", "training", fold=0)


def test_unknown_class_folder_is_named(tree, tmp_path):
    (tmp_path / "NCP" / "1" / "2").mkdir(parents=True)
    (tmp_path / "Influenza").mkdir()
    with pytest.raises(ValueError, match="Influenza' is not a class folder: allowed class names are NCP, CP, Normal"):
        write_classification_datalist(tmp_path, tmp_path / "d.json")


def test_synthetic_classes_are_not_told_apart_by_global_intensity():
    """The mean grey value of a scan predicts its class no better than chance (nearest class mean, held out)."""
    means = np.array([[make_synthetic_scan((48, 48, 8), label, seed=10 * s + label).mean() for label in range(3)]
                      for s in range(30)])
    train, test = means[:20], means[20:]
    centres = train.mean(axis=0)
    predicted = np.abs(test[:, :, None] - centres[None, None, :]).argmin(axis=2)
    assert (predicted == np.arange(3)).mean() < 0.5


def test_per_class_metrics_by_hand():
    matrix = np.array([[3, 1, 0], [2, 2, 0], [0, 0, 0]])  # no case of the third class
    metrics = per_class_metrics(matrix)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert np.allclose(metrics["sensitivity"][:2], [3 / 4, 2 / 4]) and np.isnan(metrics["sensitivity"][2])
    assert np.allclose(metrics["specificity"], [2 / 4, 3 / 4, 1.0])  # class 0: TN 2 of the 4 others
    assert metrics["cases"].tolist() == [4, 4, 0]


def test_probability_csv_has_a_header_and_the_predicted_name(tmp_path):
    saver = ProbabilityCSVSaver(tmp_path, class_names=CCCCII_CLASSES)
    saver.save(torch.tensor([0.2, 0.7, 0.1]), {"filename_or_obj": "/data/a"})
    saver.finalize()
    assert list(csv.reader(open(tmp_path / "predictions.csv"))) == [
        ["image", "NCP", "CP", "Normal", "predicted"], ["/data/a", "0.200000", "0.700000", "0.100000", "CP"]]
    saver.save(torch.tensor([0.5, 0.5]), {"filename_or_obj": "/data/b"})
    with pytest.raises(ValueError, match="/data/b: 2 probabilities for 3 classes"):
        saver.finalize()


def test_explicit_validation_section_is_read_when_entries_have_no_fold(tree, tmp_path):
    datalist = write_classification_datalist(tree, tmp_path / "d.json", num_folds=3)
    entries = json.load(open(datalist))["training"]
    plain = [{k: v for k, v in e.items() if k != "fold"} for e in entries]
    (tmp_path / "sections.json").write_text(json.dumps({"training": plain[2:], "validation": plain[:2]}))
    validation = load_classification_datalist(tmp_path / "sections.json", "validation", fold=0)
    assert [e["image"] for e in validation] == [os.path.normpath(tmp_path / e["image"]) for e in plain[:2]]
