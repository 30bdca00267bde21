"""Spaced surface metrics: HD95 and NSD in millimetres from the prediction's affine."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate

from custom_components.metrics import SpacedHausdorffDistanceMetric, SpacedSurfaceDiceMetric, voxel_spacing

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

SIZE, RADIUS = 24, 6


def sphere(shift: int = 0, axis: int = 0) -> torch.Tensor:
    """One-hot ``[2, SIZE, SIZE, SIZE]`` background/sphere, the sphere moved by ``shift`` voxels along ``axis``."""
    centre = np.full(3, SIZE // 2 - 2)
    centre[axis] += shift
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"))
    inside = ((grid - centre[:, None, None, None]) ** 2).sum(0) <= RADIUS**2
    return torch.from_numpy(np.stack([~inside, inside])).float()


def meta(x: torch.Tensor, spacing=(2.0, 2.0, 2.0), rotation: np.ndarray | None = None) -> MetaTensor:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    return MetaTensor(x, affine=torch.as_tensor(affine))


def rotation_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("k", [2, 3])
def test_hd95_in_millimetres(k):
    metric = SpacedHausdorffDistanceMetric(percentile=95)
    y = sphere()
    assert metric([meta(sphere(k))], [meta(y)]).item() == pytest.approx(2 * k)
    assert metric([meta(sphere(k), spacing=(1, 1, 1))], [y]).item() == pytest.approx(k)
    assert metric.aggregate().item() == pytest.approx(1.5 * k)


def test_per_case_spacing_list_and_batch():
    """Decollated cases (the handler path) and a collated batch (affine ``[B, 4, 4]``) use each case's spacing."""
    metric = SpacedHausdorffDistanceMetric(percentile=95, reduction="none")
    preds = [meta(sphere(2), spacing=(2, 2, 2)), meta(sphere(2), spacing=(0.5, 0.5, 0.5))]
    labels = [sphere(), sphere()]
    assert metric(preds, labels)[:, 0].tolist() == pytest.approx([4.0, 1.0])
    batch = list_data_collate([{"pred": p} for p in preds])["pred"]
    assert batch.affine.shape == (2, 4, 4)
    assert metric(batch, torch.stack(labels))[:, 0].tolist() == pytest.approx([4.0, 1.0])
    assert [p.affine.shape for p in decollate_batch(batch)] == [(4, 4), (4, 4)]


@pytest.mark.parametrize("axis, spacing_mm", [(0, 0.8), (1, 1.5), (2, 3.0)])
def test_anisotropic_rotated_affine(axis, spacing_mm):
    spacing, rotation = (0.8, 1.5, 3.0), rotation_z(30)
    pred = meta(sphere(2, axis)[None], spacing=spacing, rotation=rotation)
    assert voxel_spacing(pred) == [pytest.approx(list(spacing))]
    hd = SpacedHausdorffDistanceMetric()(pred, sphere()[None])  # the maximum distance: exactly the shift
    assert hd.item() == pytest.approx(2 * spacing_mm)


def test_pixdim_fallback_and_no_meta(caplog):
    pred = MetaTensor(sphere(2)[None], meta={"pixdim": [1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]})
    del pred.meta["affine"]
    metric = SpacedHausdorffDistanceMetric(percentile=95)
    assert metric(pred, sphere()[None]).item() == pytest.approx(4.0)
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        for _ in range(2):
            assert metric(sphere(2)[None], sphere()[None]).item() == pytest.approx(2.0)
    assert len([r for r in caplog.records if "no affine or pixdim" in r.getMessage()]) == 1


def test_explicit_spacing_wins():
    metric = SpacedHausdorffDistanceMetric(percentile=95)
    assert metric(meta(sphere(2)[None]), sphere()[None], spacing=[[3.0, 3.0, 3.0]]).item() == pytest.approx(6.0)


def test_nsd_threshold_in_millimetres():
    metric = SpacedSurfaceDiceMetric(class_thresholds=[2.0])
    assert metric([meta(sphere())], [sphere()]).item() == pytest.approx(1.0)
    assert metric([meta(sphere(1))], [sphere()]).item() == pytest.approx(1.0)  # 2 mm: within the threshold
    assert metric([meta(sphere(2))], [sphere()]).item() < 1.0  # 4 mm
    assert metric([meta(sphere(2), spacing=(1, 1, 1))], [sphere()]).item() == pytest.approx(1.0)  # 2 mm


@pytest.mark.parametrize(
    "pred, match",
    [
        (torch.zeros(2, 4), "batch-first"),
        (MetaTensor(torch.zeros(1, 2, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 0.0, 2.0, 1.0]))), "positive"),
        (MetaTensor(torch.zeros(3, 2, 4, 4, 4), affine=torch.eye(4).repeat(2, 1, 1)), "batch of 3"),
    ],
)
def test_bad_metadata(pred, match):
    with pytest.raises(ValueError, match=match):
        voxel_spacing(pred)
