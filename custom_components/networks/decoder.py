"""The MAE decoder shared by global and local views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

from custom_components.networks.pos_embed import sincos_position_embedding

__all__ = ["MAEDecoder"]


class MAEDecoder(nn.Module):
    """Light transformer that predicts the voxels of every patch from the encoder's visible tokens.

    Masked positions get a learned ``mask_token``; every position gets a fixed sin-cos embedding of the view's
    own token grid, so one decoder serves 160³ global and 96³ local views alike.

    Args:
        encoder_hidden_size: width of the encoder tokens.
        patch_size: cubic patch edge.
        in_channels: image channels predicted per voxel.
        hidden_size, num_layers, num_heads: decoder width, depth, heads (512, 8, 16 by default).
        mlp_dim: decoder MLP width, ``4 * hidden_size`` when None.
        qkv_bias: bias in the qkv projection.
        use_flash_attention: use ``scaled_dot_product_attention``.
    """

    def __init__(
        self,
        encoder_hidden_size: int,
        patch_size: int = 16,
        in_channels: int = 1,
        hidden_size: int = 512,
        num_layers: int = 8,
        num_heads: int = 16,
        mlp_dim: int | None = None,
        qkv_bias: bool = True,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"decoder hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        self.hidden_size = hidden_size
        self.decoder_embed = nn.Linear(encoder_hidden_size, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim or 4 * hidden_size, num_heads, 0.0, qkv_bias,
                             use_flash_attention=use_flash_attention)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.pred = nn.Linear(hidden_size, patch_size**3 * in_channels)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def position_embedding(self, grid: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (tuple(grid), device, dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_position_embedding(grid, self.hidden_size).to(device=device, dtype=dtype)
        return self._pos_cache[key]

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Predict every patch.

        Args:
            latent: ``[B, 1 + N_visible, encoder_hidden_size]`` encoder output, CLS first.
            ids_restore: ``[B, N]`` from the encoder's masking.
            grid: the view's token grid, ``prod(grid) == N``.

        Returns:
            ``[B, N, patch_size**3 * in_channels]`` predicted voxels of each patch, in token order.
        """
        x = self.decoder_embed(latent)
        num_samples, num_tokens = ids_restore.shape
        num_masked = num_tokens + 1 - x.shape[1]
        patches = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(num_samples, num_masked, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        patches = patches + self.position_embedding(grid, x.device, x.dtype)
        x = torch.cat([x[:, :1], patches], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x)[:, 1:])
