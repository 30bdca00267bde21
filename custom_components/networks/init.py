"""Weight initialisation of the GL-MAE student, as in MAE (encoder, decoder) and DINO (projection head)."""

from __future__ import annotations

import torch.nn as nn
from torch.nn.utils import parametrize

__all__ = ["WEIGHT_INITS", "mae_init_"]

WEIGHT_INITS = ("mae", "monai")


def mae_init_(network: nn.Module) -> None:
    """Initialise ``network`` in place the way MAE and DINO do.

    - every ``nn.Linear`` and the patch-embedding convolution (a linear map on flattened patches): xavier-uniform
      weights, zero biases (MAE ``_init_weights``; PyTorch's default is a 3× narrower kaiming-uniform);
    - ``nn.LayerNorm``: weight 1, bias 0;
    - parameters named ``cls_token`` or ``mask_token``: truncated normal, std 0.02;
    - the linear layers of a ``head`` (DINO's projection head): truncated normal, std 0.02, zero biases; its
      weight-normalised last layer keeps its own initialisation.

    Fixed (``requires_grad=False``) position embeddings are not touched.
    """
    for name, module in network.named_modules():
        if parametrize.is_parametrized(module):
            continue  # the weight-normalised prototypes of the DINO head
        if isinstance(module, nn.Linear):
            if name.split(".")[0] == "head":
                nn.init.trunc_normal_(module.weight, std=0.02)
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv3d) and name.endswith("patch_embeddings"):
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for name, param in network.named_parameters():
        if name.split(".")[-1] in ("cls_token", "mask_token"):
            nn.init.trunc_normal_(param, std=0.02)
