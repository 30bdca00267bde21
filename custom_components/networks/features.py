"""The pre-trained GL-MAE encoder as an inference network: one image in, one feature map out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import ViT
from monai.utils import ensure_tuple_rep

__all__ = ["GLMAEFeatureEncoder"]


class GLMAEFeatureEncoder(ViT):
    """The GL-MAE student encoder on intact windows, returning its token features as a map on the patch grid.

    A MONAI ``ViT`` (fixed sin-cos position embedding of ``img_size``, qkv bias) plus the pre-trained CLS token,
    which is prepended as in pre-training. Its state dict has exactly the keys of the pre-training bundle's
    ``encoder.pt`` (``patch_embedding.*``, ``blocks.*``, ``norm.*``, ``cls_token``, ``position_grid``), so that file,
    or the bundle's ``model.pt`` (the same tensors), loads strictly. One tensor in, one tensor out: model-zoo shape
    checks, TorchScript and ONNX export work on it, and ``SlidingWindowInferer`` stitches its output over a volume
    (the output is ``1 / patch_size`` of the input's size, which MONAI's sliding window handles).

    Args:
        in_channels: image channels.
        img_size: the window, a multiple of ``patch_size`` per axis; the stored position grid is this window's.
        patch_size: cubic patch edge (16).
        hidden_size, mlp_dim, num_layers, num_heads: the pre-trained encoder's sizes (ViT-B/16 by default).
        qkv_bias: bias in the qkv projection (True in GL-MAE encoders).
        with_cls: append the CLS token's output, repeated over the grid, as ``hidden_size`` more channels; the
            sliding window then averages each window's CLS over the volume (a per-volume CLS embedding).

    Returns (forward):
        ``[B, hidden_size * (2 if with_cls else 1), H / p, W / p, D / p]``: channels ``0 .. hidden_size - 1`` are
        the patch tokens after the final LayerNorm, the next ``hidden_size`` (with ``with_cls``) the CLS token.

    Example::

        net = GLMAEFeatureEncoder(img_size=96, hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4)
        net.load_state_dict(torch.load("models/model.pt", weights_only=True))
        features = net(torch.rand(1, 1, 96, 96, 96))   # [1, 192, 6, 6, 6]
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] | int = 96,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = True,
        with_cls: bool = True,
    ) -> None:
        img_size = ensure_tuple_rep(img_size, 3)
        if any(s % patch_size or s <= 0 for s in img_size):
            raise ValueError(f"img_size {tuple(img_size)} must be three positive multiples of patch_size {patch_size}.")
        super().__init__(in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads,
                         proj_type="conv", pos_embed_type="sincos", classification=False, qkv_bias=qkv_bias)
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.with_cls = with_cls
        self.window = [int(s) for s in img_size]
        self.grid_size = [s // patch_size for s in self.window]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.register_buffer("position_grid", torch.tensor(self.grid_size, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels or list(x.shape[2:]) != self.window:
            raise ValueError(f"expected [B, C, H, W, D] windows of {self.in_channels} channel(s) and size {self.window} "
                             f"(the stored position grid's), got {list(x.shape)}; run volumes through a sliding "
                             f"window of that size.")
        tokens = self.patch_embedding(x)
        num_samples = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(num_samples, -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        h, w, d = self.grid_size
        features = tokens[:, 1:].transpose(1, 2).reshape(num_samples, self.hidden_size, h, w, d)
        if not self.with_cls:
            return features
        cls = tokens[:, 0].reshape(num_samples, self.hidden_size, 1, 1, 1).expand(-1, -1, h, w, d)
        return torch.cat([features, cls], dim=1)
