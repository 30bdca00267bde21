"""The BraTS bundle: four MRI modalities in, three overlapping regions out, in both dataset layouts."""

import csv
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import make_workflow, run_error, run_workflow
from tool_utils import run_tool

from custom_components.data import BRATS_LAYOUTS, brats_inference_datalist, brats_label_mapping
from custom_components.synthetic import SYNTHETIC_TASKS, write_synthetic_dataset
from custom_components.synthetic.mri import make_synthetic_brain_mri
from custom_components.transforms import LabelToRegionsd, LoadModalitiesd, RegionsToLabeld
from custom_components.transforms.io import case_name
from custom_components.transforms.regions import painting_order

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

BUNDLE = "glmae_brats_segmentation"
TINY = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8, "roi_size": [32, 32, 32]}
SHAPE = (48, 48, 32)
REGIONS = [[1, 3], [1, 2, 3], [3]]


def write_data(folder, layout, num_volumes=4):
    return write_synthetic_dataset(folder, num_volumes=num_volumes, shape=SHAPE, num_folds=min(2, num_volumes),
                                   num_test=1, seed=3,
                                   layout=layout, **SYNTHETIC_TASKS[BUNDLE])


def overrides(folder, datalist, layout, **extra):
    return dict(datalist=datalist, dataset_dir=os.path.dirname(datalist), ckpt_dir=str(folder / "models"),
                output_dir=str(folder / "runs"), max_epochs=2, val_interval=1, warmup_epochs=1, amp=False,
                num_workers=0, cache_rate=0.0, sw_batch_size=1, device="cpu", data_layout=layout) | TINY | extra


def inference_overrides(folder, layout, **extra):
    return dict(checkpoint=str(folder / "models" / "model.pt"), output_dir=str(folder / "inference"), amp=False,
                num_workers=0, sw_batch_size=1, device="cpu", data_layout=layout) | TINY | extra


@pytest.fixture(scope="module", params=sorted(BRATS_LAYOUTS))
def trained(request, tmp_path_factory):
    """``(layout, folder, datalist)``: the bundle trained for 2 epochs on 4 synthetic cases of ``layout``."""
    layout = request.param
    folder = tmp_path_factory.mktemp(f"brats_{layout}")
    datalist = write_data(folder / "data", layout)
    run_workflow(make_workflow(BUNDLE, ["train.json"], **overrides(folder, datalist, layout)))
    return layout, folder, datalist


def test_train_evaluate_infer(trained):
    layout, folder, datalist = trained
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert state["out.conv.conv.weight"].shape[0] == 3
    assert state["vit.patch_embedding.patch_embeddings.weight"].shape[1] == 4  # the four modalities

    run_workflow(make_workflow(BUNDLE, ["train.json", "evaluate.json"], **overrides(folder, datalist, layout)))
    eval_dir = folder / "runs" / "eval"
    regions = ["tumour core (TC)", "whole tumour (WT)", "enhancing tumour (ET)"]
    for name in ("val_mean_dice_raw.csv", "val_hd95_raw.csv", "val_nsd_raw.csv"):
        assert next(csv.reader(open(eval_dir / name))) == ["filename", *regions, "mean"], name
    validation = [e for e in json.load(open(datalist))["training"] if e["fold"] == 0]
    predictions = sorted(os.listdir(eval_dir / "predictions"))
    assert len(predictions) == len(validation) and all(p.endswith("_regions.nii.gz") for p in predictions)
    first = validation[0]["image"]
    source = nib.load(os.path.join(os.path.dirname(datalist), first if isinstance(first, str) else first[0]))
    regions = nib.load(eval_dir / "predictions" / predictions[0])
    assert regions.shape == (*SHAPE, 3) and np.allclose(regions.affine, source.affine, atol=1e-4)

    run_workflow(make_workflow(BUNDLE, ["inference.json"], workflow_type="infer",
                               **inference_overrides(folder, layout, datalist=datalist)))
    out = folder / "inference"
    seg = nib.load(next(out.glob("*_seg.nii.gz")))
    case = os.path.basename(str(next(out.glob("*_seg.nii.gz")))).removesuffix("_seg.nii.gz")
    assert case == ("BRATS_004" if layout == "msd" else "BraTS2021_00004")
    values = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert seg.shape == SHAPE and seg.get_data_dtype() == np.uint8 and values <= set(BRATS_LAYOUTS[layout]), values
    regions = np.asarray(nib.load(out / f"{case}_regions.nii.gz").dataobj)
    assert regions.shape == (*SHAPE, 3)
    # the label map is painted from the regions in the layout's values: WT as edema, then TC as the core, then ET
    core, edema, enhancing = {"msd": (2, 1, 3), "brats2021": (1, 2, 4)}[layout]
    expected = np.zeros(SHAPE, dtype=np.uint8)
    for channel, value in ((1, edema), (0, core), (2, enhancing)):
        expected[regions[..., channel] > 0] = value
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected)
    assert (out / "overlays" / f"{case}_overlay.png").exists()


def test_inference_segments_the_way_the_evaluation_scored(trained, tmp_path):
    """On the validation cases, inference writes the regions the evaluation scored (same preprocessing)."""
    layout, folder, datalist = trained
    run_workflow(make_workflow(BUNDLE, ["train.json", "evaluate.json"],
                               **overrides(folder, datalist, layout, output_dir=str(tmp_path / "runs"))))
    validation = [e for e in json.load(open(datalist))["training"] if e["fold"] == 0]
    cases = os.path.join(os.path.dirname(datalist), "validation_cases.json")
    with open(cases, "w") as f:
        json.dump({"testing": [{"image": e["image"]} for e in validation]}, f)
    run_workflow(make_workflow(BUNDLE, ["inference.json"], workflow_type="infer", **inference_overrides(
        folder, layout, datalist=cases, output_dir=str(tmp_path / "inference"), save_overlays=False)))
    scored = sorted((tmp_path / "runs" / "eval" / "predictions").glob("*_regions.nii.gz"))
    assert len(scored) == len(validation)
    for path in scored:
        inferred = np.asarray(nib.load(tmp_path / "inference" / path.name).dataobj)
        assert np.array_equal(np.asarray(nib.load(path).dataobj), inferred), path.name


def test_inference_lists_the_cases_of_a_folder(trained, tmp_path):
    """Without a datalist, inference reads every 4D file (MSD) or every case folder (BraTS 2021) of dataset_dir."""
    layout, folder, datalist = trained
    test_dir = os.path.join(os.path.dirname(datalist), "imagesTs" if layout == "msd" else "testing")
    run_workflow(make_workflow(BUNDLE, ["inference.json"], workflow_type="infer", **inference_overrides(
        folder, layout, datalist=None, dataset_dir=test_dir, output_dir=str(tmp_path), save_overlays=False)))
    assert len(list(tmp_path.glob("*_seg.nii.gz"))) == len(list(tmp_path.glob("*_regions.nii.gz"))) == 1


def test_a_missing_modality_names_the_case_and_the_modality(tmp_path):
    datalist = write_data(tmp_path, "brats2021", num_volumes=1)
    case = tmp_path / "testing" / "BraTS2021_00001"
    (case / "BraTS2021_00001_t1ce.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case 'BraTS2021_00001' has no modality 't1ce'"):
        brats_inference_datalist(None, tmp_path / "testing", "brats2021")
    entry = json.load(open(datalist))["testing"][0]
    paths = [str(tmp_path / p) for p in entry["image"]]
    with pytest.raises(ValueError, match=r"case 'BraTS2021_00001': modality 't1ce' file '.*t1ce.nii.gz' does not "):
        LoadModalitiesd("image", modalities=("flair", "t1", "t1ce", "t2"), layout="brats2021")({"image": paths})


def test_a_mis_shaped_modality_names_the_case_and_the_modality(tmp_path):
    write_data(tmp_path, "brats2021", num_volumes=1)
    case = tmp_path / "training" / "BraTS2021_00000"
    t2 = nib.load(case / "BraTS2021_00000_t2.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj)[:, :, :-2], t2.affine), case / "BraTS2021_00000_t2.nii.gz")
    paths = [str(case / f"BraTS2021_00000_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")]
    loader = LoadModalitiesd("image", modalities=("flair", "t1", "t1ce", "t2"))
    with pytest.raises(ValueError, match=r"case 'BraTS2021_00000': modality 't2' .* has shape \(48, 48, 30\), "
                                         r"modality 'flair' has \(48, 48, 32\)"):
        loader({"image": paths})


def test_a_three_channel_4d_file_stops_training_with_the_case(tmp_path):
    datalist = write_data(tmp_path / "data", "msd", num_volumes=2)
    path = tmp_path / "data" / "imagesTr" / "BRATS_001.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., :3], image.affine), path)
    workflow = make_workflow(BUNDLE, ["train.json"], **overrides(tmp_path, datalist, "msd", max_epochs=1))
    chain = run_error(workflow)
    assert "case 'BRATS_001'" in chain and "expected a 4D image with 4 modalities" in chain


def test_a_case_of_the_other_layout_is_named():
    loader = LoadModalitiesd("image", modalities=("flair", "t1", "t1ce", "t2"), layout="msd")
    with pytest.raises(ValueError, match="case 'BraTS2021_00007': data_layout 'msd' expects one 4D file per case, got "
                                         "4 files; for one file per modality .* use data_layout 'brats2021'"):
        loader({"image": [f"/d/BraTS2021_00007/BraTS2021_00007_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]})
    with pytest.raises(ValueError, match="data_layout must be one of"):
        brats_label_mapping("brats2020")


def test_label_values_of_the_other_layout_are_named(tmp_path):
    """BraTS 2021 labels (4 = enhancing) read with the MSD layout stop at the unknown value, naming the file."""
    datalist = write_data(tmp_path / "data", "brats2021", num_volumes=2)
    entries = json.load(open(datalist))["training"]
    root = os.path.dirname(datalist)
    for entry in entries:  # the four modalities as one 4D file, the MSD way, with BraTS 2021 label values
        stacked = np.stack([np.asarray(nib.load(os.path.join(root, p)).dataobj) for p in entry["image"]], -1)
        entry["image"] = entry["image"][0].replace("_flair", "_4d")
        nib.save(nib.Nifti1Image(stacked, np.diag([1.0, 1.0, 1.0, 1.0])), os.path.join(root, entry["image"]))
    msd = os.path.join(root, "msd.json")
    with open(msd, "w") as f:
        json.dump({"training": entries}, f)
    workflow = make_workflow(BUNDLE, ["train.json"], **overrides(tmp_path, msd, "msd", max_epochs=1))
    chain = run_error(workflow)
    assert "BraTS2021_0000" in chain and "values the label mapping does not list: 4" in chain


# ---------------------------------------------------------------- regions and helpers


def test_regions_round_trip_and_painting_order():
    label = torch.tensor([0, 1, 2, 3, 2, 1]).reshape(1, 6, 1, 1).float()
    regions = LabelToRegionsd("label", REGIONS)({"label": label})["label"]
    assert regions[:, :, 0, 0].tolist() == [[0, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0]]
    back = RegionsToLabeld("label", REGIONS)({"label": regions})["label"]
    assert back.flatten().tolist() == label.flatten().tolist()
    assert painting_order(REGIONS) == [(1, 2), (0, 1), (2, 3)]  # WT paints edema, TC the core, ET enhancing
    inconsistent = torch.zeros(3, 1, 1, 1)
    inconsistent[2] = 1  # ET without TC and WT still reads as enhancing
    assert RegionsToLabeld("pred", REGIONS)({"pred": inconsistent})["pred"].item() == 3
    with pytest.raises(ValueError, match=r"holds classes \[1, 2\] that no region inside it holds"):
        painting_order([[1, 2], [3]])


def test_label_mappings_and_case_names():
    assert brats_label_mapping("msd") == {"0": 0, "1": 2, "2": 1, "3": 3}
    assert brats_label_mapping("brats2021") == {"0": 0, "1": 1, "2": 2, "4": 3}
    assert case_name("/d/imagesTr/BRATS_001.nii.gz") == "BRATS_001"
    assert case_name([f"/d/BraTS2021_00001/BraTS2021_00001_{m}.nii.gz" for m in ("flair", "t1")]) == "BraTS2021_00001"
    assert case_name(["/d/case7/a.nii.gz", "/d/case7/b.nii.gz"]) == "case7"


def test_synthetic_brain_mri_needs_every_modality_to_tell_the_tumour_parts():
    image, label = make_synthetic_brain_mri((48, 48, 32), seed=2)
    assert image.shape == (48, 48, 32, 4) and set(np.unique(label)) == {0, 1, 2, 3}
    means = np.array([[image[..., m][label == c].mean() for m in range(4)] for c in (1, 2, 3)])
    # no single modality separates all three parts by at least 15 % of its range: the contrasts differ per part
    spread = np.array([[abs(means[a, m] - means[b, m]) for a, b in ((0, 1), (0, 2), (1, 2))] for m in range(4)])
    assert not any((row > 0.15 * image[..., m].max()).all() for m, row in enumerate(spread))
    assert (spread.max(axis=0) > 0.15 * image.max()).all()  # but together they do


def test_synthetic_dataset_refuses_ct_arguments(tmp_path):
    with pytest.raises(ValueError, match="brain_mri=True writes labelled tumours with 4 classes"):
        write_synthetic_dataset(tmp_path, num_volumes=1, num_folds=1, brain_mri=True, num_classes=14)
    shutil.rmtree(tmp_path)


def test_tools_write_brats2021_data_and_its_datalist(tmp_path):
    """make_synthetic_data.py writes the BraTS 2021 layout; make_datalist.py --layout brats2021 lists it the same way
    (four modality files in channel order and the label, folds round-robin), and stops on a missing modality."""
    out = tmp_path / "brats"
    result = run_tool("tools/make_synthetic_data.py", "--out", str(out), "--task", BUNDLE, "--layout", "brats2021",
                       "--num-volumes", "2", "--shape", "32", "32", "16", "--num-folds", "2", "--num-test", "0")
    assert result.returncode == 0, result.stderr
    result = run_tool("tools/make_datalist.py", "--layout", "brats2021", "--images", str(out / "training"),
                       "--out", str(tmp_path / "list.json"), "--num-folds", "2")
    assert result.returncode == 0, result.stderr
    assert "2 training entries (with labels, 2 folds)" in result.stdout
    written = json.load(open(tmp_path / "list.json"))["training"]
    assert [e["image"][2] for e in written] == [f"brats/training/BraTS2021_0000{i}/BraTS2021_0000{i}_t1ce.nii.gz"
                                                for i in (0, 1)]
    assert [e["fold"] for e in written] == [0, 1] and written[1]["label"].endswith("BraTS2021_00001_seg.nii.gz")
    (out / "training" / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").unlink()
    result = run_tool("tools/make_datalist.py", "--layout", "brats2021", "--images", str(out / "training"),
                       "--out", str(tmp_path / "bad.json"))
    assert result.returncode == 1 and "error: case 'BraTS2021_00001' has no modality 'flair'" in result.stderr
