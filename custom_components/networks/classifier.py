"""A 3D ViT classifier whose encoder is MONAI's ``ViT``, so the GL-MAE encoder loads into it as into ``UNETR.vit``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import ViT
from monai.utils import ensure_tuple_rep

__all__ = ["ViTClassifier"]


class ViTClassifier(nn.Module):
    """ViT encoder, mean over all patch tokens (no CLS token), LayerNorm, linear layer to class logits: the
    global-pool classifier of MAE fine-tuning, on MONAI's ``ViT``.

    The encoder is ``self.vit`` (a ``monai.networks.nets.ViT`` without classification head, whose tokens leave
    through its own final LayerNorm) and ``self.feat_size`` is its token grid, as in ``UNETR``, so
    ``custom_components.weights.load_encoder`` loads a GL-MAE encoder into it and interpolates the position
    embeddings to a grid that is not a cube (384x384x32 gives 24x24x2 tokens).

    Args:
        in_channels: input channels.
        num_classes: number of classes.
        img_size: input size ``(H, W, D)``, each a multiple of ``patch_size``.
        patch_size: patch edge (16 in GL-MAE).
        hidden_size, mlp_dim, num_layers, num_heads: ViT sizes (ViT-B: 768, 3072, 12, 12).
        dropout_rate: dropout in the transformer blocks and before the last layer.
        qkv_bias: biases in the attention projections (True in the GL-MAE encoder).

    Shapes: ``x: [B, in_channels, H, W, D] -> [B, num_classes]`` logits.

    Raises:
        ValueError: ``num_classes`` below 2, or an ``img_size`` that is not a multiple of ``patch_size``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: Sequence[int] | int,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
        img_size = ensure_tuple_rep(img_size, 3)
        if any(size % patch_size for size in img_size):
            raise ValueError(f"img_size {tuple(img_size)} must be a multiple of patch_size {patch_size} on every axis.")
        self.feat_size = tuple(size // patch_size for size in img_size)
        self.vit = ViT(
            in_channels=in_channels, img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
            mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, proj_type="conv", classification=False,
            dropout_rate=dropout_rate, spatial_dims=3, qkv_bias=qkv_bias,
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout_rate)
        self.head = nn.Linear(hidden_size, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning: start from near-uniform probabilities
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)  # [B, N, hidden_size]
        return self.head(self.dropout(self.norm(tokens.mean(dim=1))))
