"""Input validation of the spatio-temporal attention op, shared by every backend's Python layer.

The wording matches the C++ checks (csrc/st_attention_checks.cpp), so an error reads the same whichever
backend raised it.
"""
from __future__ import annotations

import torch

#: Kernel sizes of the spatio-temporal attention conv (the paper's ablation: 3, 5, 7).
KERNEL_SIZES = (3, 5, 7)


def _shape(t: torch.Tensor) -> list:
    return list(t.shape)


def check_st_attention_inputs(x, weight, bias=None) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the wrong argument; used before every backend."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"st_attention: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"st_attention: weight must be a torch.Tensor, got {type(weight).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"st_attention: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if x.dim() != 5:
        raise ValueError(f"st_attention: x must be a 5-D tensor [N, C, T, H, W], got shape {_shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"st_attention: x must be a floating-point tensor, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"st_attention: x must have at least one channel, got shape {_shape(x)}")
    ws = weight.shape
    if not (weight.dim() == 5 and ws[0] == 1 and ws[1] == 2 and ws[2] == ws[3] == ws[4]):
        raise ValueError(f"st_attention: weight must have shape [1, 2, k, k, k], got {_shape(weight)}")
    if ws[2] not in KERNEL_SIZES:
        raise ValueError(f"st_attention: weight kernel size k must be 3, 5 or 7, got {ws[2]}")
    if weight.dtype != x.dtype:
        raise TypeError(f"st_attention: weight dtype ({weight.dtype}) must match x dtype ({x.dtype})")
    if weight.device != x.device:
        raise ValueError(f"st_attention: weight is on {weight.device} but x is on {x.device}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != 1:
            raise ValueError(f"st_attention: bias must have shape [1], got {_shape(bias)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"st_attention: bias dtype ({bias.dtype}) must match x dtype ({x.dtype})")
        if bias.device != x.device:
            raise ValueError(f"st_attention: bias is on {bias.device} but x is on {x.device}")
