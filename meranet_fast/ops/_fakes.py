"""Fake (meta) kernels of every operator: output shapes, dtypes and layouts without computing anything.

torch.compile and ``opcheck`` run them; the C++ operators register them in ``_cpp``, the Triton operators
in their own modules. The small maps are in the accumulation dtype (``_checks.acc_dtype``); every
activation-sized output has the input's dense layout (``_layout.dense_format``).
"""
from __future__ import annotations

import torch

from meranet_fast.ops._checks import acc_dtype
from meranet_fast.ops._layout import empty_dense_like

__all__ = [
    "st_attention_fwd", "st_attention_bwd",
    "ca_pool", "ca_scale", "ca_scale_grad", "ca_input_grad", "channel_attention", "channel_attention_backward",
    "ra_pool", "ra_attend", "ra_attend_bwd", "ra_tail", "ra_tail_backward",
]


def _small(y, *shape, dtype=None):
    return y.new_empty(shape, dtype=acc_dtype(y.dtype) if dtype is None else dtype)


# st_attention (the inputs are checked by the caller: the schemas differ in what they check)
def st_attention_fwd(x, weight, bias):
    n, _, t, h, w = x.shape
    return (empty_dense_like(x), _small(x, n, 1, t, h, w), _small(x, n, 2, t, h, w),
            _small(x, n, t, h, w, dtype=torch.int32))


def st_attention_bwd(grad_out, x, weight, attn, pooled, argmax):
    return empty_dense_like(x), weight.new_empty(weight.shape), weight.new_empty((1,))


# channel attention
def ca_pool(y):
    n, c = y.shape[:2]
    return _small(y, n, c), _small(y, n, c), _small(y, n, c, dtype=torch.int64)


def ca_scale(y, scale):
    return empty_dense_like(y)


def ca_scale_grad(grad, y, attn, grad_pooled, sta_argmax):
    return _small(y, *y.shape[:2])


def ca_input_grad(grad, scale, grad_avg, grad_max, argmax, attn, grad_pooled, sta_argmax):
    return empty_dense_like(grad)


def channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, backend):
    n, c = y.shape[:2]
    return (empty_dense_like(y), _small(y, n, c), _small(y, n, c), _small(y, n, c),
            _small(y, n, c, dtype=torch.int64))


def _network_grads(w_reduce, b_reduce, w_expand, b_expand):
    return (torch.empty_like(w_reduce),
            w_reduce.new_empty(w_reduce.shape[:1], dtype=(w_reduce if b_reduce is None else b_reduce).dtype),
            torch.empty_like(w_expand),
            w_expand.new_empty(w_expand.shape[:1], dtype=(w_expand if b_expand is None else b_expand).dtype))


def channel_attention_backward(grad_out, grad_a, grad_avg, grad_max, y, w_reduce, b_reduce, w_expand,
                               b_expand, a, avg, mx, argmax, backend):
    return (empty_dense_like(y), *_network_grads(w_reduce, b_reduce, w_expand, b_expand))


# ra_tail
def ra_pool(y, scale):
    n, _, t, h, w = y.shape
    return _small(y, n, 2, t, h, w), _small(y, n, t, h, w, dtype=torch.int32)


def ra_attend(y, shortcut, scale, pooled, weight, bias):
    n, _, t, h, w = y.shape
    return empty_dense_like(y), _small(y, n, 1, t, h, w)


def ra_attend_bwd(grad_out, out, y, scale, attn, pooled, weight):
    n, _, t, h, w = y.shape
    return empty_dense_like(y), _small(y, n, 2, t, h, w), weight.new_empty(weight.shape), weight.new_empty(1)


def ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias, backend):
    n, c, t, h, w = y.shape
    return (empty_dense_like(y), _small(y, n, c), _small(y, n, 1, t, h, w), _small(y, n, 2, t, h, w),
            _small(y, n, t, h, w, dtype=torch.int32), _small(y, n, c), _small(y, n, c),
            _small(y, n, c, dtype=torch.int64))


def ra_tail_backward(grad_out, out, y, w_reduce, b_reduce, w_expand, b_expand, st_weight, a, attn, pooled,
                     sta_argmax, avg, mx, ca_argmax, backend):
    return (empty_dense_like(y), empty_dense_like(y), *_network_grads(w_reduce, b_reduce, w_expand, b_expand),
            torch.empty_like(st_weight), st_weight.new_empty(1))
