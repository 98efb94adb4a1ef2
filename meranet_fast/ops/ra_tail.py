"""The fused residual-attention tail ``relu(STA(CA(y)) + shortcut)`` as ``torch.ops.meranet.ra_tail``.

With ``a`` the channel-attention weights ([N, C]), ``u = y * a``, ``P = [mean_c u; max_c u]``,
``A = sigmoid(conv3d(P, st_weight, st_bias, pad=k//2))`` and ``out = relu(u * A + shortcut)``.

Schedule (kernel-level ops of a backend; C++ on CPU and CUDA, Triton with the ``_triton`` suffix)::

    forward   ca_pool(y) -> avg, max, argmax_thw          read y                         1
              shared network + sigmoid -> a [N, C]         (ATen, tiny)
              ra_pool(y, a) -> P [N,2,T,H,W], I (argmax_c) read y                         1
              ra_attend(y, shortcut, a, P, w, b) -> out, A read y, shortcut, write out    3
    backward  ra_attend_bwd(g, out, y, a, A, P, w)         read g, out, y, write gz       4
                -> gz = g [out > 0] (= grad_shortcut), gP, gw, gb   (conv^T on the small maps)
              ca_scale_grad(gz, y, A, gP, I) -> dL/da      read gz, y                     2
              shared-network backward                      (ATen, tiny)
              ca_input_grad(gz, a, g_avg, g_max, argmax_thw, A, gP, I) -> gy
                                                           read gz, write gy              2

5 passes over y-sized tensors forward (the budget of docs/design.md §3: read y twice, read y + shortcut,
write out) and 8 backward (writing gz is free: grad_shortcut must be materialised anyway, and it
replaces reading g and out twice more). Eager PyTorch: about 13 forward (CA: mean, amax, mul;
STA: mean, amax, mul; add; relu) and 30+ backward.

Saved for backward: y, out (the block output, kept alive anyway), and [N, C] / [N, T, H, W] maps;
the shortcut is not saved. Inside the backward the gradient wrt u = y * a is
``gu = gz * A + gP[0] / C + gP[1] [c == I]`` and ``gy = gu * a + g_avg / THW + g_max [thw == argmax]``.
Ties in either max go to the first index (channel / flat position); eager ``amax`` splits them.

Composed in C++ with C++ autograd like ``channel_attention`` (csrc/ra_tail_op.cpp; see that module's
docstring): ``meranet::ra_tail`` returns the saved maps next to ``out``, ``meranet::ra_tail_backward``
is the backward above; both have fake kernels here, so torch.compile and opcheck see two operators.
"""
from __future__ import annotations

import torch

from meranet_fast import _extension
from meranet_fast.ops.channel_attention import (
    _small,
    check_channel_attention_inputs,
    composed_backend,
    dense_format,
    fake_channel_attention_backward,
)
from meranet_fast.ops._checks import KERNEL_SIZES as ST_KERNEL_SIZES, check_argmax_channels
from meranet_fast.ops.reference import ra_tail_reference

__all__ = ["ra_tail", "check_ra_tail_inputs", "ST_KERNEL_SIZES"]



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
    k = st_weight.shape[-1] if st_weight.dim() == 5 else None
    if st_weight.dim() != 5 or tuple(st_weight.shape) != (1, 2, k, k, k) or k not in ST_KERNEL_SIZES:
        raise ValueError(f"{op}: st_weight must have shape [1, 2, k, k, k] with k in {ST_KERNEL_SIZES}, "
                         f"got {tuple(st_weight.shape)}")
    if st_bias is not None:
        if not isinstance(st_bias, torch.Tensor):
            raise TypeError(f"{op}: st_bias must be a torch.Tensor or None, got {type(st_bias).__name__}")
        if tuple(st_bias.shape) != (1,):
            raise ValueError(f"{op}: st_bias must have shape [1], got {tuple(st_bias.shape)}")
    for name, tensor in (("st_weight", st_weight), ("st_bias", st_bias)):
        if tensor is None:
            continue
        if not tensor.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {tensor.dtype}")
        if tensor.device != y.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but y is on {y.device}")


# --------------------------------------------------------------------------------------------
# Fake kernels of the C++ kernel-level ops
# --------------------------------------------------------------------------------------------
def fake_ra_pool(y, scale):
    n, _, t, h, w = y.shape
    return _small(y, n, 2, t, h, w), _small(y, n, t, h, w, dtype=torch.int32)


def fake_ra_attend(y, shortcut, scale, pooled, weight, bias):
    n, _, t, h, w = y.shape
    return torch.empty_like(y, memory_format=dense_format(y)), _small(y, n, 1, t, h, w)


def fake_ra_attend_bwd(grad_out, out, y, scale, attn, pooled, weight):
    n, _, t, h, w = y.shape
    return (torch.empty_like(y, memory_format=dense_format(y)), _small(y, n, 2, t, h, w),
            weight.new_empty(weight.shape), weight.new_empty(1))


def fake_ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias, backend):
    n, c, t, h, w = y.shape
    return (torch.empty_like(y, memory_format=dense_format(y)), _small(y, n, c), _small(y, n, 1, t, h, w),
            _small(y, n, 2, t, h, w), _small(y, n, t, h, w, dtype=torch.int32), _small(y, n, c),
            _small(y, n, c), _small(y, n, c, dtype=torch.int64))


def fake_ra_tail_backward(grad_out, out, y, w_reduce, b_reduce, w_expand, b_expand, st_weight, a, attn, pooled,
                          sta_argmax, avg, mx, ca_argmax, backend):
    dense = dense_format(y)
    return (torch.empty_like(y, memory_format=dense), torch.empty_like(y, memory_format=dense),
            *fake_channel_attention_backward(None, None, None, None, y, w_reduce, b_reduce, w_expand, b_expand,
                                             a, avg, mx, ca_argmax, backend)[1:],
            torch.empty_like(st_weight), st_weight.new_empty(1))


# The operator meranet::ra_tail and its backward are composed in C++ with C++ autograd
# (csrc/ra_tail_op.cpp); only their fake kernels live here.
if _extension.is_loaded():
    for _name, _fake in (("ra_pool", fake_ra_pool), ("ra_attend", fake_ra_attend),
                         ("ra_attend_bwd", fake_ra_attend_bwd), ("ra_tail", fake_ra_tail),
                         ("ra_tail_backward", fake_ra_tail_backward)):
        torch.library.register_fake(f"meranet::{_name}")(_fake)


def ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias, *, backend: str = "auto"):
    """``relu(STA(CA(y)) + shortcut)`` in one operator (paper eq. 10-12), differentiable wrt y, shortcut
    and every weight.

    Args:
        y: ``[N, C, T, H, W]`` float32 / float64 / bfloat16 / float16 (NCTHW or channels_last_3d run
            without a copy; ``out`` has y's layout).
        shortcut: like y (same shape, dtype, device; another layout is copied once into y's).
        w_reduce ``[C/r, C]``, b_reduce ``[C/r]`` or None, w_expand ``[C, C/r]``, b_expand ``[C]`` or None:
            the channel-attention network (``ChannelAttention3d.shared_weights()``).
        st_weight ``[1, 2, k, k, k]`` (k = 3, 5, 7; input channel 0 sees the mean map), st_bias ``[1]``
            or None: the spatio-temporal attention conv.
        backend: ``"auto"``, ``"eager"``, ``"cpp"``, ``"cuda"`` or ``"triton"`` (see ``channel_attention.BACKENDS``).
    """
    op = "ra_tail"
    check_ra_tail_inputs(op, y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)
    resolved = composed_backend(backend, y.device, op, y.dtype)
    if resolved == "eager":
        return ra_tail_reference(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)
    return torch.ops.meranet.ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias,
                                     resolved)[0]

