"""Projection heads for the global-to-global and global-to-local consistency terms."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "MLPHead"]


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, batch_norm: bool = False) -> nn.Sequential:
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.GELU()] if batch_norm else [nn.GELU()]
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO projection head: MLP to a bottleneck, L2 normalisation, weight-normalised linear layer to K logits.

    Args:
        in_dim: encoder width (the CLS token).
        out_dim: K, the number of prototypes (65536 in DINO).
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the last layer (256).
        num_layers: MLP layers (3).
        norm_last_layer: fix the weight-norm gain of the last layer to 1 (DINO's default, more stable).
        batch_norm: a ``BatchNorm1d`` after each hidden layer (DINO's ``use_bn_in_head``): each hidden unit is
            standardised across the batch, so what every input shares is removed before the l2 normalisation and
            the differences between inputs are what the logits see. Needs at least 2 inputs per batch.

    Shapes: ``x: [B, in_dim] -> [B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True, batch_norm: bool = False) -> None:
        super().__init__()
        if num_layers < 1 or out_dim < 1:
            raise ValueError(f"num_layers and out_dim must be positive, got {num_layers} and {out_dim}.")
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, num_layers, batch_norm)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MLPHead(nn.Module):
    """BYOL-style projector or predictor: ``Linear -> LayerNorm -> GELU -> Linear``.

    LayerNorm replaces BYOL's BatchNorm so the output does not depend on how many views share a batch.
    Shapes: ``x: [B, in_dim] -> [B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: int = 2048) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
