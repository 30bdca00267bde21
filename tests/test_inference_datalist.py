"""inference_datalist: images to predict from a datalist section or a folder."""

from __future__ import annotations

import json
import os

import pytest

from custom_components.data import inference_datalist


def touch(folder, *names: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_from_folder_sorted_absolute(tmp_path, monkeypatch):
    touch(tmp_path / "images", "b.nii.gz", "a.nii.gz", "notes.txt", "c.nii")
    monkeypatch.chdir(tmp_path)
    assert inference_datalist(dataset_dir="images") == [
        {"image": str(tmp_path / "images" / name)} for name in ("a.nii.gz", "b.nii.gz")
    ]
    assert inference_datalist(dataset_dir="images", pattern="*.nii") == [{"image": str(tmp_path / "images/c.nii")}]


def test_from_datalist_section(tmp_path):
    touch(tmp_path / "imagesTs", "x.nii.gz", "y.nii.gz")
    touch(tmp_path / "other", "z.nii.gz")
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"testing": ["imagesTs/x.nii.gz", {"image": "imagesTs/y.nii.gz", "id": 7}]}))
    expected = [{"image": str(tmp_path / "imagesTs/x.nii.gz")}, {"image": str(tmp_path / "imagesTs/y.nii.gz"), "id": 7}]
    assert inference_datalist(str(path)) == expected
    assert inference_datalist(str(path), dataset_dir=str(tmp_path / "other")) == expected  # the datalist wins
    with pytest.raises(ValueError, match="no section 'validation'"):
        inference_datalist(str(path), section="validation")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="got neither"):
        inference_datalist()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        inference_datalist(dataset_dir=str(tmp_path / "missing"))
    touch(tmp_path / "empty", "a.txt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}.*no files matching"):
        inference_datalist(dataset_dir=str(tmp_path / "empty"))
