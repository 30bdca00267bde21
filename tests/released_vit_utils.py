"""A second implementation of the released GL-MAE encoder (``Finetune/models_3dvit.py`` of the authors' repository:
a timm ``VisionTransformer`` made 3D), written from timm's ``PatchEmbed`` / ``Block`` / ``Attention`` / ``Mlp``
math and sharing no code with ``custom_components``, and the checkpoint layout the authors published
(``checkpoint-1599.pth``: a DINO dict whose ``student`` holds ``module.backbone.*``, with an MAE decoder and a
projection head beside the backbone). The reference test of the loader compares UNETR's ViT against it."""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: LayerNorm epsilon of timm's ViT (``partial(nn.LayerNorm, eps=1e-6)``); MONAI's ViT keeps PyTorch's 1e-5.
RELEASED_EPS = 1e-6


class ReleasedAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        # timm: the 3*dim output rows are (q | k | v), each split into heads of head_dim
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class ReleasedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ReleasedBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=RELEASED_EPS), ReleasedAttention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=RELEASED_EPS), ReleasedMlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReleasedPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch)


class ReleasedViT3D(nn.Module):
    """The released encoder: patch embedding, a CLS token that takes ``pos_embed[:, 0]``, blocks, final norm.

    Its state dict has the released backbone's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``).
    """

    def __init__(self, grid: tuple[int, int, int] = (6, 6, 6), in_chans: int = 1, patch: int = 16, dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072) -> None:
        super().__init__()
        self.grid, self.patch = tuple(grid), patch
        self.patch_embed = ReleasedPatchEmbed(in_chans, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(grid), dim))
        self.blocks = nn.ModuleList(ReleasedBlock(dim, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=RELEASED_EPS)

    def randomise(self, seed: int = 0) -> ReleasedViT3D:
        """Weights at scales where a wrong mapping shows: every norm and bias away from its initial value."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                if name.endswith("weight") and param.ndim == 1:  # LayerNorm scales
                    param.copy_(1 + 0.2 * noise)
                elif name in ("cls_token", "pos_embed"):
                    param.copy_(noise)
                else:
                    param.copy_(noise * (0.1 if param.ndim == 1 else 1 / math.sqrt(param[0].numel())))
        return self

    def position_embeddings(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The patch tokens' position embeddings on ``grid``: the released grid resized trilinearly when it differs."""
        pos = self.pos_embed[:, 1:]
        if tuple(grid) == self.grid:
            return pos
        dim = pos.shape[-1]
        volume = pos.reshape(1, *self.grid, dim).permute(0, 4, 1, 2, 3)
        volume = F.interpolate(volume, size=tuple(grid), mode="trilinear", align_corners=False)
        return volume.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)

    def forward(self, x: torch.Tensor, use_cls: bool = False, final_norm: bool = True) -> torch.Tensor:
        """Tokens ``[B, (1 +) N, dim]`` of ``x``; ``use_cls`` puts the CLS token first, as the released model does.

        An input with ``k`` times the released channels is summed over each group of ``k`` first: a patch
        embedding whose weight is repeated ``k`` times over its input channels computes exactly that.
        """
        channels = self.patch_embed.proj.in_channels
        if x.shape[1] != channels:
            x = x.reshape(x.shape[0], x.shape[1] // channels, channels, *x.shape[2:]).sum(dim=1)
        tokens = self.patch_embed.proj(x)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2) + self.position_embeddings(grid)
        if use_cls:
            tokens = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens) if final_norm else tokens


def released_checkpoint(encoder: ReleasedViT3D) -> dict:
    """``encoder`` in the layout of ``checkpoint-1599.pth``: DINO's dict (``student``, ``teacher``, ``optimizer``,
    ``epoch``, ``args``) of a DistributedDataParallel ``MultiCropWrapper``, whose backbone also carries an MAE decoder
    (``decoder_*``, ``mask_token``) and which holds a projection head (``module.head.*``)."""
    dim = encoder.pos_embed.shape[-1]
    backbone = {f"module.backbone.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.ones(32, dim),
               "decoder_pos_embed": torch.zeros(1, encoder.pos_embed.shape[1], 32),
               "decoder_blocks.0.attn.qkv.weight": torch.ones(96, 32), "decoder_norm.weight": torch.ones(32),
               "decoder_pred.weight": torch.ones(encoder.patch**3, 32)}
    student = backbone | {f"module.backbone.{k}": v for k, v in decoder.items()} | {
        "module.head.mlp.0.weight": torch.ones(64, dim), "module.head.last_layer.weight_g": torch.ones(128, 1)}
    return {"student": student, "teacher": {k: v.clone() for k, v in student.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}, "epoch": 1599,
            "args": argparse.Namespace(arch="vit_base", patch_size=16)}
