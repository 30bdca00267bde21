"""The GL-MAE student/teacher encoder: a 3D ViT whose parameter names are those of MONAI's ``ViT``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from monai.networks.layers import DropPath
from monai.utils import ensure_tuple_rep

from custom_components.networks.pos_embed import sincos_position_embedding

__all__ = ["DropPathTransformerBlock", "MaskedViTEncoder", "random_masking"]


def random_masking(num_samples: int, num_tokens: int, mask_ratio: float, device: torch.device | str):
    """Per-sample random masking by shuffling (MAE), drawn on ``device``.

    Returns:
        ids_keep: ``[B, N_visible]`` indices of the visible tokens, ``N_visible = max(1, int(N * (1 - mask_ratio)))``.
        mask: ``[B, N]`` float, 1 for masked tokens and 0 for visible ones, in the original token order.
        ids_restore: ``[B, N]`` the inverse permutation that puts shuffled tokens back in place.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    num_keep = max(1, int(num_tokens * (1.0 - mask_ratio)))
    noise = torch.rand(num_samples, num_tokens, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(num_samples, num_tokens, device=device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :num_keep], mask, ids_restore


class DropPathTransformerBlock(TransformerBlock):
    """MONAI's ``TransformerBlock`` with stochastic depth on both residual branches (DINO's student drop-path).

    The parameters and their names are those of ``TransformerBlock``; ``drop_path_rate`` 0 computes exactly the
    same function. Shapes: ``x: [B, N, hidden_size] -> [B, N, hidden_size]``.
    """

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0,
                 qkv_bias: bool = False, use_flash_attention: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias,
                         use_flash_attention=use_flash_attention)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MaskedViTEncoder(nn.Module):
    """3D ViT encoder with a CLS token, fixed sin-cos position embeddings for any view size, and MAE masking.

    The parameters ``patch_embedding.*``, ``blocks.*`` and ``norm.*`` have exactly the names and shapes of
    ``monai.networks.nets.ViT`` (and so of ``UNETR(...).vit``) built with the same sizes and ``img_size``, so the
    encoder loads into them without renaming. ``cls_token`` is the only extra parameter.

    Args:
        in_channels: image channels.
        img_size: the reference view size whose position grid is stored in ``patch_embedding.position_embeddings``
            (the fine-tuning ROI, 96³ by default). Views of other sizes get their own sin-cos grid.
        patch_size: cubic patch edge; every view size must be a multiple of it.
        hidden_size, mlp_dim, num_layers, num_heads: ViT width, MLP width, depth and heads (ViT-B/16 by default).
        qkv_bias: bias in the qkv projection (True, as in the released GL-MAE encoder).
        dropout_rate: dropout in the transformer blocks.
        use_flash_attention: use ``torch.nn.functional.scaled_dot_product_attention``.
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this value at the last.

    Example::

        enc = MaskedViTEncoder(img_size=96, hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4)
        latent, mask, ids_restore = enc(torch.rand(2, 1, 160, 160, 160), mask_ratio=0.75)
        # latent: [2, 1 + 250, 96], mask: [2, 1000]
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
        dropout_rate: float = 0.0,
        use_flash_attention: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        img_size = ensure_tuple_rep(img_size, 3)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}.")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        if hidden_size % 6 != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by 6 for 3D sin-cos position embeddings.")
        if any(s % patch_size for s in img_size):
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}.")
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.grid_size = tuple(s // patch_size for s in img_size)
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels, img_size, patch_size, hidden_size, num_heads, proj_type="conv", pos_embed_type="sincos",
            dropout_rate=dropout_rate, spatial_dims=3,
        )
        self.blocks = nn.ModuleList(
            DropPathTransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, use_flash_attention,
                                     drop_path_rate * i / max(num_layers - 1, 1))
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.normal_(self.cls_token, std=0.02)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def token_grid(self, spatial_shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid of a view of ``spatial_shape`` voxels; raises if it is not a multiple of the patch size."""
        if len(spatial_shape) != 3 or any(s % self.patch_size or s == 0 for s in spatial_shape):
            raise ValueError(
                f"view size {tuple(spatial_shape)} must be three positive multiples of patch_size {self.patch_size}."
            )
        return tuple(s // self.patch_size for s in spatial_shape)

    def position_embedding(self, grid: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Fixed sin-cos embedding ``[1, prod(grid), D]``; the stored reference grid is used when it matches."""
        if tuple(grid) == self.grid_size:
            return self.patch_embedding.position_embeddings.to(dtype)
        key = (tuple(grid), device, dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_position_embedding(grid, self.hidden_size).to(device=device, dtype=dtype)
        return self._pos_cache[key]

    def embed_patches(self, x: torch.Tensor, grid: Sequence[int], ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding ``[B, N, D]`` of every patch of ``x: [B, C, H, W, D]``, or ``[B, K, D]`` of only the
        patches ``ids_keep: [B, K]``.

        The voxels of each patch are gathered into a row ``[C·P³]`` and multiplied by the stride-P convolution's own
        weight as a matrix: the same arithmetic as the convolution, but masked views embed only their visible
        patches (a quarter of the work at mask ratio 0.75), and on CPU the GEMM is faster than the convolution (all
        patches of 8 views of 160³ on 2 cores: 0.35 s instead of 0.50 s in fp32, 0.23 s instead of 3.6 s under bf16
        autocast).
        """
        conv = self.patch_embedding.patch_embeddings
        p = self.patch_size
        (num_samples, channels), (gh, gw, gd) = x.shape[:2], grid
        blocks = x.reshape(num_samples, channels, gh, p, gw, p, gd, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        if ids_keep is None:
            patches = blocks.reshape(num_samples, gh * gw * gd, channels * p**3)
        else:
            rows = torch.arange(num_samples, device=x.device).unsqueeze(1)
            patches = blocks[rows, ids_keep // (gw * gd), ids_keep // gd % gw, ids_keep % gd].flatten(2)
        return F.linear(patches, conv.weight.flatten(1), conv.bias)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0):
        """Encode the visible tokens of ``x``.

        Args:
            x: ``[B, C, H, W, D]`` views, each side a multiple of ``patch_size``.
            mask_ratio: fraction of tokens hidden from the encoder (0 encodes the intact view).

        Returns:
            latent: ``[B, 1 + N_visible, hidden_size]`` (CLS first), after the final LayerNorm.
            mask: ``[B, N]`` 1 for masked tokens (all zeros when ``mask_ratio`` is 0).
            ids_restore: ``[B, N]`` inverse shuffle, for the decoder.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected views of shape [B, {self.in_channels}, H, W, D], got {tuple(x.shape)}.")
        grid = self.token_grid(x.shape[2:])
        num_samples, num_tokens = x.shape[0], math.prod(grid)
        if mask_ratio > 0:
            ids_keep, mask, ids_restore = random_masking(num_samples, num_tokens, mask_ratio, x.device)
            tokens = self.embed_patches(x, grid, ids_keep)
            position = self.position_embedding(grid, tokens.device, tokens.dtype).expand(num_samples, -1, -1)
            tokens = tokens + torch.gather(position, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        else:
            mask = torch.zeros(num_samples, num_tokens, device=x.device)
            ids_restore = torch.arange(num_tokens, device=x.device).expand(num_samples, -1)
            tokens = self.embed_patches(x, grid)
            tokens = tokens + self.position_embedding(grid, tokens.device, tokens.dtype)
        tokens = self.patch_embedding.dropout(tokens)
        tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(num_samples, -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens), mask, ids_restore
