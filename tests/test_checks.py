"""Tests of the input checks (CheckImaged, CheckLabeld) and of the loader whose errors name the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from custom_components.data import load_datalist
from custom_components.synthetic import write_synthetic_dataset
from custom_components.transforms.checks import CheckImaged, CheckLabeld
from custom_components.transforms.io import LoadImageWithContextd

SHAPE = (32, 32, 16)


def _meta_tensor(array, filename: str, affine=None) -> MetaTensor:
    meta = {"filename_or_obj": filename}
    return MetaTensor(torch.as_tensor(array), affine=torch.eye(4) if affine is None else affine, meta=meta)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, str]:
    """One synthetic image/label pair on disk."""
    root = tmp_path_factory.mktemp("synthetic")
    datalist = write_synthetic_dataset(root, num_volumes=1, shape=SHAPE, num_folds=1, num_test=0)
    return load_datalist(datalist, keys=("image", "label"))[0]


def _load(keys=("image", "label")):
    return Compose([LoadImageWithContextd(keys), EnsureChannelFirstd(keys)])


# ---------------------------------------------------------------- passing case


def test_checks_pass_on_a_real_pair(case):
    checks = Compose([CheckImaged("image"), CheckLabeld("label", image_key="image", num_classes=14)])
    data = checks(_load()(case))
    assert tuple(data["image"].shape) == (1, *SHAPE)
    assert data["image"].meta["filename_or_obj"] == case["image"]
    assert set(torch.unique(data["label"]).tolist()) == set(range(14))


# ---------------------------------------------------------------- CheckImaged


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 32, 32), r"has shape \(1, 32, 32\), i\.e\. 2 spatial dims .*expected 3 spatial dims"),
        ((1, 8, 8, 8, 3), r"has shape \(1, 8, 8, 8, 3\), i\.e\. 4 spatial dims"),
        ((3, 8, 8, 8), r"has 3 channels \(shape \(3, 8, 8, 8\)\); expected 1"),
    ],
)
def test_check_image_shape_errors(shape, match):
    data = {"image": _meta_tensor(np.zeros(shape, np.float32), "/data/ct_07.nii.gz")}
    with pytest.raises(ValueError, match=r"image '/data/ct_07\.nii\.gz' \(key 'image'\) " + match):
        CheckImaged("image")(data)


def test_check_image_channels_for_multimodal():
    data = {"image": _meta_tensor(np.zeros((4, 8, 8, 8), np.float32), "brats.nii.gz")}
    assert CheckImaged("image", num_channels=4)(data)["image"].shape[0] == 4


def test_check_image_nonfinite():
    array = np.zeros((1, 8, 8, 8), np.float32)
    array[0, 1, 2, 3], array[0, 4, 4, 4], array[0, 7, 7, 7] = np.nan, np.inf, -np.inf
    data = {"image": _meta_tensor(array, "/data/bad.nii.gz")}
    match = r"image '/data/bad\.nii\.gz' \(key 'image'\) has 3 NaN/Inf voxel\(s\) out of 512\.$"
    with pytest.raises(ValueError, match=match):
        CheckImaged("image")(data)
    assert CheckImaged("image", allow_nonfinite=True)(data)["image"] is data["image"]


def test_check_image_file_name_fallbacks():
    with pytest.raises(ValueError, match="image '<unknown file>'"):
        CheckImaged("image")({"image": np.zeros((2, 4, 4, 4))})
    data = {"image": np.zeros((2, 4, 4, 4)), "image_meta_dict": {"filename_or_obj": "/x/from_meta.nii"}}
    with pytest.raises(ValueError, match=r"image '/x/from_meta\.nii' .* has 2 channels"):
        CheckImaged("image")(data)


@pytest.mark.parametrize("kwargs", [{"num_channels": 0}, {"spatial_dims": 0}, {"num_channels": True}])
def test_check_image_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="must be a positive int"):
        CheckImaged("image", **kwargs)


# ---------------------------------------------------------------- CheckLabeld


def _pair(label: np.ndarray, label_affine=None, image_shape=(1, 8, 8, 8)) -> dict:
    return {
        "image": _meta_tensor(np.zeros(image_shape, np.float32), "/data/img_01.nii.gz"),
        "label": _meta_tensor(label, "/data/lab_01.nii.gz", affine=label_affine),
    }


def test_check_label_values_outside_range():
    label = np.zeros((1, 8, 8, 8), np.float32)
    label[0, 0, 0, :3], label[0, 1, 1, :2] = 14, 255
    match = r"label '/data/lab_01\.nii\.gz' \(key 'label'\) has 5 voxel\(s\) with values outside 0\.\.13: 14, 255\.$"
    with pytest.raises(ValueError, match=match):
        CheckLabeld(num_classes=14)(_pair(label))


def test_check_label_lists_at_most_ten_bad_values():
    label = np.arange(8 * 8 * 8, dtype=np.float32).reshape(1, 8, 8, 8)
    with pytest.raises(ValueError, match=r": 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 \(and 500 more\)\.$"):
        CheckLabeld(num_classes=2)(_pair(label))


def test_check_label_non_integer():
    label = np.zeros((1, 8, 8, 8), np.float32)
    label[0, 2, 2, 2], label[0, 3, 3, 3] = 0.5, 1.25
    match = r"label '/data/lab_01\.nii\.gz' \(key 'label'\) has 2 non-integer voxel\(s\), e\.g\. values 0\.5, 1\.25;"
    with pytest.raises(ValueError, match=match):
        CheckLabeld(num_classes=14)(_pair(label))


def test_check_label_shape_mismatch():
    data = _pair(np.zeros((1, 8, 8, 6), np.uint8))
    match = (r"label '/data/lab_01\.nii\.gz' \(key 'label'\) and image '/data/img_01\.nii\.gz' \(key 'image'\) "
             r"differ in spatial shape: \(8, 8, 6\) vs \(8, 8, 8\)")  # fmt: skip
    with pytest.raises(ValueError, match=match):
        CheckLabeld()(data)


def test_check_label_affine_mismatch_and_tolerance():
    shifted = torch.eye(4, dtype=torch.float64)
    shifted[0, 3] = 2.5
    match = r"label '/data/lab_01\.nii\.gz' .* and image '/data/img_01\.nii\.gz' .* differ in affine"
    with pytest.raises(ValueError, match=match) as info:
        CheckLabeld()(_pair(np.zeros((1, 8, 8, 8), np.uint8), label_affine=shifted))
    assert "2.5" in str(info.value) and "label affine" in str(info.value) and "image affine" in str(info.value)
    nearly = torch.eye(4, dtype=torch.float64)
    nearly[0, 3] = 5e-4  # within 1e-3
    assert CheckLabeld()(_pair(np.ones((1, 8, 8, 8), np.uint8), label_affine=nearly))["label"].shape == (1, 8, 8, 8)


def test_check_label_on_real_files_with_a_wrong_class(case, tmp_path):
    label = nib.load(case["label"])
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 20
    bad = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(values, label.affine), bad)
    data = _load()({"image": case["image"], "label": str(bad)})
    match = r"label '.*bad_label\.nii\.gz' \(key 'label'\) has 1 voxel\(s\) with values outside 0\.\.13: 20\.$"
    with pytest.raises(ValueError, match=match):
        CheckLabeld(num_classes=14)(data)


def test_check_label_argument_and_key_errors():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        CheckLabeld(num_classes=1)
    with pytest.raises(ValueError, match=r"image key 'ct' is not in the data \(keys: \['image', 'label'\]\)"):
        CheckLabeld(image_key="ct")(_pair(np.zeros((1, 8, 8, 8), np.uint8)))


# ---------------------------------------------------------------- loading errors


def _truncated_copy(source: str, folder: Path) -> Path:
    data = Path(source).read_bytes()
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    return truncated


def test_monai_load_error_for_a_truncated_file_lacks_the_file_name(case, tmp_path):
    """Why io.py exists: if MONAI starts naming the file, LoadImageWithContextd can go."""
    truncated = _truncated_copy(case["image"], tmp_path)
    with pytest.raises(EOFError) as info:
        LoadImaged("image")({"image": str(truncated)})
    assert "truncated" not in str(info.value)


def test_load_image_with_context_names_truncated_file(case, tmp_path):
    truncated = _truncated_copy(case["image"], tmp_path)
    match = r"cannot read image '.*truncated\.nii\.gz': EOFError: Compressed file ended"
    with pytest.raises(ValueError, match=match) as info:
        LoadImageWithContextd("image")({"image": str(truncated)})
    assert isinstance(info.value.__cause__, EOFError)


def test_load_image_with_context_names_missing_file(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(ValueError, match=r"cannot read image '.*missing\.nii\.gz': FileNotFoundError"):
        LoadImageWithContextd("image")({"image": str(missing)})


def test_load_image_with_context_keeps_loaded_arguments_and_pickles(case):
    loader = pickle.loads(pickle.dumps(LoadImageWithContextd(["image", "label"], image_only=False, dtype=np.int16)))
    data = loader(case)
    assert data["image"].dtype == torch.int16 and tuple(data["image"].shape) == SHAPE
    assert data["label_meta_dict"]["filename_or_obj"] == case["label"]
