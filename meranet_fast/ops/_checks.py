"""Input validation of the spatio-temporal attention op, shared by every backend's Python layer, and the
dtype rules of every fused op (accumulation type, which backends take float64).

The wording matches the C++ checks (csrc/st_attention_checks.cpp), so an error reads the same whichever
backend raised it.
"""
from __future__ import annotations

import torch

#: Kernel sizes of the spatio-temporal attention conv (the paper's ablation: 3, 5, 7).
KERNEL_SIZES = (3, 5, 7)


#: The backends whose kernels refuse float64, per op: they compute in float32, so a float64 call could
#: not be float64-accurate (docs/design.md §5). The kernels refuse it themselves (Triton: ``SUPPORTED_DTYPES``
#: of meranet_fast/ops/triton/; CUDA: csrc/cuda/st_attention_cuda.cu); this table lets ``"auto"`` skip them
#: and an explicit request fail before any work.
NO_FLOAT64 = {
    "st_attention": ("cuda", "triton"),
    "channel_attention": ("triton",),
    "ra_tail": ("triton",),
}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of every op and of its saved small maps: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def backend_dtype_status(op: str, backend: str, dtype: torch.dtype | None) -> tuple[bool, str]:
    """``(takes it, why not)``: whether ``backend``'s kernels of ``op`` take activations of ``dtype``."""
    if dtype == torch.float64 and backend in NO_FLOAT64.get(op, ()):
        return False, (f"its kernels compute in float32 and refuse float64 (float64 runs on "
                       f"{_float64_backends(op)})")
    return True, ""


def _float64_backends(op: str) -> str:
    takes = [b for b in ("cpp", "cuda", "eager") if b not in NO_FLOAT64.get(op, ())]
    return ", ".join(f"'{b}'" for b in takes)


#: The largest channel count the int32 channel argmax maps of st_attention and ra_tail can index.
MAX_ARGMAX_CHANNELS = 2**31 - 1


def check_argmax_channels(op: str, name: str, channels: int) -> None:
    """ValueError when ``channels`` do not fit the int32 channel argmax (the C++ twin: meranet_fast.h)."""
    if channels > MAX_ARGMAX_CHANNELS:
        raise ValueError(f"{op}: {name} has {channels} channels, more than the int32 channel argmax can index "
                         f"(at most {MAX_ARGMAX_CHANNELS} = 2^31 - 1)")


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
    check_argmax_channels("st_attention", "x", x.shape[1])
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
