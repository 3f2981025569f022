"""Which device and dtype a model runs on: one rule for generation, scoring and training alike.

torch is imported when a helper is called, not when this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(device: str | None = None) -> str:
    """The device asked for, else the GPU when there is one, else the CPU."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype: str | None = None) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 elsewhere (CPU matmuls in bf16 are slow and imprecise)."""
    import torch

    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
