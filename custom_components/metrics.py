"""Surface metrics in millimetres: MONAI's Hausdorff distance and surface Dice with each case's voxel spacing.

MONAI's ``HausdorffDistanceMetric`` and ``SurfaceDiceMetric`` take the spacing as a call argument, which an ignite
metric handler in a bundle config cannot pass per case. These subclasses read it from the prediction's metadata
(``MetaTensor.affine``, else ``meta["pixdim"]``), so HD95 and NSD are in millimetres whatever each image's spacing.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric
from monai.utils import convert_to_numpy

__all__ = ["SpacedHausdorffDistanceMetric", "SpacedSurfaceDiceMetric", "voxel_spacing"]

logger = logging.getLogger("custom_components")


def voxel_spacing(y_pred: torch.Tensor) -> list[list[float]] | None:
    """The voxel spacing of each case of a batch-first prediction, from its metadata.

    The spacing is the column norms of the spatial part of ``y_pred.affine`` (correct for any rotation of the
    voxel grid); without an affine in the metadata it is ``meta["pixdim"][1:1 + S]``.

    Args:
        y_pred: ``[B, C, *spatial]`` prediction with ``S = y_pred.ndim - 2`` spatial dims; a MetaTensor whose affine
            is ``[S' + 1, S' + 1]`` (one for all cases) or ``[B, S' + 1, S' + 1]`` (one per case), ``S' >= S``.

    Returns:
        ``B`` lists of ``S`` spacings (the metadata's unit, mm for NIfTI), or None when ``y_pred`` is not a
        MetaTensor or has neither an affine nor a pixdim.

    Raises:
        ValueError: ``y_pred`` has fewer than three dims, the metadata does not match its batch size or spatial
            dims, or a spacing is not finite and positive.
    """
    if y_pred.ndim < 3:
        raise ValueError(f"y_pred must be batch-first [B, C, *spatial], got shape {tuple(y_pred.shape)}.")
    if not isinstance(y_pred, MetaTensor):
        return None
    batch, dims = y_pred.shape[0], y_pred.ndim - 2
    if "affine" in y_pred.meta:
        affine = convert_to_numpy(y_pred.affine, dtype=np.float64)
        source = "affine"
        if affine.ndim == 2:
            affine = affine[None]
        if affine.ndim != 3 or affine.shape[-1] < dims + 1 or affine.shape[-2] < dims + 1:
            raise ValueError(f"affine of shape {affine.shape} does not fit a prediction with {dims} spatial dims.")
        spacing = np.linalg.norm(affine[:, :dims, :dims], axis=1)
    elif "pixdim" in y_pred.meta:
        pixdim = np.atleast_2d(convert_to_numpy(y_pred.meta["pixdim"], dtype=np.float64))
        source = "pixdim"
        if pixdim.shape[-1] < dims + 1:
            raise ValueError(f"pixdim {pixdim.tolist()} does not fit a prediction with {dims} spatial dims.")
        spacing = pixdim[:, 1 : dims + 1]
    else:
        return None
    if spacing.shape[0] == 1:
        spacing = np.repeat(spacing, batch, axis=0)
    if spacing.shape[0] != batch:
        raise ValueError(f"the {source} holds {spacing.shape[0]} cases but y_pred has a batch of {batch}.")
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"voxel spacing from the {source} must be finite and positive, got {spacing.tolist()}.")
    return spacing.tolist()


#: warnings MONAI's surface metrics give per case and class that the bundles' own reports already carry: an empty
#: prediction or reference (the metric is NaN or infinite there, the per-class logs name missed and undefined
#: classes), and a deprecated argument MONAI passes to itself (MONAI 1.5-1.6).
KNOWN_WARNINGS = (r"the (prediction|ground truth) of class \d+ is all 0", r".*get_mask_edges:always_return_as_numpy")


class _SpacingFromMeta:
    """Passes ``spacing=voxel_spacing(y_pred)`` to the MONAI metric's ``_compute_tensor`` (an explicit ``spacing``
    keyword of the call wins); without metadata the spacing is 1 and a warning is logged once per metric. The
    :data:`KNOWN_WARNINGS` are not shown."""

    _warned_no_meta = False

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("spacing") is None:
            kwargs["spacing"] = voxel_spacing(y_pred)
            if kwargs["spacing"] is None and not self._warned_no_meta:
                self._warned_no_meta = True
                logger.warning(
                    f"{type(self).__name__}: the prediction has no affine or pixdim metadata; using a voxel spacing "
                    "of 1, so distances are in voxels, not millimetres."
                )
        with warnings.catch_warnings():
            for message in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            return super()._compute_tensor(y_pred, y, **kwargs)  # type: ignore[misc]


class SpacedHausdorffDistanceMetric(_SpacingFromMeta, HausdorffDistanceMetric):
    """MONAI ``HausdorffDistanceMetric`` whose distances are in the unit of each case's voxel spacing (mm).

    The spacing of each case is read from ``y_pred``'s metadata by :func:`voxel_spacing`; inputs and arguments
    are those of ``HausdorffDistanceMetric`` (``y_pred``, ``y``: one-hot ``[B, C, H, W, D]`` or lists of
    ``[C, H, W, D]``; e.g. ``percentile=95`` for HD95). Returns ``[B, C']`` distances, ``C'`` without background
    unless ``include_background``.
    """


class SpacedSurfaceDiceMetric(_SpacingFromMeta, SurfaceDiceMetric):
    """MONAI ``SurfaceDiceMetric`` (normalised surface Dice, NSD) with ``class_thresholds`` in the unit of each
    case's voxel spacing (mm).

    The spacing of each case is read from ``y_pred``'s metadata by :func:`voxel_spacing`; inputs and arguments
    are those of ``SurfaceDiceMetric`` (``y_pred``, ``y``: one-hot ``[B, C, H, W, D]`` or lists of
    ``[C, H, W, D]``). Returns ``[B, C']`` NSD values in [0, 1].
    """
