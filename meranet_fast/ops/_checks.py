"""Input validation of every fused op, shared by every backend's Python layer, and the dtype rules of every
fused op (accumulation type, which backends take float64).

The wording matches the C++ checks (csrc/ops/st_attention_checks.cpp), so an error reads the same whichever
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


def st_weight_error(weight) -> str | None:
    """What is wrong with a spatio-temporal attention conv weight's shape (None when it is [1, 2, k, k, k]
    with k in :data:`KERNEL_SIZES`)."""
    if not isinstance(weight, torch.Tensor):
        return f"must be a torch.Tensor, got {type(weight).__name__}"
    k = weight.shape[-1] if weight.dim() == 5 else None
    if weight.dim() != 5 or tuple(weight.shape) != (1, 2, k, k, k) or k not in KERNEL_SIZES:
        return f"must have shape [1, 2, k, k, k] with k in {KERNEL_SIZES}, got {tuple(weight.shape)}"
    return None


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


def check_channel_attention_inputs(op: str, y, w_reduce, b_reduce, w_expand, b_expand) -> None:
    """Raise TypeError / ValueError naming the offending argument (channel_attention, and ra_tail's part)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{op}: y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 5:
        raise ValueError(f"{op}: y must be 5-D [N, C, T, H, W], got shape {tuple(y.shape)}")
    if not y.is_floating_point():
        raise TypeError(f"{op}: y must be a floating-point tensor, got {y.dtype}")
    n, c, t, h, w = y.shape
    if c < 1:
        raise ValueError(f"{op}: y must have at least one channel, got shape {tuple(y.shape)}")
    if n > 0 and t * h * w == 0:
        raise ValueError(f"{op}: y must have T*H*W >= 1 to pool over, got shape {tuple(y.shape)}")
    for name, tensor in (("w_reduce", w_reduce), ("w_expand", w_expand)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D (flatten 1x1x1 conv weights with .flatten(1)), "
                             f"got shape {tuple(tensor.shape)}")
    hidden = w_reduce.shape[0]
    if tuple(w_reduce.shape) != (hidden, c) or hidden < 1:
        raise ValueError(f"{op}: w_reduce must have shape [C/r, C] = [hidden, {c}], got {tuple(w_reduce.shape)}")
    if tuple(w_expand.shape) != (c, hidden):
        raise ValueError(f"{op}: w_expand must have shape [C, C/r] = [{c}, {hidden}], got {tuple(w_expand.shape)}")
    for name, tensor, size in (("b_reduce", b_reduce, hidden), ("b_expand", b_expand, c)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(tensor).__name__}")
        if tuple(tensor.shape) != (size,):
            raise ValueError(f"{op}: {name} must have shape [{size}], got {tuple(tensor.shape)}")
    _check_parameters(op, y, w_reduce=w_reduce, b_reduce=b_reduce, w_expand=w_expand, b_expand=b_expand)


def _check_parameters(op: str, y, **tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not tensor.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {tensor.dtype}")
        if tensor.device != y.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but y is on {y.device}")


def check_ra_tail_inputs(op, y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias) -> None:
    """Raise TypeError / ValueError naming the offending argument."""
    check_channel_attention_inputs(op, y, w_reduce, b_reduce, w_expand, b_expand)
    check_argmax_channels(op, "y", y.shape[1])
    if not isinstance(shortcut, torch.Tensor):
        raise TypeError(f"{op}: shortcut must be a torch.Tensor, got {type(shortcut).__name__}")
    if shortcut.shape != y.shape:
        raise ValueError(f"{op}: shortcut shape {tuple(shortcut.shape)} must equal y shape {tuple(y.shape)}")
    if shortcut.dtype != y.dtype:
        raise TypeError(f"{op}: shortcut dtype {shortcut.dtype} must match y dtype {y.dtype}")
    if shortcut.device != y.device:
        raise ValueError(f"{op}: shortcut is on {shortcut.device} but y is on {y.device}")
    if not isinstance(st_weight, torch.Tensor):
        raise TypeError(f"{op}: st_weight must be a torch.Tensor, got {type(st_weight).__name__}")
    error = st_weight_error(st_weight)
    if error is not None:
        raise ValueError(f"{op}: st_weight {error}")
    if st_bias is not None:
        if not isinstance(st_bias, torch.Tensor):
            raise TypeError(f"{op}: st_bias must be a torch.Tensor or None, got {type(st_bias).__name__}")
        if tuple(st_bias.shape) != (1,):
            raise ValueError(f"{op}: st_bias must have shape [1], got {tuple(st_bias.shape)}")
    _check_parameters(op, y, st_weight=st_weight, st_bias=st_bias)
