"""Triton kernels of the fused residual-attention tail: ``torch.ops.meranet.ra_*_triton``.

Same schemas and semantics as the C++ ops (csrc/ops/ra_tail.h):

  ra_pool_triton(y, scale)            -> pooled [N,2,T,H,W] (mean_c, max_c of u = y * scale), argmax_c
                                                                                  read y
  ra_attend_triton(y, shortcut, scale, pooled, weight, bias)
                                      -> out = relu(u * A + shortcut), A = sigmoid(conv_k(pooled) + b)
                                                                                  read y, shortcut, write out
  ra_attend_bwd_triton(grad_out, out, y, scale, attn, pooled, weight)
                                      -> grad_z = grad_out [out > 0], grad_pooled, grad_weight, grad_bias
        kernel 1: gz, gA = sum_c gz * u, gL = gA A (1 - A)                        read g, out, y, write gz
        kernel 2: gP = conv_transpose(gL, w) and per-program gw / gb partials     (small maps only)

The k^3 conv taps come from the spatio-temporal attention kernels' helpers (_tap_tile, _weight_row);
activations are made dense like in triton/channel_attention.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from meranet_fast.ops import _fakes
from meranet_fast.ops._checks import st_weight_error
from meranet_fast.ops._layout import dense_format
from meranet_fast.ops.triton._register import triton_op
from meranet_fast.ops.triton.channel_attention import (
    KEY,
    STREAM_CONFIGS,
    channel_strides,
    check_activation,
    check_same,
    check_small,
    dense,
    launch,
    position_grid,
    tunable,
)
from meranet_fast.ops.triton.st_attention import (
    _merge_first_max,
    _pooled_map_grads,
    _program_positions,
    _tap_tile,
    _unflatten,
    _weight_row,
)

__all__ = ["ra_pool_triton", "ra_attend_triton", "ra_attend_bwd_triton"]

# The gather kernel writes one gw/gb partial row per program: its BLOCK_S is fixed.
_GATHER_BLOCK_S = 64


def _check_weight(op, weight, y):
    error = st_weight_error(weight)
    if error is not None:
        raise ValueError(f"{op}: weight {error}")
    if not weight.is_floating_point() or weight.device != y.device:
        raise ValueError(f"{op}: weight must be floating point on {y.device}, got {weight.dtype} on {weight.device}")


@triton.jit
def _ra_pool_kernel(y_ptr, a_ptr, pooled_ptr, argmax_ptr, C, S, SC, SS, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    base = y_ptr + n * C * S + s[None, :] * SS
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    best = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    best_c = tl.zeros([BLOCK_S], dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        mask = cmask[:, None] & smask[None, :]
        a = tl.load(a_ptr + n * C + c, mask=cmask, other=0.0)
        u = tl.load(base + c.to(tl.int64)[:, None] * SC, mask=mask, other=0.0).to(tl.float32) * a[:, None]
        total += tl.sum(u, axis=0)
        best, best_c = _merge_first_max(tl.where(mask, u, float("-inf")), c[:, None], C, best, best_c, 0)
    tl.store(pooled_ptr + n * 2 * S + s, total / C, mask=smask)
    tl.store(pooled_ptr + n * 2 * S + S + s, best, mask=smask)
    tl.store(argmax_ptr + n * S + s, best_c, mask=smask)


@triton.jit
def _ra_attend_kernel(y_ptr, sc_ptr, a_ptr, pooled_ptr, w_ptr, b_ptr, out_ptr, attn_ptr,
                      C, S, T, H, W, SC, SS, HAS_BIAS: tl.constexpr, K: tl.constexpr, KK: tl.constexpr,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    t, h, w = _unflatten(s, H, W)
    logit = tl.zeros([BLOCK_S], dtype=tl.float32)
    if HAS_BIAS:
        logit += tl.load(b_ptr)
    for ch in tl.static_range(2):
        pooled_map = pooled_ptr + (n * 2 + ch) * S
        for dt in tl.static_range(K):
            taps = _tap_tile(pooled_map, t, h, w, smask, T, H, W, dt, 1, K, KK)
            logit += tl.sum(taps * _weight_row(w_ptr, ch, dt, K, KK)[None, :], axis=1)
    attn = tl.sigmoid(logit)
    tl.store(attn_ptr + n * S + s, attn, mask=smask)
    base = n * C * S + s[None, :] * SS
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        cmask = c < C
        mask = cmask[:, None] & smask[None, :]
        off = base + c[:, None] * SC
        a = tl.load(a_ptr + n * C + c, mask=cmask, other=0.0)
        y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(sc_ptr + off, mask=mask, other=0.0).to(tl.float32)
        z = y * a[:, None] * attn[None, :] + r
        # relu that keeps NaN, like torch.relu and the C++ kernels
        relu = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
        tl.store(out_ptr + off, relu.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ra_logit_grad_kernel(g_ptr, out_ptr, y_ptr, a_ptr, attn_ptr, gz_ptr, glogit_ptr, C, S, SC, SS,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    base = n * C * S + s[None, :] * SS
    grad_attn = tl.zeros([BLOCK_S], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        cmask = c < C
        mask = cmask[:, None] & smask[None, :]
        off = base + c[:, None] * SC
        g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
        o = tl.load(out_ptr + off, mask=mask, other=0.0).to(tl.float32)
        gz = tl.where(o > 0.0, g, 0.0)
        tl.store(gz_ptr + off, gz.to(gz_ptr.dtype.element_ty), mask=mask)
        a = tl.load(a_ptr + n * C + c, mask=cmask, other=0.0)
        y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        grad_attn += tl.sum(gz * y * a[:, None], axis=0)
    attn = tl.load(attn_ptr + n * S + s, mask=smask, other=0.0)
    tl.store(glogit_ptr + n * S + s, grad_attn * attn * (1.0 - attn), mask=smask)


@triton.jit
def _ra_pooled_grad_kernel(glogit_ptr, pooled_ptr, w_ptr, gpooled_ptr, gw_part_ptr, gb_part_ptr, S, T, H, W,
                           K: tl.constexpr, KK: tl.constexpr, BLOCK_S: tl.constexpr):
    pid, n, s, smask = _program_positions(S, BLOCK_S)
    grad_mean, grad_peak = _pooled_map_grads(glogit_ptr + n * S, pooled_ptr + n * 2 * S, w_ptr,
                                             gw_part_ptr + pid * (2 * K * KK), gb_part_ptr + pid,
                                             s, smask, S, T, H, W, K, KK, BLOCK_S)
    tl.store(gpooled_ptr + n * 2 * S + s, grad_mean, mask=smask)
    tl.store(gpooled_ptr + n * 2 * S + S + s, grad_peak, mask=smask)


_POOL = tunable(_ra_pool_kernel, STREAM_CONFIGS, KEY)
_ATTEND = tunable(_ra_attend_kernel, STREAM_CONFIGS, KEY + ["K"])
_LOGIT_GRAD = tunable(_ra_logit_grad_kernel, STREAM_CONFIGS, KEY)
# Fixed BLOCK_S (an argument) and launch options: a one-config autotuner never benchmarks. It is launched
# through an autotuner like every other kernel because torch 2.11's wrap_triton rejects a bare kernel
# under the interpreter (TRITON_INTERPRET=1).
_POOLED_GRAD = triton.autotune(configs=[triton.Config({}, num_warps=4)], key=[])(_ra_pooled_grad_kernel)


def _geometry(y):
    n, c, t, h, w = y.shape
    return n, c, t * h * w, t, h, w


@triton_op("meranet::ra_pool_triton", "(Tensor y, Tensor scale) -> (Tensor pooled, Tensor argmax)")
def ra_pool_triton(y: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    op = "ra_pool_triton"
    check_activation(op, "y", y)
    check_small(op, "scale", scale, y.shape[:2], torch.float32, y)
    y = dense(y, dense_format(y))
    pooled, argmax = _fakes.ra_pool(y, scale)
    n, c, s, *_ = _geometry(y)
    if y.numel() == 0:
        return pooled, argmax
    sc, ss = channel_strides(y)
    launch(_POOL, position_grid(n, s), y_ptr=y, a_ptr=scale.contiguous(), pooled_ptr=pooled, argmax_ptr=argmax,
           C=c, S=s, SC=sc, SS=ss)
    return pooled, argmax


@ra_pool_triton.register_fake
def _(y, scale):
    return _fakes.ra_pool(y, scale)


@triton_op("meranet::ra_attend_triton",
           "(Tensor y, Tensor shortcut, Tensor scale, Tensor pooled, Tensor weight, Tensor? bias) -> "
           "(Tensor out, Tensor attn)")
def ra_attend_triton(y: torch.Tensor, shortcut: torch.Tensor, scale: torch.Tensor, pooled: torch.Tensor,
                     weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    op = "ra_attend_triton"
    check_activation(op, "y", y)
    check_same(op, "shortcut", shortcut, y)
    n, c, s, t, h, w = _geometry(y)
    check_small(op, "scale", scale, (n, c), torch.float32, y)
    check_small(op, "pooled", pooled, (n, 2, t, h, w), torch.float32, y)
    _check_weight(op, weight, y)
    if bias is not None and (tuple(bias.shape) != (1,) or not bias.is_floating_point()):
        raise ValueError(f"{op}: bias must be a floating tensor of shape [1], got {bias.dtype} {list(bias.shape)}")
    fmt = dense_format(y)
    y, shortcut = dense(y, fmt), dense(shortcut, fmt)
    out, attn = _fakes.ra_attend(y, shortcut, scale, pooled, weight, bias)
    if y.numel() == 0:
        return out, attn
    k = weight.shape[-1]
    w32 = weight.to(torch.float32).contiguous()
    b32 = w32 if bias is None else bias.to(torch.float32)
    sc, ss = channel_strides(y)
    launch(_ATTEND, position_grid(n, s), y_ptr=y, sc_ptr=shortcut, a_ptr=scale.contiguous(),
           pooled_ptr=pooled.contiguous(), w_ptr=w32, b_ptr=b32, out_ptr=out, attn_ptr=attn,
           C=c, S=s, T=t, H=h, W=w, SC=sc, SS=ss, HAS_BIAS=bias is not None, K=k, KK=triton.next_power_of_2(k * k))
    return out, attn


@ra_attend_triton.register_fake
def _(y, shortcut, scale, pooled, weight, bias):
    return _fakes.ra_attend(y, shortcut, scale, pooled, weight, bias)


@triton_op("meranet::ra_attend_bwd_triton",
           "(Tensor grad_out, Tensor out, Tensor y, Tensor scale, Tensor attn, Tensor pooled, "
           "Tensor weight) -> (Tensor grad_z, Tensor grad_pooled, Tensor grad_weight, Tensor grad_bias)")
def ra_attend_bwd_triton(
    grad_out: torch.Tensor, out: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, attn: torch.Tensor,
    pooled: torch.Tensor, weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "ra_attend_bwd_triton"
    check_activation(op, "y", y)
    check_same(op, "grad_out", grad_out, y)
    check_same(op, "out", out, y)
    n, c, s, t, h, w = _geometry(y)
    check_small(op, "scale", scale, (n, c), torch.float32, y)
    check_small(op, "attn", attn, (n, 1, t, h, w), torch.float32, y)
    check_small(op, "pooled", pooled, (n, 2, t, h, w), torch.float32, y)
    _check_weight(op, weight, y)
    fmt = dense_format(y)
    y, grad_out, out = dense(y, fmt), dense(grad_out, fmt), dense(out, fmt)
    grad_z, grad_pooled, _, _ = _fakes.ra_attend_bwd(grad_out, out, y, scale, attn, pooled, weight)
    if y.numel() == 0:
        return grad_z, grad_pooled.zero_(), weight.new_zeros(weight.shape), weight.new_zeros(1)
    k = weight.shape[-1]
    kk = triton.next_power_of_2(k * k)
    glogit = y.new_empty((n, s), dtype=torch.float32)
    sc, ss = channel_strides(y)
    launch(_LOGIT_GRAD, position_grid(n, s), g_ptr=grad_out, out_ptr=out, y_ptr=y, a_ptr=scale.contiguous(),
           attn_ptr=attn.contiguous(), gz_ptr=grad_z, glogit_ptr=glogit, C=c, S=s, SC=sc, SS=ss)
    programs = n * triton.cdiv(s, _GATHER_BLOCK_S)
    gw_partial = y.new_empty((programs, 2, k, kk), dtype=torch.float32)
    gb_partial = y.new_empty((programs,), dtype=torch.float32)
    wrap_triton(_POOLED_GRAD)[(programs,)](
        glogit, pooled.contiguous(), weight.to(torch.float32).contiguous(), grad_pooled, gw_partial, gb_partial,
        s, t, h, w, K=k, KK=kk, BLOCK_S=_GATHER_BLOCK_S)
    # Fixed-order reductions of the per-program partials: deterministic.
    grad_weight = gw_partial.sum(0)[:, :, : k * k].reshape(weight.shape).to(weight.dtype)
    grad_bias = gb_partial.sum(0, keepdim=True).to(weight.dtype)
    return grad_z, grad_pooled, grad_weight, grad_bias


@ra_attend_bwd_triton.register_fake
def _(grad_out, out, y, scale, attn, pooled, weight):
    return _fakes.ra_attend_bwd(grad_out, out, y, scale, attn, pooled, weight)
