"""SaveOverlayd: PNG overlays of a segmentation on its image."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.utils import one_hot
from PIL import Image

from custom_components.transforms.overlay import (
    ALPHA,
    GAP,
    HEADER,
    LEGEND_ROW,
    LEGEND_WIDTH,
    PALETTE,
    SaveOverlayd,
    render_overlay,
)

H, W, D, NUM_CLASSES = 20, 16, 16, 3


def case(filename: str | None = "/data/imagesTs/case_0007.nii.gz") -> dict:
    """Grey 0.5 image; class 1 a box over slices 4..12, class 2 a smaller box inside it over slices 6..8."""
    labels = torch.zeros(1, H, W, D)
    labels[0, 2:8, 3:9, 4:13] = 1
    labels[0, 12:16, 10:14, 6:9] = 2
    meta = {"filename_or_obj": filename} if filename else {}
    return {"image": MetaTensor(torch.full((1, H, W, D), 0.5), meta=meta), "pred": labels}


def expected_size(slices: int) -> tuple[int, int]:
    return slices * (H + GAP) + LEGEND_WIDTH, HEADER + max(W, (NUM_CLASSES - 1) * LEGEND_ROW + GAP)


def test_writes_named_png_with_coloured_labels(tmp_path):
    data = case()
    out = SaveOverlayd(output_dir=str(tmp_path), num_classes=NUM_CLASSES)(data)
    assert out["pred"] is data["pred"] and out["image"] is data["image"]
    path = tmp_path / "case_0007_overlay.png"
    picture = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    assert picture.shape[1::-1] == expected_size(3)
    labels = data["pred"][0].numpy().astype(int)
    for i, z in enumerate([6, 8, 10]):  # evenly spaced strictly inside slices 4..12
        tile = picture[HEADER : HEADER + W, i * (H + GAP) : i * (H + GAP) + H]
        tile_labels = np.rot90(labels[:, :, z])
        for c in range(NUM_CLASSES):
            colour = np.array((0, 0, 0) if c == 0 else PALETTE[c - 1])
            expected = 127.5 if c == 0 else (1 - ALPHA) * 127.5 + ALPHA * colour
            pixels = tile[tile_labels == c]
            np.testing.assert_allclose(pixels, np.broadcast_to(expected, pixels.shape), atol=1)
    assert (np.rot90(labels[:, :, 8]) == 2).any()  # the middle tile shows both classes


def test_one_hot_input_and_postfix(tmp_path):
    data = case()
    probabilities = one_hot(data["pred"][None], NUM_CLASSES)[0] * 0.8
    SaveOverlayd(output_dir=str(tmp_path), num_classes=NUM_CLASSES, output_postfix="seg", slices=2)(
        {"image": data["image"], "pred": probabilities}
    )
    label_map_dir = tmp_path / "label_map"
    SaveOverlayd(output_dir=str(label_map_dir), num_classes=NUM_CLASSES, output_postfix="seg", slices=2)(data)
    from_one_hot = np.asarray(Image.open(tmp_path / "case_0007_seg.png"))
    assert from_one_hot.shape[1::-1] == expected_size(2)
    np.testing.assert_array_equal(from_one_hot, np.asarray(Image.open(label_map_dir / "case_0007_seg.png")))


def test_region_map_of_a_multichannel_mri_with_named_classes(tmp_path):
    """BraTS: regions (TC, WT, ET) drawn as the classes they nest, over the chosen channel of a z-scored MRI whose
    zero background stays black; the legend names the classes and grows to fit them."""
    regions = [[1, 2], [1, 2, 3], [2]]  # channel 1 (WT) holds everything, channel 2 (ET) class 2 only
    data = case()
    classes = data["pred"][0]
    region_map = torch.stack([torch.isin(classes, torch.tensor(r)) for r in regions]).float()
    image = torch.zeros(4, H, W, D)
    image[2, :, :, :] = torch.linspace(-2.0, 2.0, H)[:, None, None]
    image[2, :4] = 0.0  # background rows
    names = ["necrotic core", "enhancing"]
    SaveOverlayd(output_dir=str(tmp_path), num_classes=NUM_CLASSES, regions=regions, class_names=names,
                 image_channel=2, window=None)({"image": MetaTensor(image, meta={"filename_or_obj": "c.nii"}),
                                                "pred": region_map})
    picture = np.asarray(Image.open(tmp_path / "c_overlay.png").convert("RGB")).astype(np.float32)
    assert picture.shape[1] > expected_size(3)[0]  # the legend widened for the names
    tile = picture[HEADER : HEADER + W, (H + GAP) : (H + GAP) + H]  # slice 8: both classes
    tile_labels = np.rot90(classes[:, :, 8].numpy().astype(int))
    grey = tile[tile_labels == 2] - ALPHA * np.array(PALETTE[1])  # class 2's colour blended over grey
    np.testing.assert_allclose(grey, np.repeat(grey[:, :1], 3, axis=1), atol=1.5)
    background = np.rot90(np.broadcast_to(np.arange(H)[:, None] < 4, (H, W)))  # rows 0..3 of the image are zero
    assert (tile[background & (tile_labels == 0)] == 0).all()
    assert tile[~background & (tile_labels == 0)].max() > 200  # the window spans the brain's values


def test_no_foreground_and_unnamed_cases(tmp_path):
    transform = SaveOverlayd(output_dir=str(tmp_path), num_classes=NUM_CLASSES)
    for _ in range(2):
        data = case(filename=None)
        data["pred"] = torch.zeros(1, H, W, D)
        transform(data)
    assert sorted(os.listdir(tmp_path)) == ["case_0000_overlay.png", "case_0001_overlay.png"]
    picture = np.asarray(Image.open(tmp_path / "case_0000_overlay.png").convert("RGB"))
    assert picture.shape[1::-1] == expected_size(3)
    assert np.all(picture[HEADER : HEADER + W, :H] == 128)  # grey only


@pytest.mark.parametrize(
    "image, pred, match",
    [
        (torch.zeros(1, H, W, D), torch.zeros(H, W, D), r"\[C, H, W, D\]"),
        (torch.zeros(1, H, W, D), torch.zeros(1, H, W, D + 1), r"\[C, H, W, D\]"),
        (torch.zeros(H, W, D), torch.zeros(1, H, W, D), r"\[C, H, W, D\] with channel 0"),
        (torch.zeros(1, H, W, D), torch.zeros(2, H, W, D), "2 channels"),
        (torch.zeros(1, H, W, D), torch.full((1, H, W, D), 3.0), "outside"),
    ],
)
def test_bad_inputs_raise(tmp_path, image, pred, match):
    with pytest.raises(ValueError, match=match):
        SaveOverlayd(output_dir=str(tmp_path), num_classes=NUM_CLASSES)({"image": image, "pred": pred})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 40}, "num_classes"),
        ({"slices": 0}, "slices"),
        ({"keys": ["pred", "label"]}, "one segmentation key"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SaveOverlayd(output_dir=str(tmp_path), **{"num_classes": NUM_CLASSES, **kwargs})


def test_render_overlay_shape_mismatch():
    with pytest.raises(ValueError, match=r"\[H, W, D\]"):
        render_overlay(np.zeros((H, W, D)), np.zeros((H, W, D + 1), dtype=int), NUM_CLASSES)


def test_zoom_magnifies_the_tiles_and_auto_zoom_reaches_the_minimum_width():
    from custom_components.transforms.overlay import MIN_TILE

    image, labels = np.full((H, W, D), 0.5), np.zeros((H, W, D), dtype=int)
    labels[2:8, 3:9, 4:13] = 1
    native = render_overlay(image, labels, NUM_CLASSES, slices=1)
    zoomed = render_overlay(image, labels, NUM_CLASSES, slices=1, zoom=3)
    assert zoomed.size == (3 * H + GAP + LEGEND_WIDTH, HEADER + max(3 * W, (NUM_CLASSES - 1) * LEGEND_ROW + GAP))
    assert native.size == expected_size(1)
    auto = render_overlay(image, labels, NUM_CLASSES, slices=1, zoom=None)
    assert auto.size[0] - GAP - LEGEND_WIDTH >= MIN_TILE
    with pytest.raises(ValueError, match="zoom"):
        render_overlay(image, labels, NUM_CLASSES, zoom=0)
