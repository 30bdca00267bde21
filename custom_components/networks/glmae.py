"""GL-MAE student network and its EMA teacher."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

import torch
import torch.nn as nn

from custom_components.networks.decoder import MAEDecoder
from custom_components.networks.heads import DINOHead, MLPHead
from custom_components.networks.vit import MaskedViTEncoder

__all__ = ["GLMAE", "EMATeacher", "CONSISTENCY_FORMS"]

CONSISTENCY_FORMS = ("dino", "byol")


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
    ) -> None:
        super().__init__()
        if consistency not in CONSISTENCY_FORMS:
            raise ValueError(f"consistency must be one of {CONSISTENCY_FORMS}, got {consistency!r}.")
        self.consistency = consistency
        self.encoder = MaskedViTEncoder(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, qkv_bias,
            use_flash_attention=use_flash_attention,
        )
        self.decoder = MAEDecoder(
            hidden_size, patch_size, in_channels, decoder_hidden_size, decoder_num_layers, decoder_num_heads,
            qkv_bias=qkv_bias, use_flash_attention=use_flash_attention,
        )
        if consistency == "dino":
            self.head = DINOHead(hidden_size, head_out_dim, head_hidden_dim, head_bottleneck_dim)
            self.predictor = nn.Identity()
        else:
            self.head = MLPHead(hidden_size, head_out_dim, head_hidden_dim)
            self.predictor = MLPHead(head_out_dim, head_out_dim, head_hidden_dim)

    def forward_view(self, views: torch.Tensor, mask_ratio: float, embed: bool = True) -> dict[str, torch.Tensor]:
        """Mask, encode, reconstruct and (when ``embed``) project one kind of view ``[B, C, H, W, D]``.

        Returns ``pred [B, N, P³C]``, ``mask [B, N]`` and, when ``embed``, ``embedding [B, head_out_dim]`` (from the
        CLS token).
        """
        latent, mask, ids_restore = self.encoder(views, mask_ratio)
        out = {"pred": self.decoder(latent, ids_restore, self.encoder.token_grid(views.shape[2:])), "mask": mask}
        if embed:
            out["embedding"] = self.predictor(self.head(latent[:, 0]))
        return out

    def forward(self, global_views: torch.Tensor | None, local_views: torch.Tensor | None,
                mask_ratio: float = 0.75, embed: Collection[str] = ("global", "local")) -> dict[str, torch.Tensor]:
        """Student pass over masked global and local views; either may be None (ablations without that kind).

        ``embed`` names the kinds whose CLS token goes through the projection head (the kinds a consistency term
        uses); the others skip the head.

        Returns keys ``{global,local}_{pred,mask}`` and ``{kind}_embedding`` for the kinds given and embedded.
        """
        out: dict[str, torch.Tensor] = {}
        for kind, views in (("global", global_views), ("local", local_views)):
            if views is not None:
                out.update({f"{kind}_{k}": v for k, v in self.forward_view(views, mask_ratio, kind in embed).items()})
        return out


class EMATeacher(nn.Module):
    """Exponential-moving-average copy of the student's encoder and projection head; it never gets gradients.

    The teacher sees intact global views and returns their projected CLS embedding, the anchor of both
    consistency terms. ``update`` moves it towards the student: ``t = m * t + (1 - m) * s``.

    Args:
        student: the ``GLMAE`` network (unwrapped, or wrapped in DDP: ``.module`` is used).
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        student = getattr(student, "module", student)
        self.encoder = copy.deepcopy(student.encoder)
        self.head = copy.deepcopy(student.head)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        """The teacher always stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """``views: [B, C, H, W, D]`` intact -> ``[B, head_out_dim]`` embeddings."""
        latent, _, _ = self.encoder(views, 0.0)
        return self.head(latent[:, 0])

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
