"""Fused channel attention (paper eq. 6-10) as the operator ``torch.ops.meranet.channel_attention``.

``a = sigmoid(We relu(Ws avg_thw y) + We relu(Ws max_thw y))``, ``out = y * a[n, c]``.

Schedule (kernel-level ops of a backend: ``ca_*`` in C++ for CPU and CUDA, ``ca_*_triton`` in Triton)::

    forward   ca_pool(y) -> avg, max, argmax_thw        read y                 1 pass
              shared network + sigmoid on [N, C]        (ATen, tiny)
              ca_scale(y, a) -> out                     read y, write out      2 passes
    backward  ca_scale_grad(g, y) -> dL/da              read g, y              2 passes
              network backward on [N, C]                (ATen, by hand, tiny)
              ca_input_grad(g, a, g_avg, g_max, argmax) read g, write gy       2 passes

3 passes over y-sized tensors forward and 4 backward. Eager PyTorch: forward mean, amax, mul =
4 passes; backward about 13 (mul backward: 2 products + a reduction; amax backward: compare mask,
scatter; mean backward: expand; two gradient accumulations of y-sized tensors).

Why the network's backward is written by hand instead of letting autograd see the torch ops between
two kernel ops: the gradient wrt y has three terms (``g * a``, the mean-pool term and the max-pool
term) and two of them are only known after the network's backward. With autograd composing
``pool -> network -> scale`` ops, each op returns its own y-sized gradient and autograd adds them
(+1 y-sized write and +3 passes for the accumulation); inside one operator the three terms are
written once by ``ca_input_grad``. The network is 2 matmuls on ``[2N, C]`` rows, so its backward
costs nothing; both variants of the paper (1x1x1 convs or Linear layers) pass their weights as
2-D matrices (``ChannelAttention3d.shared_weights()``) and biases may be ``None``.

The composition and its autograd are C++ (csrc/channel_attention_op.cpp, shared pieces in
csrc/composition.h): one composition for every backend, whose kernel-level ops it looks up by name
(``meranet::ca_pool`` or ``meranet::ca_pool_triton``), and a call costs one dispatch from Python and
its backward none (a Python ``custom_op`` composition cost 0.2-0.4 ms a call, more than the kernels at
MERANet's deeper layers). So every backend but ``"eager"`` needs ``meranet_fast._C``; this module
holds the public function, the input checks, the backend choice and the fake kernels.

argmax over T*H*W is the FIRST position of the maximum: on exact ties the whole max gradient goes
there (eager ``amax`` splits it evenly between the tied positions).

Small maps and the network run in float32 (float64 for float64 ``y``); weights may have another
floating dtype than ``y`` (autocast: bf16 activations, fp32 parameters) and get gradients in their
own dtype.
"""
from __future__ import annotations

import torch

from meranet_fast import _extension
from meranet_fast.ops._checks import acc_dtype
from meranet_fast.ops.st_attention import auto_backend, resolve_backend as st_resolve_backend
from meranet_fast.ops.reference import channel_attention_reference

__all__ = [
    "BACKENDS",
    "channel_attention",
    "channel_attention_with_map",
    "check_channel_attention_inputs",
    "resolve_backend",
]

#: ``"auto"``: C++ on CPU; on CUDA Triton, then CUDA C++ (``st_attention.AUTO_ORDER``); ``"eager"`` when none
#: can run. ``"eager"``: the reference (``meranet_fast.ops.reference``). ``"cpp"``: the compiled CPU
#: kernels. ``"cuda"``: the compiled CUDA kernels (csrc/cuda/channel_attention_cuda.cu, ra_tail_cuda.cu).
#: ``"triton"``: the Triton kernels (a CUDA device, or CPU tensors under ``TRITON_INTERPRET=1``).
BACKENDS = ("auto", "eager", "cpp", "cuda", "triton")



# --------------------------------------------------------------------------------------------
# Helpers shared with meranet_fast/ops/ra_tail.py (and the Triton kernels)
# --------------------------------------------------------------------------------------------
def dense_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels run in and write: channels_last_3d when x is in it, else contiguous
    (the Python mirror of ``meranet::dense_format`` in csrc/cpu/channel_attention_cpu.cpp)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def resolve_backend(backend: str, device: torch.device, op: str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend (``"eager"``, ``"cpp"``, ``"cuda"`` or ``"triton"``) for ``op`` on tensors of
    ``dtype`` on ``device``.

    Asked of the spatio-temporal attention op layer (``st_attention.resolve_backend``, without its
    ``$MERANET_ST_ATTENTION_BACKEND`` override), so every fused op answers the same way.
    """
    if backend == "auto":
        return auto_backend(device, dtype, op)  # $MERANET_ST_ATTENTION_BACKEND is st_attention's alone
    return st_resolve_backend(backend, device, dtype, op)


def composed_backend(backend: str, device: torch.device, op: str, dtype: torch.dtype | None = None) -> str:
    """:func:`resolve_backend` for the operators composed in C++ (``channel_attention``, ``ra_tail``):
    every backend but ``"eager"`` needs ``meranet_fast._C``, which holds the composition and its
    autograd; for ``"triton"`` the Triton kernel-level ops were registered by ``backend_status``."""
    resolved = resolve_backend(backend, device, op, dtype)
    if resolved == "eager":
        return resolved
    if not _extension.is_loaded():
        if backend == "auto":
            return "eager"
        raise RuntimeError(f"{op}: backend {backend!r} is not available: the operator is composed in "
                           f"meranet_fast._C, which is not available ({_extension.LOAD_ERROR}); "
                           f"{_extension.BUILD_HINT}")
    return resolved


def check_channel_attention_inputs(op: str, y, w_reduce, b_reduce, w_expand, b_expand) -> None:
    """Raise TypeError / ValueError naming the offending argument."""
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
    for name, tensor in (("w_reduce", w_reduce), ("b_reduce", b_reduce), ("w_expand", w_expand),
                         ("b_expand", b_expand)):
        if tensor is None:
            continue
        if not tensor.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {tensor.dtype}")
        if tensor.device != y.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but y is on {y.device}")


# --------------------------------------------------------------------------------------------
# Fake kernels of the C++ kernel-level ops (torch.compile / opcheck)
# --------------------------------------------------------------------------------------------
def _small(y, *shape, dtype=None):
    return y.new_empty(shape, dtype=acc_dtype(y.dtype) if dtype is None else dtype)


def fake_ca_pool(y):
    n, c = y.shape[:2]
    return _small(y, n, c), _small(y, n, c), _small(y, n, c, dtype=torch.int64)


def fake_ca_scale(y, scale):
    return torch.empty_like(y, memory_format=dense_format(y))


def fake_ca_scale_grad(grad, y, attn, grad_pooled, sta_argmax):
    return _small(y, *y.shape[:2])


def fake_ca_input_grad(grad, scale, grad_avg, grad_max, argmax, attn, grad_pooled, sta_argmax):
    return torch.empty_like(grad, memory_format=dense_format(grad))


def fake_channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, backend):
    n, c = y.shape[:2]
    return (torch.empty_like(y, memory_format=dense_format(y)), _small(y, n, c), _small(y, n, c),
            _small(y, n, c), _small(y, n, c, dtype=torch.int64))


def fake_channel_attention_backward(grad_out, grad_a, grad_avg, grad_max, y, w_reduce, b_reduce, w_expand,
                                    b_expand, a, avg, mx, argmax, backend):
    return (torch.empty_like(y, memory_format=dense_format(y)), torch.empty_like(w_reduce),
            w_reduce.new_empty(w_reduce.shape[:1], dtype=(w_reduce if b_reduce is None else b_reduce).dtype),
            torch.empty_like(w_expand),
            w_expand.new_empty(w_expand.shape[:1], dtype=(w_expand if b_expand is None else b_expand).dtype))


# The operator meranet::channel_attention and its backward are composed in C++ with C++ autograd
# (csrc/channel_attention_op.cpp); only their fake kernels live here.
if _extension.is_loaded():
    for _name, _fake in (("ca_pool", fake_ca_pool), ("ca_scale", fake_ca_scale),
                         ("ca_scale_grad", fake_ca_scale_grad), ("ca_input_grad", fake_ca_input_grad),
                         ("channel_attention", fake_channel_attention),
                         ("channel_attention_backward", fake_channel_attention_backward)):
        torch.library.register_fake(f"meranet::{_name}")(_fake)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def channel_attention_with_map(y, w_reduce, b_reduce, w_expand, b_expand, *, backend: str = "auto"):
    """``(out, a)``: fused channel attention and its per-channel weights ``a`` [N, C] (in y's dtype).

    Args:
        y: ``[N, C, T, H, W]`` float32 / float64 / bfloat16 / float16 (any strides; NCTHW and
            channels_last_3d run without a copy, and ``out`` keeps channels_last_3d).
        w_reduce: ``[C/r, C]``; b_reduce: ``[C/r]`` or ``None``.
        w_expand: ``[C, C/r]``; b_expand: ``[C]`` or ``None``.
        backend: one of :data:`BACKENDS`.

    Both outputs are differentiable wrt y and all weights.
    """
    op = "channel_attention"
    check_channel_attention_inputs(op, y, w_reduce, b_reduce, w_expand, b_expand)
    resolved = composed_backend(backend, y.device, op, y.dtype)
    if resolved == "eager":
        return channel_attention_reference(y, w_reduce, b_reduce, w_expand, b_expand)
    out, a, _, _, _ = torch.ops.meranet.channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, resolved)
    return out, a.to(y.dtype)


def channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, *, backend: str = "auto"):
    """Fused channel attention ``y * sigmoid(We relu(Ws avg y) + We relu(Ws max y))``; see
    :func:`channel_attention_with_map`."""
    return channel_attention_with_map(y, w_reduce, b_reduce, w_expand, b_expand, backend=backend)[0]
