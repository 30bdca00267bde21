"""Which reduced precision a device runs natively."""

from __future__ import annotations

import torch

__all__ = ["cuda_amp", "native_bf16"]


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 at native speed: a CUDA device with bf16, or a CPU with AVX512-BF16 / AMX
    (oneDNN's own check). Elsewhere bf16 autocast is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a private oneDNN query; absent means unknown, so not native
            return False
    return False


def cuda_amp(amp: bool, device: torch.device | str) -> bool:
    """The ``amp`` to give MONAI's trainers and evaluators: ``amp`` on a CUDA device, False elsewhere.

    MONAI's engines autocast with CUDA's fp16 only; on a CPU they would just warn that CUDA is missing (twice, plus
    two GradScaler warnings) and run in fp32. CPU mixed precision comes from this package's inferers
    (``CPUAutocastSimpleInferer`` / ``CPUAutocastSlidingWindowInferer``), which take ``amp`` itself.
    """
    return bool(amp) and torch.device(device).type == "cuda"
