"""GL-MAE student network and its EMA teacher."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

import torch
import torch.nn as nn

from custom_components.networks.decoder import MAEDecoder
from custom_components.networks.heads import DINOHead, MLPHead
from custom_components.networks.init import WEIGHT_INITS, mae_init_
from custom_components.networks.vit import MaskedViTEncoder

__all__ = ["GLMAE", "EMATeacher", "CONSISTENCY_FORMS", "EMBEDDINGS"]

CONSISTENCY_FORMS = ("dino", "byol")
EMBEDDINGS = ("cls", "mean")


def pool_tokens(latent: torch.Tensor, embedding: str) -> torch.Tensor:
    """The view's feature ``[B, D]`` from encoder tokens ``[B, 1 + N, D]``: the CLS token, or the mean of the others."""
    return latent[:, 0] if embedding == "cls" else latent[:, 1:].mean(dim=1)


def project(head: nn.Module, features: torch.Tensor, fp32: bool) -> torch.Tensor:
    """``head(features)``; with ``fp32`` outside autocast, in float32 (the logits are divided by small
    temperatures, where bf16's 8-bit mantissa would blur the teacher's distribution)."""
    if not fp32:
        return head(features)
    with torch.autocast(device_type=features.device.type, enabled=False):
        return head(features.float())


class GLMAE(nn.Module):
    """The GL-MAE student: masked ViT encoder, one shared MAE decoder, projection head (and predictor for BYOL).

    All views of a kind go through the encoder in one batched pass: global views ``[B_g, C, G, G, G]`` and local
    views ``[B_l, C, L, L, L]`` (``B_g = batch * num_global_views``; ``B_l = batch * num_local_views``).

    Args:
        in_channels: image channels.
        img_size: reference view size stored with the encoder (the fine-tuning ROI).
        patch_size: patch edge (16).
        hidden_size, mlp_dim, num_layers, num_heads, qkv_bias: encoder size (ViT-B/16 by default).
        decoder_hidden_size, decoder_num_layers, decoder_num_heads: shared MAE decoder size (512, 8, 16).
        consistency: ``"dino"`` (DINO head to ``head_out_dim`` logits) or ``"byol"`` (MLP projector to
            ``head_out_dim`` plus a predictor on the student).
        head_out_dim, head_hidden_dim, head_bottleneck_dim: projection head sizes.
        use_flash_attention: use ``scaled_dot_product_attention`` in every block.
        embedding: what the projection head sees: ``"cls"`` (the CLS token, as in the GL-MAE figure) or ``"mean"``
            (the mean of the visible patch tokens, as the author's classification branch pools).
        weight_init: ``"mae"`` (xavier-uniform linear layers and patch embedding, truncated-normal CLS and mask
            tokens, DINO's truncated-normal head; see ``mae_init_``) or ``"monai"`` (the blocks' own defaults).
        drop_path_rate: stochastic depth of the student encoder (the EMA teacher runs without it).
        head_fp32: run the projection head in float32 under autocast.
        head_batch_norm: batch-normalised hidden layers in the DINO head (DINO's ``use_bn_in_head``); the EMA
            teacher's head then normalises each batch by its own statistics. Under DistributedDataParallel on GPUs,
            ``custom_components.distributed.sync_batch_norm`` makes the statistics span every rank's batch.

    Example::

        net = GLMAE(img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4,
                    decoder_hidden_size=48, decoder_num_layers=1, decoder_num_heads=4, head_out_dim=64)
        out = net(torch.rand(4, 1, 64, 64, 64), torch.rand(8, 1, 32, 32, 32), mask_ratio=0.75)
        # out["global_pred"]: [4, 64, 4096], out["local_embedding"]: [8, 64]
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
        decoder_hidden_size: int = 512,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 16,
        consistency: str = "dino",
        head_out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        use_flash_attention: bool = True,
        embedding: str = "cls",
        weight_init: str = "mae",
        drop_path_rate: float = 0.0,
        head_fp32: bool = True,
        head_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        for name, value, choices in (("consistency", consistency, CONSISTENCY_FORMS),
                                     ("embedding", embedding, EMBEDDINGS), ("weight_init", weight_init, WEIGHT_INITS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
        self.consistency = consistency
        self.embedding = embedding
        self.head_fp32 = head_fp32
        self.encoder = MaskedViTEncoder(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, qkv_bias,
            use_flash_attention=use_flash_attention, drop_path_rate=drop_path_rate,
        )
        self.decoder = MAEDecoder(
            hidden_size, patch_size, in_channels, decoder_hidden_size, decoder_num_layers, decoder_num_heads,
            qkv_bias=qkv_bias, use_flash_attention=use_flash_attention,
        )
        if head_batch_norm and consistency != "dino":
            raise ValueError("head_batch_norm is an option of the DINO head (consistency 'dino'), not of 'byol'.")
        if consistency == "dino":
            self.head = DINOHead(hidden_size, head_out_dim, head_hidden_dim, head_bottleneck_dim,
                                 batch_norm=head_batch_norm)
            self.predictor = nn.Identity()
        else:
            self.head = MLPHead(hidden_size, head_out_dim, head_hidden_dim)
            self.predictor = MLPHead(head_out_dim, head_out_dim, head_hidden_dim)
        if weight_init == "mae":
            mae_init_(self)

    def forward_view(self, views: torch.Tensor, mask_ratio: float, embed: bool = True) -> dict[str, torch.Tensor]:
        """Mask, encode, reconstruct and (when ``embed``) project one kind of view ``[B, C, H, W, D]``.

        Returns ``pred [B, N, P³C]``, ``mask [B, N]``, ``features [B, hidden_size]`` (the pooled token the head sees,
        see ``embedding``) and, when ``embed``, ``embedding [B, head_out_dim]``.
        """
        latent, mask, ids_restore = self.encoder(views, mask_ratio)
        features = pool_tokens(latent, self.embedding)
        out = {"pred": self.decoder(latent, ids_restore, self.encoder.token_grid(views.shape[2:])), "mask": mask,
               "features": features}
        if embed:
            out["embedding"] = project(nn.Sequential(self.head, self.predictor), features, self.head_fp32)
        return out

    def forward(self, global_views: torch.Tensor | None, local_views: torch.Tensor | None,
                mask_ratio: float = 0.75, embed: Collection[str] = ("global", "local")) -> dict[str, torch.Tensor]:
        """Student pass over masked global and local views; either may be None (ablations without that kind).

        ``embed`` names the kinds whose CLS token goes through the projection head (the kinds a consistency term
        uses); the others skip the head.

        Returns keys ``{global,local}_{pred,mask,features}`` and ``{kind}_embedding`` for the kinds given and
        embedded.
        """
        out: dict[str, torch.Tensor] = {}
        for kind, views in (("global", global_views), ("local", local_views)):
            if views is not None:
                out.update({f"{kind}_{k}": v for k, v in self.forward_view(views, mask_ratio, kind in embed).items()})
        return out


class EMATeacher(nn.Module):
    """Exponential-moving-average copy of the student's encoder and projection head; it never gets gradients.

    The teacher sees intact global views and returns their projected embedding (of the token the student's
    ``embedding`` names), the anchor of both consistency terms. ``update`` moves it towards the student:
    ``t = m * t + (1 - m) * s``.

    Args:
        student: the ``GLMAE`` network (unwrapped, or wrapped in DDP: ``.module`` is used).
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        student = getattr(student, "module", student)
        self.encoder = copy.deepcopy(student.encoder)
        self.head = copy.deepcopy(student.head)
        self.embedding = student.embedding
        self.head_fp32 = student.head_fp32
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        """The teacher always stays in eval mode, except its head's batch norms (``head_batch_norm``), which
        standardise each batch by its own statistics, as DINO's teacher does (it has no running statistics of its
        own worth using: its parameters are an average of the student's)."""
        super().train(False)
        for module in self.head.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(True)
        return self

    @torch.no_grad()
    def forward(self, views: torch.Tensor, return_features: bool = False):
        """``views: [B, C, H, W, D]`` intact -> ``[B, head_out_dim]`` embeddings; with ``return_features``, the pair
        ``(features [B, hidden_size], embeddings)``."""
        latent, _, _ = self.encoder(views, 0.0)
        features = pool_tokens(latent, self.embedding)
        embedding = project(self.head, features, self.head_fp32)
        return (features, embedding) if return_features else embedding

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """EMA step over the encoder and head parameters (buffers are copied)."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}.")
        student = getattr(student, "module", student)
        for name in ("encoder", "head"):
            teacher_params = list(getattr(self, name).parameters())
            student_params = [p.detach() for p in getattr(student, name).parameters()]
            torch._foreach_mul_(teacher_params, momentum)
            torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
