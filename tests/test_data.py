"""Tests of custom_components.synthetic (synthetic CT) and custom_components.data (datalists), and the tools that
wrap them."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tool_utils import run_tool

from custom_components.data import inference_datalist, load_datalist, write_datalist_from_folder
from custom_components.synthetic import (BTCV_ORGANS, ensure_synthetic_dataset, make_synthetic_ct,
                                        write_synthetic_dataset)
from custom_components.synthetic.ct import MARKER_FILE

TINY = (32, 32, 16)


# ---------------------------------------------------------------- make_synthetic_ct


def test_make_synthetic_ct_is_deterministic_per_seed():
    image_a, label_a = make_synthetic_ct(TINY, seed=3)
    image_b, label_b = make_synthetic_ct(TINY, seed=3)
    image_c, label_c = make_synthetic_ct(TINY, seed=4)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
    assert np.abs(image_a.astype(int) - image_c.astype(int)).mean() > 5  # not just the noise: layout moves too
    assert (label_a != label_c).sum() > 50


def test_make_synthetic_ct_tissues_and_organs():
    image, label = make_synthetic_ct((96, 96, 64), num_classes=14, seed=0)
    assert image.shape == label.shape == (96, 96, 64)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label)) == set(range(14))
    counts = np.bincount(label.ravel(), minlength=14)
    assert counts[1:].min() >= 300, counts  # every organ visible and learnable
    assert -1024 <= image.min() and image.max() <= 800
    assert abs(np.median(image[:4, :4, :]) - (-1000)) < 30  # air in the corners
    xs, ys, _ = np.nonzero(image[:, :, :20] > 500)  # below the ribs, only the spine is bone
    assert len(xs) > 20 * 40 and abs(xs.mean() - 47.5) < 4 and ys.mean() < 30  # midline, posterior (low y)
    lungs = image[:, :, 54]
    assert (lungs < -700).sum() > 500  # two lungs near the top
    organ_hu = [image[label == k].mean() for k in range(1, 14)]
    assert 10 < min(organ_hu) and max(organ_hu) < 160
    assert organ_hu == sorted(organ_hu)  # organ k keeps its own intensity: 20..150 HU in class order


@pytest.mark.parametrize("num_classes", [2, 8, 16])
def test_make_synthetic_ct_num_classes(num_classes):
    _, label = make_synthetic_ct(TINY, num_classes=num_classes, seed=1)
    assert set(np.unique(label)) == set(range(num_classes))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (32, 32)}, "shape must be three ints"),
        ({"shape": (32, 32, 8)}, "each at least 16"),
        ({"num_classes": 1}, "num_classes must be an int in 2..256"),
        ({"seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_make_synthetic_ct_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_ct(**{"shape": TINY, **kwargs})


# ---------------------------------------------------------------- write / ensure synthetic dataset


def test_write_synthetic_dataset_layout_and_nifti(tmp_path):
    datalist = write_synthetic_dataset(
        tmp_path, num_volumes=4, shape=TINY, spacing=(1.5, 1.5, 2.0), num_folds=3, num_test=2, seed=10
    )
    assert datalist == str(tmp_path / "dataset.json")
    content = json.loads(Path(datalist).read_text())
    assert content["numTraining"] == 4
    assert content["labels"]["0"] == "background"
    assert [content["labels"][str(k)] for k in range(1, 14)] == list(BTCV_ORGANS)
    assert content["training"][1] == {
        "image": "imagesTr/case_0001.nii.gz", "label": "labelsTr/case_0001.nii.gz", "fold": 1
    }  # fmt: skip
    assert [e["fold"] for e in content["training"]] == [0, 1, 2, 0]
    assert content["testing"] == [{"image": "imagesTs/test_0000.nii.gz"}, {"image": "imagesTs/test_0001.nii.gz"}]

    image = nib.load(tmp_path / "imagesTr" / "case_0002.nii.gz")
    label = nib.load(tmp_path / "labelsTr" / "case_0002.nii.gz")
    np.testing.assert_allclose(np.diag(image.affine)[:3], [1.5, 1.5, 2.0])
    np.testing.assert_allclose(image.header.get_zooms(), [1.5, 1.5, 2.0])
    np.testing.assert_allclose(image.affine[:3, 3], [-23.25, -23.25, -15.0])  # centred, non-zero origin
    np.testing.assert_allclose(label.affine, image.affine)
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    expected_image, expected_label = make_synthetic_ct(TINY, seed=12)  # case i uses seed + i
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected_image)
    np.testing.assert_array_equal(np.asarray(label.dataobj), expected_label)
    assert (tmp_path / "imagesTs" / "test_0001.nii.gz").is_file()


def test_write_synthetic_dataset_unlabelled_generic_names(tmp_path):
    datalist = write_synthetic_dataset(tmp_path, num_volumes=2, shape=TINY, num_classes=3, labelled=False,
                                       num_folds=2, num_test=0)  # fmt: skip
    content = json.loads(Path(datalist).read_text())
    assert content["labels"] == {"0": "background", "1": "organ_1", "2": "organ_2"}
    assert all("label" not in entry for entry in content["training"])
    assert not (tmp_path / "labelsTr").exists()
    assert content["testing"] == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_volumes": 0}, "num_volumes must be a positive int"),
        ({"num_volumes": 2, "num_folds": 3}, r"num_folds must be an int in 1..num_volumes=2"),
        ({"num_test": -1}, "num_test must be a non-negative int"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be three positive numbers"),
    ],
)
def test_write_synthetic_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(tmp_path, **{"shape": TINY, **kwargs})


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_ensure_synthetic_dataset_is_idempotent_and_regenerates(tmp_path, caplog):
    kwargs = {"num_volumes": 2, "shape": TINY, "num_folds": 2, "num_test": 1}
    with caplog.at_level(logging.INFO, logger="custom_components"):
        first = ensure_synthetic_dataset(tmp_path, **kwargs)
    assert "wrote 2 labelled training volumes" in caplog.text
    before = _mtimes(tmp_path)
    assert len(before) == 2 + 2 + 1 + 2 + 1  # images, labels, test image, dataset.json, marker, writer lock

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="custom_components"):
        assert ensure_synthetic_dataset(tmp_path, **kwargs) == first
    assert _mtimes(tmp_path) == before  # nothing rewritten
    assert "reusing the synthetic dataset" in caplog.text

    ensure_synthetic_dataset(tmp_path, **{**kwargs, "seed": 5})  # other arguments: regenerated
    assert json.loads((tmp_path / MARKER_FILE).read_text())["seed"] == 5
    expected, _ = make_synthetic_ct(TINY, seed=5)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "imagesTr" / "case_0000.nii.gz").dataobj), expected)

    (tmp_path / "labelsTr" / "case_0001.nii.gz").unlink()  # a listed file is gone: regenerated
    ensure_synthetic_dataset(tmp_path, **{**kwargs, "seed": 5})
    assert (tmp_path / "labelsTr" / "case_0001.nii.gz").is_file()


def test_ensure_synthetic_dataset_waits_for_a_writer_in_progress_and_reuses_its_dataset(tmp_path, monkeypatch, caplog):
    """Under torchrun every rank calls ensure_synthetic_dataset on the same folder: a second caller must wait for the
    first writer and reuse its files, not read (or rewrite) them while they are half-written."""
    from custom_components.synthetic import ct

    save, started, finished = ct.save_nifti, threading.Event(), threading.Event()

    def slow_first_writer(*args):
        written = save(*args)
        if threading.current_thread() is writer and not started.is_set():
            started.set()
            time.sleep(1.5)  # the first writer is mid-dataset
        return written

    def write():
        ensure_synthetic_dataset(tmp_path, **kwargs)
        finished.set()

    kwargs = {"num_volumes": 2, "shape": TINY, "num_folds": 2, "num_test": 0}
    monkeypatch.setattr(ct, "save_nifti", slow_first_writer)
    writer = threading.Thread(target=write)
    writer.start()
    assert started.wait(30)
    with caplog.at_level(logging.INFO, logger="custom_components"):
        datalist = ensure_synthetic_dataset(tmp_path, **kwargs)
    assert finished.is_set(), "the second caller returned while the first was still writing the dataset"
    writer.join()
    assert "reusing the synthetic dataset" in caplog.text
    for entry in load_datalist(datalist, "training", keys=("image", "label")):
        assert nib.load(entry["image"]).shape == TINY


def test_ensure_synthetic_dataset_rejects_unknown_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown arguments \['num_vols'\]"):
        ensure_synthetic_dataset(tmp_path, num_vols=2)


# ---------------------------------------------------------------- load_datalist


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


@pytest.fixture
def folded(tmp_path) -> Path:
    """A datalist of 6 cases in 3 folds (0, 1, 2, 0, 1, 2), plus 2 test images, with empty files on disk."""
    training = []
    for i in range(6):
        _touch(tmp_path / "imagesTr" / f"c{i}.nii.gz")
        _touch(tmp_path / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz", "fold": i % 3})
    for i in range(2):
        _touch(tmp_path / "imagesTs" / f"t{i}.nii.gz")
    testing = [{"image": "imagesTs/t0.nii.gz"}, "imagesTs/t1.nii.gz"]  # the MSD style bare string too
    return _write_json(tmp_path / "dataset.json", {"training": training, "testing": testing})


def _names(entries) -> list[str]:
    return [Path(e["image"]).name for e in entries]


def test_load_datalist_section_as_is_with_absolute_paths(folded):
    entries = load_datalist(folded, keys=("image", "label"))
    assert _names(entries) == [f"c{i}.nii.gz" for i in range(6)]
    assert entries[2] == {
        "image": str(folded.parent / "imagesTr" / "c2.nii.gz"), "label": str(folded.parent / "labelsTr" / "c2.nii.gz"),
        "fold": 2,
    }  # fmt: skip
    test_dir = folded.parent / "imagesTs"
    expected = [{"image": str(test_dir / "t0.nii.gz")}, {"image": str(test_dir / "t1.nii.gz")}]
    assert load_datalist(folded, "testing") == expected


def test_load_datalist_fold_split_and_num_labelled(folded):
    assert _names(load_datalist(folded, "training", fold=1)) == ["c0.nii.gz", "c2.nii.gz", "c3.nii.gz", "c5.nii.gz"]
    assert _names(load_datalist(folded, "validation", fold=1)) == ["c1.nii.gz", "c4.nii.gz"]
    assert _names(load_datalist(folded, fold=1, num_labelled=3)) == ["c0.nii.gz", "c2.nii.gz", "c3.nii.gz"]
    assert _names(load_datalist(folded, num_labelled=2)) == ["c0.nii.gz", "c1.nii.gz"]
    assert len(load_datalist(folded, "testing", fold=1)) == 2  # fold does not touch other sections


def test_load_datalist_base_dir(folded, tmp_path):
    moved = _write_json(tmp_path / "elsewhere.json", folded.read_text())
    (tmp_path / "sub").mkdir()
    relocated = tmp_path / "sub" / "dataset.json"
    relocated.write_text(moved.read_text())
    entries = load_datalist(relocated, base_dir=tmp_path)
    assert entries[0]["image"] == str(tmp_path / "imagesTr" / "c0.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"base_dir '.*nowhere' for datalist '.*dataset\.json'"):
        load_datalist(relocated, base_dir=tmp_path / "nowhere")


def test_load_datalist_without_fold_fields_reads_sections_as_is(tmp_path):
    for name in ("a", "b", "c"):
        _touch(tmp_path / f"{name}.nii.gz")
    datalist = _write_json(
        tmp_path / "d.json", {"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}], "validation": ["c.nii.gz"]}
    )
    assert _names(load_datalist(datalist, "training", fold=0)) == ["a.nii.gz", "b.nii.gz"]
    assert _names(load_datalist(datalist, "validation", fold=0)) == ["c.nii.gz"]


def test_load_datalist_folds_override_validation_section_with_warning(folded, caplog):
    content = json.loads(folded.read_text())
    content["validation"] = [{"image": "imagesTs/t0.nii.gz"}]
    _write_json(folded, content)
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        assert _names(load_datalist(folded, "validation", fold=2)) == ["c2.nii.gz", "c5.nii.gz"]
    assert "explicit 'validation' section is ignored" in caplog.text


def test_load_datalist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"datalist file '.*missing\.json' does not exist"):
        load_datalist(tmp_path / "missing.json")


def test_load_datalist_invalid_json(tmp_path):
    bad = _write_json(tmp_path / "bad.json", '{"training": [\n  {"image": "a.nii.gz"}\n  {"image": "b"}]}')
    with pytest.raises(ValueError, match=r"datalist '.*bad\.json' is not valid JSON: .* at line 3 column 3"):
        load_datalist(bad)


def test_load_datalist_missing_and_empty_section(folded, tmp_path):
    with pytest.raises(ValueError, match=r"'.*dataset\.json' has no section 'validation'; .*\['testing', 'training'\]"):
        load_datalist(folded, "validation")
    empty = _write_json(tmp_path / "empty.json", {"training": []})
    with pytest.raises(ValueError, match=r"'.*empty\.json': section 'training' is empty"):
        load_datalist(empty)


@pytest.mark.parametrize(
    "entry, match",
    [
        (42, r"entry 1 of section 'training' must be a dict .*got int"),
        ({"label": "b.nii.gz"}, r"entry 1 of section 'training' has no key 'image'"),
        ({"image": 3}, r"entry 1 of section 'training': 'image' must be a path"),
    ],
)
def test_load_datalist_bad_entries(tmp_path, entry, match):
    datalist = _write_json(tmp_path / "d.json", {"training": [{"image": "a.nii.gz"}, entry]})
    with pytest.raises(ValueError, match=r"datalist '.*d\.json': " + match):
        load_datalist(datalist, check_files=False)


def test_load_datalist_required_label_key(folded, tmp_path):
    datalist = _write_json(tmp_path / "d.json", {"training": [{"image": "imagesTr/c0.nii.gz"}]})
    with pytest.raises(ValueError, match=r"'.*d\.json': entry 0 of section 'training' has no key 'label'"):
        load_datalist(datalist, keys=("image", "label"))


def test_load_datalist_missing_path(folded):
    (folded.parent / "labelsTr" / "c3.nii.gz").unlink()
    match = r"'.*dataset\.json': entry 3 of section 'training': 'label' file '.*labelsTr/c3\.nii\.gz' does not exist"
    with pytest.raises(FileNotFoundError, match=match):
        load_datalist(folded)
    assert len(load_datalist(folded, check_files=False)) == 6
    assert len(load_datalist(folded, "validation", fold=1)) == 2  # c3 is in fold 0: only returned entries are checked


def test_load_datalist_duplicates(tmp_path):
    datalist = _write_json(
        tmp_path / "d.json", {"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}, {"image": "./a.nii.gz"}]}
    )
    with pytest.raises(ValueError, match=r"'.*d\.json': duplicate entries .*entries 0 and 2 have the same 'image'"):
        load_datalist(datalist, check_files=False)


def test_load_datalist_fold_errors(folded, tmp_path):
    with pytest.raises(ValueError, match=r"'.*dataset\.json': fold 7 has no cases; folds present: \[0, 1, 2\]"):
        load_datalist(folded, "validation", fold=7)
    with pytest.raises(ValueError, match="fold must be an int or None"):
        load_datalist(folded, fold="0")
    mixed = _write_json(tmp_path / "m.json", {"training": [{"image": "a", "fold": 0}, {"image": "b"}]})
    with pytest.raises(ValueError, match=r"entry 1 of section 'training' has no 'fold'"):
        load_datalist(mixed, fold=0, check_files=False)
    single = _write_json(tmp_path / "s.json", {"training": [{"image": "a", "fold": 0}, {"image": "b", "fold": 0}]})
    with pytest.raises(ValueError, match="holding out fold 0 leaves no training cases"):
        load_datalist(single, fold=0, check_files=False)


def test_load_datalist_num_labelled_errors(folded):
    with pytest.raises(ValueError, match=r"num_labelled=5 but the training split of fold 0 has only 4 entries"):
        load_datalist(folded, fold=0, num_labelled=5)
    with pytest.raises(ValueError, match=r"num_labelled=7 but the training section has only 6 entries"):
        load_datalist(folded, num_labelled=7)
    with pytest.raises(ValueError, match="num_labelled must be a positive int"):
        load_datalist(folded, num_labelled=0)
    with pytest.raises(ValueError, match="num_labelled only applies to section 'training'"):
        load_datalist(folded, "validation", fold=0, num_labelled=1)


# ---------------------------------------------------------------- write_datalist_from_folder


def _image_folders(root: Path, images: list[str], labels: list[str]) -> tuple[Path, Path]:
    for name in images:
        _touch(root / "img" / name)
    for name in labels:
        _touch(root / "lab" / name)
    return root / "img", root / "lab"


def test_write_datalist_from_folder_pairs_and_folds(tmp_path):
    names = [f"case{i}.nii.gz" for i in (3, 1, 0, 2, 4)]
    images, labels = _image_folders(tmp_path, names + ["notes.txt"], names)
    _touch(tmp_path / "test" / "t0.nii.gz")
    out = write_datalist_from_folder(
        images, labels, out_file=tmp_path / "lists" / "d.json", num_folds=2, test_images_dir=tmp_path / "test"
    )
    content = json.loads(Path(out).read_text())
    assert content["numTraining"] == 5
    assert content["training"][3] == {"image": "../img/case3.nii.gz", "label": "../lab/case3.nii.gz", "fold": 1}
    assert [e["fold"] for e in content["training"]] == [0, 1, 0, 1, 0]
    assert content["testing"] == [{"image": "../test/t0.nii.gz"}]
    entries = load_datalist(out, "validation", fold=1, keys=("image", "label"))
    assert _names(entries) == ["case1.nii.gz", "case3.nii.gz"]


def test_write_datalist_from_folder_pairs_by_suffix_in_one_folder(tmp_path):
    """MM-WHS keeps ct_train_1001_image.nii.gz and ct_train_1001_label.nii.gz side by side."""
    for case in (1002, 1001):
        for kind in ("image", "label"):
            _touch(tmp_path / "ct_train" / f"ct_train_{case}_{kind}.nii.gz")
    folder = tmp_path / "ct_train"
    out = write_datalist_from_folder(folder, folder, out_file=tmp_path / "d.json", num_folds=1,
                                     pattern="*_image.nii.gz", label_pattern="*_label.nii.gz")
    assert json.loads(Path(out).read_text())["training"] == [
        {"image": f"ct_train/ct_train_{c}_image.nii.gz", "label": f"ct_train/ct_train_{c}_label.nii.gz", "fold": 0}
        for c in (1001, 1002)
    ]
    (folder / "ct_train_1002_label.nii.gz").unlink()
    with pytest.raises(ValueError, match="images without a label .*: ct_train_1002"):
        write_datalist_from_folder(folder, folder, out_file=tmp_path / "d.json", num_folds=1,
                                   pattern="*_image.nii.gz", label_pattern="*_label.nii.gz")
    with pytest.raises(ValueError, match=r"must be '\*<suffix>'"):
        write_datalist_from_folder(folder, folder, out_file=tmp_path / "d.json", num_folds=1,
                                   pattern="ct_*_image.nii.gz", label_pattern="*_label.nii.gz")


def test_write_datalist_from_folder_leaves_out_hidden_files(tmp_path):
    """The MSD archives (Task01 BrainTumour, Task09 Spleen) hold a macOS '._<name>' copy beside every file."""
    images, labels = _image_folders(tmp_path, ["a.nii.gz", "._a.nii.gz"], ["a.nii.gz", "._a.nii.gz"])
    out = write_datalist_from_folder(images, labels, out_file=tmp_path / "d.json", num_folds=1)
    assert json.loads(Path(out).read_text())["training"] == [
        {"image": "img/a.nii.gz", "label": "lab/a.nii.gz", "fold": 0}]
    assert inference_datalist(dataset_dir=images) == [{"image": str(images / "a.nii.gz")}]


def test_write_datalist_from_folder_images_only(tmp_path):
    images, _ = _image_folders(tmp_path, ["a.nii.gz", "b.nii.gz"], [])
    out = write_datalist_from_folder(images, out_file=tmp_path / "d.json", num_folds=1)
    content = json.loads(Path(out).read_text())
    assert content["training"] == [{"image": "img/a.nii.gz", "fold": 0}, {"image": "img/b.nii.gz", "fold": 0}]
    assert "testing" not in content


def test_write_datalist_from_folder_errors(tmp_path):
    images, labels = _image_folders(tmp_path, ["a.nii.gz", "b.nii.gz"], ["b.nii.gz", "c.nii.gz"])
    match = r"images without a label in '.*lab': a\.nii\.gz; labels without an image in '.*img': c\.nii\.gz"
    with pytest.raises(ValueError, match=match):
        write_datalist_from_folder(images, labels, out_file=tmp_path / "d.json", num_folds=2)
    with pytest.raises(FileNotFoundError, match=r"images folder '.*nope' does not exist"):
        write_datalist_from_folder(tmp_path / "nope", out_file=tmp_path / "d.json")
    with pytest.raises(ValueError, match=r"has no files matching '\*\.nrrd'"):
        write_datalist_from_folder(images, out_file=tmp_path / "d.json", pattern="*.nrrd")
    with pytest.raises(ValueError, match=r"num_folds must be an int in 1..2"):
        write_datalist_from_folder(images, out_file=tmp_path / "d.json", num_folds=5)
    assert not (tmp_path / "d.json").exists()


# ---------------------------------------------------------------- tools


@pytest.mark.parametrize(
    "tool, phrase", [("make_synthetic_data.py", "synthetic CT-like"), ("make_datalist.py", "paired by file name")]
)
@pytest.mark.slow
def test_tools_help(tool, phrase):
    result = run_tool(f"tools/{tool}", "--help")
    assert result.returncode == 0, result.stderr
    assert phrase in result.stdout and "--num-folds" in result.stdout


@pytest.mark.slow
def test_tools_tiny_run(tmp_path):
    out = tmp_path / "synthetic"
    result = run_tool(
        "tools/make_synthetic_data.py", "--out", str(out), "--num-volumes", "2", "--shape", "32", "32", "16",
        "--num-folds", "2", "--num-test", "1", "--seed", "7",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 2 labelled (14 classes) training volumes" in result.stdout
    assert len(load_datalist(out / "dataset.json", keys=("image", "label"))) == 2
    np.testing.assert_array_equal(
        np.asarray(nib.load(out / "imagesTr" / "case_0001.nii.gz").dataobj), make_synthetic_ct((32, 32, 16), seed=8)[0]
    )

    result = run_tool(
        "tools/make_datalist.py", "--images", str(out / "imagesTr"), "--labels", str(out / "labelsTr"),
        "--test-images", str(out / "imagesTs"), "--out", str(tmp_path / "list.json"), "--num-folds", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 training entries (with labels, 2 folds), 1 testing entries" in result.stdout
    assert _names(load_datalist(tmp_path / "list.json", "validation", fold=1)) == ["case_0001.nii.gz"]

    result = run_tool("tools/make_datalist.py", "--images", str(out / "imagesTr"), "--labels", str(out / "imagesTs"),
                       "--out", str(tmp_path / "bad.json"))  # fmt: skip
    assert result.returncode == 1
    assert "error: images and labels are paired by name" in result.stderr


# ---------------------------------------------------------------- task layouts


def test_task_layouts_raw_label_values_and_lesions(tmp_path):
    """MM-WHS-like labels are stored with raw values (uint16), COVID-like volumes hold small lung lesions as class 1
    at an anisotropic spacing, and each layout is what SYNTHETIC_TASKS says."""
    from custom_components.synthetic import SYNTHETIC_TASKS

    mmwhs = SYNTHETIC_TASKS["glmae_mmwhs_segmentation"]
    datalist = write_synthetic_dataset(tmp_path / "mmwhs", num_volumes=1, shape=TINY, num_folds=1, num_test=0, **mmwhs)
    entry = load_datalist(datalist, keys=("image", "label"))[0]
    label = nib.load(entry["label"])
    assert label.get_data_dtype() == np.uint16
    indices = make_synthetic_ct(TINY, num_classes=8, seed=0)[1]
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(mmwhs["label_values"])[indices])
    assert json.loads(Path(datalist).read_text())["labels"]["205"] == "organ_1"

    covid = SYNTHETIC_TASKS["glmae_covid19_20_segmentation"]
    image, lesion = make_synthetic_ct((64, 64, 24), num_classes=2, seed=1, lesions=True)
    assert set(np.unique(lesion)) == {0, 1} and 0 < (lesion == 1).mean() < 0.01  # small structures
    assert -750 < image[lesion == 1].mean() < -200  # ground-glass HU, inside the lungs
    datalist = write_synthetic_dataset(tmp_path / "covid", num_volumes=1, shape=(32, 32, 16), num_folds=1,
                                       num_test=0, **covid)
    zooms = nib.load(load_datalist(datalist)[0]["image"]).header.get_zooms()
    assert np.allclose(zooms, covid["spacing"])


@pytest.mark.parametrize("kwargs, match", [
    ({"lesions": True, "num_classes": 3}, "num_classes must be 2"),
    ({"label_values": (0, 205), "num_classes": 3}, "label_values must be 3 distinct ints"),
    ({"label_values": (0, 0, 1), "num_classes": 3}, "label_values must be 3 distinct ints"),
])  # fmt: skip
def test_task_layout_arguments_are_checked(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(tmp_path, num_volumes=1, shape=TINY, num_folds=1, num_test=0, **kwargs)


@pytest.mark.slow
def test_make_synthetic_data_task_option(tmp_path):
    result = run_tool("tools/make_synthetic_data.py", "--out", str(tmp_path), "--num-volumes", "1", "--shape", "32",
                       "32", "16", "--num-folds", "1", "--num-test", "0", "--task", "glmae_mmwhs_segmentation")
    assert result.returncode == 0, result.stderr
    assert "labelled (8 classes)" in result.stdout
    label = load_datalist(tmp_path / "dataset.json", keys=("image", "label"))[0]["label"]
    assert set(np.unique(np.asarray(nib.load(label).dataobj))) <= {0, 205, 420, 500, 550, 600, 820, 850}


def test_synthetic_dataset_with_shuffled_layout_writes_the_probe_volumes(tmp_path):
    # the pre-training study fine-tunes on the volumes its frozen-encoder probes read: the same generator call
    datalist = write_synthetic_dataset(tmp_path, num_volumes=2, shape=(32, 32, 32), num_classes=7, num_folds=1,
                                       num_test=0, seed=1000, varied=True, organ_texture=True, shuffle_layout=True)
    cases = json.loads(Path(datalist).read_text())["training"]
    for index, case in enumerate(cases):
        _, expected = make_synthetic_ct((32, 32, 32), 7, 1000 + index, varied=True, shuffle_layout=True,
                                        organ_texture=True)
        _, fixed = make_synthetic_ct((32, 32, 32), 7, 1000 + index, varied=True, organ_texture=True)
        written = np.asarray(nib.load(tmp_path / case["label"]).dataobj)
        assert np.array_equal(written, expected) and not np.array_equal(written, fixed)
    with pytest.raises(ValueError, match="shuffle_layout"):
        write_synthetic_dataset(tmp_path / "mri", num_classes=4, brain_mri=True, shuffle_layout=True)
