"""Global and local multi-view cropping for GL-MAE pre-training."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform, RandFlip, Randomizable, RandScaleIntensity, RandShiftIntensity, RandSpatialCrop, SpatialPad,
)
from monai.utils import convert_to_tensor, ensure_tuple_rep

__all__ = ["GlobalLocalViewsd"]


class GlobalLocalViewsd(Randomizable, MapTransform):
    """Draw ``num_global_views`` random crops of ``global_size`` and ``num_local_views`` independent random crops of
    ``local_size`` from each image, optionally flipped and jittered in intensity, and stack them per kind.

    Local crops are not constrained to lie inside a global crop (the GL-MAE figure draws them anywhere in the
    volume). An image smaller than a crop is padded (constant 0, the bottom of the [0, 1] intensity range) first.

    Args:
        keys: the image key (one key).
        global_size: global crop size (160³ in the paper).
        local_size: local crop size (96³).
        num_global_views: p (2).
        num_local_views: q (4).
        flip_prob: probability of flipping each view along each spatial axis (0 disables flips).
        intensity_prob: probability of each of two intensity jitters per view (0 disables them): MONAI's
            ``RandScaleIntensity`` (``x * (1 + f)``, ``f`` uniform in +-``intensity_scale``) and
            ``RandShiftIntensity`` (``x + o``, ``o`` uniform in +-``intensity_shift``), the fine-tuning bundles'
            intensity augmentations, drawn independently for every view so that views of one volume differ in
            contrast as scans of one patient do between scanners and phases.
        intensity_scale, intensity_shift: their ranges (0.1 each, in units of the [0, 1] intensity range).
        global_key, local_key: output keys, holding ``[p, C, *global_size]`` and ``[q, C, *local_size]``.
        allow_missing_keys: MONAI's usual flag.

    The input image (``[C, H, W, D]``) is removed from the output to keep batches small.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        global_size: Sequence[int] | int = 160,
        local_size: Sequence[int] | int = 96,
        num_global_views: int = 2,
        num_local_views: int = 4,
        flip_prob: float = 0.0,
        intensity_prob: float = 0.0,
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.1,
        global_key: str = "global_views",
        local_key: str = "local_views",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"GlobalLocalViewsd takes one image key, got {self.keys}.")
        if num_global_views < 0 or num_local_views < 0 or num_global_views + num_local_views == 0:
            raise ValueError(f"need a non-negative number of views, at least one in all, got "
                             f"{num_global_views} global and {num_local_views} local.")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}.")
        if not 0.0 <= intensity_prob <= 1.0 or intensity_scale < 0 or intensity_shift < 0:
            raise ValueError(f"need intensity_prob in [0, 1] and non-negative intensity_scale and intensity_shift, got "
                             f"{intensity_prob}, {intensity_scale}, {intensity_shift}.")
        self.global_size = ensure_tuple_rep(global_size, 3)
        self.local_size = ensure_tuple_rep(local_size, 3)
        self.num_views = {global_key: num_global_views, local_key: num_local_views}
        self.sizes = {global_key: self.global_size, local_key: self.local_size}
        self.croppers = {k: RandSpatialCrop(self.sizes[k], random_size=False) for k in self.sizes}
        self.pad = SpatialPad(tuple(max(g, l) for g, l in zip(self.global_size, self.local_size)))
        self.flips = [RandFlip(prob=flip_prob, spatial_axis=axis) for axis in range(3)]
        self.jitters = ([RandScaleIntensity(intensity_scale, prob=intensity_prob),
                         RandShiftIntensity(intensity_shift, prob=intensity_prob)] if intensity_prob > 0 else [])

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for t in [*self.croppers.values(), *self.flips, *self.jitters]:
            t.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        """Each crop and flip draws from the shared random state when it is applied."""

    def _view(self, image: torch.Tensor, out_key: str) -> torch.Tensor:
        view = self.croppers[out_key](image)
        for transform in (*self.flips, *self.jitters):
            view = transform(view)
        return convert_to_tensor(view, track_meta=False)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d.pop(key)
            if image.ndim != 4:
                raise ValueError(f"GlobalLocalViewsd expects a channel-first 3D image [C, H, W, D], got "
                                 f"shape {tuple(image.shape)}.")
            image = self.pad(image)
            for out_key, n in self.num_views.items():
                views = [self._view(image, out_key) for _ in range(n)]
                shape = (0, image.shape[0], *self.sizes[out_key])
                d[out_key] = torch.stack(views) if views else torch.zeros(shape, dtype=image.dtype, device=image.device)
        return d
