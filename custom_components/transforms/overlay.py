"""PNG overlays of a segmentation on its image: a few axial slices through the labelled region, for a quick look.

MONAI writes predictions as NIfTI (``SaveImaged``) and plots to TensorBoard, but has no per-case picture file that
can be browsed without a viewer; this draws one with numpy and PIL only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from PIL import Image, ImageDraw

from custom_components.transforms.checks import UNKNOWN_FILE, source_file
from custom_components.transforms.io import case_name
from custom_components.transforms.regions import regions_to_label

__all__ = ["PALETTE", "SaveOverlayd", "overlay_slices", "render_overlay"]

logger = logging.getLogger("custom_components")

#: RGB colour of classes 1, 2, ... (class 0, the background, is not coloured).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (255, 255, 255),
)  # fmt: skip
ALPHA = 0.45
GAP = 4  # pixels between tiles
HEADER = 14  # pixels above the tiles for the slice indices
LEGEND_ROW = 14  # pixels per legend entry
LEGEND_WIDTH = 48  # pixels right of the tiles for the legend (wider when class names need it)
CHAR_WIDTH = 6  # pixels per character of PIL's default font
MIN_TILE = 192  # pixels: the automatic zoom makes tiles at least this wide


def overlay_slices(labels: np.ndarray, slices: int) -> list[int]:
    """Axial (last-axis) indices of ``slices`` slices evenly spaced strictly inside the labelled region of
    ``labels: [H, W, D]`` (first to last slice with any foreground), or ``slices`` times the middle slice
    when nothing is labelled."""
    labelled = np.flatnonzero(labels.any(axis=(0, 1)))
    if labelled.size == 0:
        return [labels.shape[2] // 2] * slices
    positions = np.linspace(labelled[0], labelled[-1], slices + 2)[1:-1]
    return np.rint(positions).astype(int).tolist()


def render_overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, slices: int = 3,
                   zoom: int | None = 1, class_names: Sequence[str] | None = None) -> Image.Image:
    """Draw the slices chosen by :func:`overlay_slices` side by side, image in grey and class ``c`` blended in
    ``PALETTE[c - 1]`` at ``ALPHA``, with the slice indices above and a legend of class ids on the right.

    Each ``[H, W]`` slice is rotated by 90 degrees (``np.rot90``) into an ``H`` wide, ``W`` high tile; tile ``i``
    starts at ``(i * (H + GAP), HEADER)``. The picture is ``slices * (H + GAP) + L`` wide and
    ``HEADER + max(W, (num_classes - 1) * LEGEND_ROW + GAP)`` high, where the legend width ``L`` is
    ``LEGEND_WIDTH``, or more when ``class_names`` need it.

    Args:
        image: ``[H, W, D]`` intensities in [0, 1] (values outside are clipped).
        labels: ``[H, W, D]`` integer class map with values in ``[0, num_classes)``.
        num_classes: number of classes including the background, 2..``len(PALETTE) + 1``.
        slices: number of axial slices to show.
        zoom: integer magnification of the slices (nearest neighbour; the sizes above are then of the zoomed
            image); None picks the smallest that makes a tile at least ``MIN_TILE`` pixels wide.
        class_names: the legend's name of each class ``1..num_classes-1``; None writes the class indices.

    Raises:
        ValueError: ``image`` and ``labels`` are not two ``[H, W, D]`` arrays of the same shape.
    """
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"image and labels must both be [H, W, D], got {image.shape} and {labels.shape}.")
    zoom = max(1, -(-MIN_TILE // image.shape[0])) if zoom is None else zoom
    if zoom < 1:
        raise ValueError(f"zoom must be a positive int or None, got {zoom}.")
    legend = [str(c) for c in range(1, num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(legend) != num_classes - 1:
        raise ValueError(f"class_names must name the {num_classes - 1} classes after the background, got {legend}.")
    legend_width = max(LEGEND_WIDTH, 14 + CHAR_WIDTH * max(map(len, legend)) + GAP)
    if zoom > 1:
        image = image.repeat(zoom, axis=0).repeat(zoom, axis=1)
        labels = labels.repeat(zoom, axis=0).repeat(zoom, axis=1)
    height, width, _ = image.shape
    indices = overlay_slices(labels, slices)
    palette = np.array(((0, 0, 0),) + PALETTE[: num_classes - 1], dtype=np.float32)
    legend_height = (num_classes - 1) * LEGEND_ROW + GAP
    canvas = Image.new("RGB", (slices * (height + GAP) + legend_width, HEADER + max(width, legend_height)))
    draw = ImageDraw.Draw(canvas)
    for i, z in enumerate(indices):
        grey = np.repeat(np.clip(np.rot90(image[:, :, z]), 0.0, 1.0)[..., None] * 255.0, 3, axis=-1)
        tile_labels = np.rot90(labels[:, :, z])
        alpha = np.where(tile_labels > 0, ALPHA, 0.0)[..., None]
        rgb = (1.0 - alpha) * grey + alpha * palette[tile_labels]
        x = i * (height + GAP)
        canvas.paste(Image.fromarray(np.rint(rgb).astype(np.uint8)), (x, HEADER))
        draw.text((x + 2, 1), f"z={z}", fill="white")
    x = slices * (height + GAP)
    for c in range(1, num_classes):
        y = HEADER + (c - 1) * LEGEND_ROW
        draw.rectangle((x, y + 2, x + 9, y + 11), fill=PALETTE[c - 1])
        draw.text((x + 14, y + 1), legend[c - 1], fill="white")
    return canvas


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<case>_<output_postfix>.png``: a few axial slices of the image with the segmentation
    of ``keys`` overlaid (see :func:`render_overlay`). The data are returned unchanged.

    ``<case>`` is the file name of the image (its MetaTensor's ``filename_or_obj``, or that of
    ``<image_key>_meta_dict``) without ``.nii.gz``/``.nii``; without one it is ``case_0000``, ``case_0001``, ...

    Args:
        keys: key of the segmentation, either a label map ``[1, H, W, D]`` or a one-hot/probability map
            ``[num_classes, H, W, D]`` (argmax over the channels), or with ``regions`` a binary region map
            ``[R, H, W, D]``. One key.
        image_key: key of the image, ``[C, H, W, D]``.
        output_dir: folder of the PNG files (created when needed).
        num_classes: number of classes including the background, 2..``len(PALETTE) + 1``.
        output_postfix: appended to the case name.
        slices: number of axial slices side by side.
        zoom: integer magnification of the slices, or None to make each at least ``MIN_TILE`` pixels wide.
        class_names: legend names of the classes ``1..num_classes-1``; None shows the class indices.
        regions: the class indices of each channel of a region map (e.g. BraTS TC/WT/ET ``[[1, 3], [1, 2, 3],
            [3]]``), drawn as the classes they nest (see ``regions_to_label``); None: ``keys`` holds classes.
        image_channel: the image channel shown in grey (e.g. 0, FLAIR, of a 4-channel MRI).
        window: the intensities shown from black to white; None: the 0.5th to 99.5th percentile of the channel's
            non-zero voxels, and zero voxels black (z-scored MRI, whose background is 0).
        allow_missing_keys: skip cases without the segmentation key.

    Raises:
        ValueError: on invalid arguments, when shapes are not as above or do not match, or label values are outside
            ``[0, num_classes)``.

    Example::

        SaveOverlayd(keys="pred", image_key="image", output_dir="eval/overlays", num_classes=14)
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        output_dir: str = "./overlays",
        num_classes: int = 2,
        output_postfix: str = "overlay",
        slices: int = 3,
        zoom: int | None = 1,
        class_names: Sequence[str] | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        image_channel: int = 0,
        window: Sequence[float] | None = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SaveOverlayd overlays one segmentation key, got keys {self.keys}.")
        max_classes = len(PALETTE) + 1
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= max_classes:
            raise ValueError(f"num_classes must be an int in 2..{max_classes}, got {num_classes!r}.")
        if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
            raise ValueError(f"slices must be a positive int, got {slices!r}.")
        self.image_key = image_key
        self.output_dir = output_dir
        self.num_classes = num_classes
        self.output_postfix = output_postfix
        self.slices = slices
        self.zoom = zoom
        self.class_names = class_names
        self.regions = regions
        self.image_channel = image_channel
        if window is not None and (len(window) != 2 or not window[0] < window[1]):
            raise ValueError(f"window must be [low, high] with low < high, or None, got {window!r}.")
        self.window = window
        self._unnamed = 0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = self._image(d[self.image_key])
            labels = self._labels(d[key], key, image.shape)
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, f"{self._case_name(d)}_{self.output_postfix}.png")
            render_overlay(image, labels, self.num_classes, self.slices, self.zoom, self.class_names).save(path)
            logger.debug(f"overlay written to {path}")
        return d

    def _image(self, image: NdarrayOrTensor) -> np.ndarray:
        if image.ndim != 4 or not 0 <= self.image_channel < image.shape[0]:
            raise ValueError(f"'{self.image_key}' must be [C, H, W, D] with channel {self.image_channel}, got shape "
                             f"{tuple(image.shape)}.")
        shown = convert_to_numpy(image[self.image_channel], dtype=np.float32)
        if self.window is None:  # z-scored MRI: the window from the brain, the zero background black
            foreground = shown != 0
            low, high = np.percentile(shown[foreground], (0.5, 99.5)) if foreground.any() else (0.0, 1.0)
            return np.where(foreground, (shown - low) / max(float(high - low), 1e-6), 0.0)
        low, high = self.window
        return (shown - low) / max(float(high - low), 1e-6)

    def _labels(self, pred: NdarrayOrTensor, key: Hashable, spatial: tuple[int, ...]) -> np.ndarray:
        if self.regions is not None:
            pred = regions_to_label(pred, self.regions)
        shape = tuple(pred.shape)
        if pred.ndim != 4 or shape[1:] != spatial:
            raise ValueError(f"'{key}' must be [C, H, W, D] with [H, W, D] = {spatial} of the image, got {shape}.")
        if shape[0] not in (1, self.num_classes):
            raise ValueError(
                f"'{key}' must be a label map [1, H, W, D] or one channel per class [{self.num_classes}, H, W, D], "
                f"got {shape[0]} channels."
            )
        values = convert_to_numpy(pred, dtype=np.float32)
        labels = np.rint(values[0]).astype(np.int64) if shape[0] == 1 else values.argmax(axis=0)
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"'{key}' has label values in [{labels.min()}, {labels.max()}], outside [0, {self.num_classes})."
            )
        return labels

    def _case_name(self, data: Mapping[Hashable, Any]) -> str:
        name = source_file(data, self.image_key)
        if name == UNKNOWN_FILE:
            name = f"case_{self._unnamed:04d}"
            self._unnamed += 1
        return case_name(name)
