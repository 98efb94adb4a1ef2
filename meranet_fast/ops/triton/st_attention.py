"""Triton backend of the fused spatio-temporal attention op (docs/design.md §2.1).

``out = x * sigmoid(conv3d([mean_c x; max_c x], weight, bias, padding=k//2))``

Forward, two kernels:
  1. ``_pool_kernel``: mean / max / first argmax over C; reads x once.
  2. ``_attend_kernel``: the k^3 (2 -> 1) conv of the pooled maps (halo read from the small pooled
     tensor), bias, sigmoid, then ``out = x * attn`` over all channels; reads x, writes out.
Backward, two kernels:
  3. ``_logit_grad_kernel``: ``gA = sum_c g * x`` and ``gL = gA * A * (1 - A)``; reads g and x.
  4. ``_input_grad_kernel``: ``gP = conv_transpose3d(gL, w)`` from gathered gL taps, the per-block
     partial sums of ``gw`` and ``gb`` from the same taps, then
     ``gx = g * A + gP0 / C + gP1 * [c == argmax]``; reads g, writes gx.
The gw / gb partials are summed in a fixed order afterwards, so the backward is deterministic.

Every kernel is launched on a 1-D grid of ``N * cdiv(T*H*W, BLOCK_S)`` programs, each owning
BLOCK_S flat positions of one sample and looping over the channels in chunks of BLOCK_C.
x, out, grad_out and grad_x are addressed through their strides (contiguous, channels_last_3d or
anything else); the small float32 maps (attn, pooled, gL) and the argmax are contiguous.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from meranet_fast.ops import _fakes
from meranet_fast.ops._autograd import register_st_attention_autograd
from meranet_fast.ops._checks import check_st_attention_inputs as check_common_inputs
from meranet_fast.ops._layout import empty_dense_like
from meranet_fast.ops.triton._register import triton_op

__all__ = [
    "check_st_attention_inputs",
    "st_attention_fwd_triton",
    "st_attention_bwd_triton",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The backward gather kernel writes one gw/gb partial row per program, so its BLOCK_S must not
# change between autotuning candidates (the partial buffer is sized by it): it is fixed here.
_GATHER_BLOCK_S = 64


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def check_st_attention_inputs(x, weight, bias) -> None:
    """The shared checks (meranet_fast/ops/_checks.py), plus the dtypes these kernels take."""
    check_common_inputs(x, weight, bias)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"st_attention (triton): x must be float32, float16 or bfloat16, got {x.dtype}")


def _check_backward_inputs(grad_out, x, weight, attn, pooled, argmax) -> None:
    check_st_attention_inputs(x, weight, None)
    if grad_out.shape != x.shape or not grad_out.is_floating_point():
        raise ValueError(
            f"grad_out must be a floating tensor of x's shape {tuple(x.shape)}, "
            f"got {grad_out.dtype} {tuple(grad_out.shape)}"
        )
    n, _, t, h, w = x.shape
    for name, tensor, shape, dtype in (
        ("attn", attn, (n, 1, t, h, w), torch.float32),
        ("pooled", pooled, (n, 2, t, h, w), torch.float32),
        ("argmax", argmax, (n, t, h, w), torch.int32),
    ):
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"{name} must be {dtype} of shape {list(shape)} (as returned by the forward), "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _program_positions(S, BLOCK_S: tl.constexpr):
    """(program id, sample index, BLOCK_S flat positions, their mask) of this program."""
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(S, BLOCK_S)
    n = pid // blocks
    s = (pid % blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    return pid, n, s, s < S


@triton.jit
def _merge_first_max(v, idx, none, best, best_idx, AXIS: tl.constexpr):
    """The running (max, first index) along AXIS after one more chunk ``v`` of values.

    ``idx``: the indices of v along AXIS (broadcastable to v); masked lanes hold -inf and an index >= ``none``.
    Like torch.amax a NaN is the maximum, and the first NaN wins; of equal maxima the smaller index (a later
    chunk replaces the running max only on a strict '>'). The C++ kernels (csrc/cpu/simd.h ``takes_max``)
    follow the same rule.
    """
    isnan = v != v
    nan_idx = tl.min(tl.where(isnan, idx, none), axis=AXIS)
    clean = tl.where(isnan, float("-inf"), v)
    chunk_max = tl.max(clean, axis=AXIS)
    chunk_idx = tl.min(tl.where(clean == tl.expand_dims(chunk_max, AXIS), idx, none), axis=AXIS)
    chunk_nan = nan_idx < none
    chunk_max = tl.where(chunk_nan, float("nan"), chunk_max)
    chunk_idx = tl.where(chunk_nan, nan_idx, chunk_idx)
    newer = (chunk_nan & (best == best)) | (chunk_max > best)
    return tl.where(newer, chunk_max, best), tl.where(newer, chunk_idx, best_idx)


@triton.jit
def _unflatten(s, H, W):
    """(t, h, w) of flat positions s = (t * H + h) * W + w."""
    w = s % W
    th = s // W
    return th // H, th % H, w


@triton.jit
def _position_offsets(s, H, W, st, sh, sw, POS_DENSE: tl.constexpr):
    """Element offsets of flat positions in a tensor whose T, H, W strides are (st, sh, sw).

    POS_DENSE: the three dims collapse into a single stride sw (contiguous, channels_last_3d), which
    keeps the address arithmetic affine so Triton can vectorise the accesses.
    """
    if POS_DENSE:
        offsets = s * sw
    else:
        t, h, w = _unflatten(s, H, W)
        offsets = t * st + h * sh + w * sw
    return offsets


@triton.jit
def _tap_tile(map_ptr, t, h, w, smask, T, H, W, dt, SIGN: tl.constexpr, K: tl.constexpr, KK: tl.constexpr):
    """[BLOCK_S, KK] fp32 tile of a contiguous [T, H, W] map: column j holds the tap (dt, j // K, j % K)
    read at (t, h, w) + SIGN * (tap - K // 2). Zero outside the map (the conv's zero padding) and for
    the padding columns j >= K * K. SIGN=+1 gives the conv's input taps, SIGN=-1 the transposed conv's.
    """
    j = tl.arange(0, KK)
    tt = t + SIGN * (dt - K // 2)
    hh = h[:, None] + SIGN * (j // K - K // 2)[None, :]
    ww = w[:, None] + SIGN * (j % K - K // 2)[None, :]
    valid = (smask & (tt >= 0) & (tt < T))[:, None] & (j < K * K)[None, :]
    valid = valid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    return tl.load(map_ptr + (tt[:, None] * H + hh) * W + ww, mask=valid, other=0.0)


@triton.jit
def _weight_row(w_ptr, ch, dt, K: tl.constexpr, KK: tl.constexpr):
    """The K*K weights of input map ch at temporal tap dt, zero-padded to KK (w_ptr: fp32 [2, K, K, K])."""
    j = tl.arange(0, KK)
    return tl.load(w_ptr + (ch * K + dt) * K * K + j, mask=j < K * K, other=0.0)


@triton.jit
def _pool_kernel(
    x_ptr, pooled_ptr, argmax_ptr,
    C, S, H, W,
    sxn, sxc, sxt, sxh, sxw,
    POS_DENSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    x_ptrs = x_ptr + n * sxn + _position_offsets(s, H, W, sxt, sxh, sxw, POS_DENSE)[None, :]
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    best = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    best_c = tl.zeros([BLOCK_S], dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & smask[None, :]
        v = tl.load(x_ptrs + c.to(tl.int64)[:, None] * sxc, mask=mask, other=0.0).to(tl.float32)
        total += tl.sum(v, axis=0)
        best, best_c = _merge_first_max(tl.where(mask, v, float("-inf")), c[:, None], C, best, best_c, 0)
    mean_ptrs = pooled_ptr + n * 2 * S + s
    tl.store(mean_ptrs, total / C, mask=smask)
    tl.store(mean_ptrs + S, best, mask=smask)
    tl.store(argmax_ptr + n * S + s, best_c, mask=smask)


@triton.jit
def _attend_kernel(
    x_ptr, out_ptr, pooled_ptr, w_ptr, b_ptr, attn_ptr,
    C, S, T, H, W,
    sxn, sxc, sxt, sxh, sxw,
    son, soc, sot, soh, sow,
    HAS_BIAS: tl.constexpr, K: tl.constexpr, KK: tl.constexpr,
    POS_DENSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    t, h, w = _unflatten(s, H, W)
    # logit = bias + sum over both pooled maps and all k^3 taps (cross-correlation, zero padding).
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

    x_ptrs = x_ptr + n * sxn + _position_offsets(s, H, W, sxt, sxh, sxw, POS_DENSE)[None, :]
    out_ptrs = out_ptr + n * son + _position_offsets(s, H, W, sot, soh, sow, POS_DENSE)[None, :]
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = (c < C)[:, None] & smask[None, :]
        v = tl.load(x_ptrs + c[:, None] * sxc, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptrs + c[:, None] * soc, (v * attn[None, :]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _logit_grad_kernel(
    g_ptr, x_ptr, attn_ptr, glogit_ptr,
    C, S, H, W,
    sgn, sgc, sgt, sgh, sgw,
    sxn, sxc, sxt, sxh, sxw,
    POS_DENSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    g_ptrs = g_ptr + n * sgn + _position_offsets(s, H, W, sgt, sgh, sgw, POS_DENSE)[None, :]
    x_ptrs = x_ptr + n * sxn + _position_offsets(s, H, W, sxt, sxh, sxw, POS_DENSE)[None, :]
    grad_attn = tl.zeros([BLOCK_S], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = (c < C)[:, None] & smask[None, :]
        g = tl.load(g_ptrs + c[:, None] * sgc, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(x_ptrs + c[:, None] * sxc, mask=mask, other=0.0).to(tl.float32)
        grad_attn += tl.sum(g * v, axis=0)
    attn = tl.load(attn_ptr + n * S + s, mask=smask, other=0.0)
    # d sigmoid(L) / dL = A (1 - A)
    tl.store(glogit_ptr + n * S + s, grad_attn * attn * (1.0 - attn), mask=smask)


@triton.jit
def _pooled_map_grads(glogit_map, pooled_map, w_ptr, gw_row, gb_slot, s, smask, S, T, H, W,
                      K: tl.constexpr, KK: tl.constexpr, BLOCK_S: tl.constexpr):
    """Backward of the k^3 conv over the pooled maps for one block of positions ``s`` of one sample.

    Returns (gP_mean, gP_max) at ``s``, and stores this block's partial row of gw (2 k^3 values) at
    ``gw_row`` and its partial sum of gb at ``gb_slot``. With L[p] = sum_o w[o] P[p + o - r], each tap o
    of gL read at q - (o - r) feeds both
      gP[q] = sum_o w[o] gL[q - o + r]      (transposed conv, reduced over the taps)
      gw[o] = sum_q P[q] gL[q - o + r]      (reduced over this block's positions: one partial row)
    """
    t, h, w = _unflatten(s, H, W)
    mean = tl.load(pooled_map + s, mask=smask, other=0.0)
    peak = tl.load(pooled_map + S + s, mask=smask, other=0.0)
    grad_mean = tl.zeros([BLOCK_S], dtype=tl.float32)
    grad_peak = tl.zeros([BLOCK_S], dtype=tl.float32)
    j = tl.arange(0, KK)
    for dt in tl.static_range(K):
        taps = _tap_tile(glogit_map, t, h, w, smask, T, H, W, dt, -1, K, KK)
        grad_mean += tl.sum(taps * _weight_row(w_ptr, 0, dt, K, KK)[None, :], axis=1)
        grad_peak += tl.sum(taps * _weight_row(w_ptr, 1, dt, K, KK)[None, :], axis=1)
        tl.store(gw_row + dt * KK + j, tl.sum(taps * mean[:, None], axis=0))
        tl.store(gw_row + (K + dt) * KK + j, tl.sum(taps * peak[:, None], axis=0))
    tl.store(gb_slot, tl.sum(tl.load(glogit_map + s, mask=smask, other=0.0), axis=0))
    return grad_mean, grad_peak


@triton.jit
def _input_grad_kernel(
    g_ptr, gx_ptr, glogit_ptr, attn_ptr, pooled_ptr, argmax_ptr, w_ptr, gw_part_ptr, gb_part_ptr,
    C, S, T, H, W,
    sgn, sgc, sgt, sgh, sgw,
    sxn, sxc, sxt, sxh, sxw,  # strides of gx (laid out like x)
    K: tl.constexpr, KK: tl.constexpr,
    POS_DENSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, s, smask = _program_positions(S, BLOCK_S)
    grad_mean, grad_peak = _pooled_map_grads(glogit_ptr + n * S, pooled_ptr + n * 2 * S, w_ptr,
                                             gw_part_ptr + pid * (2 * K * KK), gb_part_ptr + pid,
                                             s, smask, S, T, H, W, K, KK, BLOCK_S)

    # gx = g * A + gP_mean / C + gP_max * [c == argmax]
    grad_mean = grad_mean / C
    attn = tl.load(attn_ptr + n * S + s, mask=smask, other=0.0)
    peak_c = tl.load(argmax_ptr + n * S + s, mask=smask, other=-1)
    g_ptrs = g_ptr + n * sgn + _position_offsets(s, H, W, sgt, sgh, sgw, POS_DENSE)[None, :]
    gx_ptrs = gx_ptr + n * sxn + _position_offsets(s, H, W, sxt, sxh, sxw, POS_DENSE)[None, :]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & smask[None, :]
        c64 = c.to(tl.int64)[:, None]
        g = tl.load(g_ptrs + c64 * sgc, mask=mask, other=0.0).to(tl.float32)
        gx = g * attn[None, :] + grad_mean[None, :]
        gx += tl.where(c[:, None] == peak_c[None, :], grad_peak[None, :], 0.0)
        tl.store(gx_ptrs + c64 * sxc, gx.to(gx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Block configurations: autotuned on GPU, a fixed first config otherwise
# --------------------------------------------------------------------------------------------
_STREAM_CONFIGS = [  # kernels 1-3: tiles of [BLOCK_C, BLOCK_S]; the first one is the fixed default
    triton.Config({"BLOCK_S": 128, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_S": 256, "BLOCK_C": 16}, num_warps=8),
    triton.Config({"BLOCK_S": 64, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_S": 32, "BLOCK_C": 64}, num_warps=4),  # channel-contiguous (channels_last_3d)
]
_GATHER_CONFIGS = [  # kernel 4: BLOCK_S is fixed (_GATHER_BLOCK_S)
    triton.Config({"BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_C": 64}, num_warps=8),
]
_KEY = ["C", "S", "H", "W", "sxc", "POS_DENSE"]


def _tunable(kernel, configs, key=_KEY):
    """(autotuned kernel, kernel pinned to configs[0]); a one-config autotuner never benchmarks."""
    return triton.autotune(configs=configs, key=key)(kernel), triton.autotune(configs=configs[:1], key=key)(kernel)


_POOL = _tunable(_pool_kernel, _STREAM_CONFIGS)
_ATTEND = _tunable(_attend_kernel, _STREAM_CONFIGS, key=_KEY + ["K"])
_LOGIT_GRAD = _tunable(_logit_grad_kernel, _STREAM_CONFIGS)
_INPUT_GRAD = _tunable(_input_grad_kernel, _GATHER_CONFIGS, key=_KEY + ["K"])


def autotune_enabled() -> bool:
    """Autotuning is off under the CPU interpreter and when MERANET_TRITON_AUTOTUNE=0."""
    return os.environ.get("TRITON_INTERPRET") != "1" and os.environ.get("MERANET_TRITON_AUTOTUNE", "1") != "0"


def _launch(kernels, n, s, **kwargs):
    tuned, fixed = kernels

    def grid(meta):
        return (n * triton.cdiv(s, meta["BLOCK_S"]),)

    wrap_triton(tuned if autotune_enabled() else fixed)[grid](**kwargs)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------
def _positions_dense(*tensors: torch.Tensor) -> bool:
    """True when, in every tensor, flat position (t*H + h)*W + w sits at that index times the W stride."""
    for tensor in tensors:
        _, _, _, h, w = tensor.shape
        st, sh, sw = tensor.stride()[2:]
        if (h > 1 and sh != w * sw) or (tensor.shape[2] > 1 and st != h * w * sw):
            return False
    return True


@triton_op(
    "meranet::st_attention_fwd_triton",
    "(Tensor x, Tensor weight, Tensor? bias) -> (Tensor out, Tensor attn, Tensor pooled, Tensor argmax)",
)
def st_attention_fwd_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward. Returns (out, attn fp32 [N,1,T,H,W], pooled fp32 [N,2,T,H,W], argmax int32 [N,T,H,W]).

    argmax is the FIRST channel reaching the max (eager ``amax`` instead splits ties evenly in backward).
    """
    check_st_attention_inputs(x, weight, bias)
    out, attn, pooled, argmax = _fakes.st_attention_fwd(x, weight, bias)
    if out.numel() == 0:
        return out, attn, pooled, argmax
    n, c, t, h, w = x.shape
    s = t * h * w
    k = int(weight.shape[-1])  # a constexpr of the kernels: specialise it under symbolic tracing
    w32 = weight.to(torch.float32).contiguous()
    b32 = w32 if bias is None else bias.to(torch.float32)  # unused pointer when there is no bias
    dense = _positions_dense(x, out)
    _launch(
        _POOL, n, s,
        x_ptr=x, pooled_ptr=pooled, argmax_ptr=argmax, C=c, S=s, H=h, W=w,
        sxn=x.stride(0), sxc=x.stride(1), sxt=x.stride(2), sxh=x.stride(3), sxw=x.stride(4),
        POS_DENSE=dense,
    )
    _launch(
        _ATTEND, n, s,
        x_ptr=x, out_ptr=out, pooled_ptr=pooled, w_ptr=w32, b_ptr=b32, attn_ptr=attn,
        C=c, S=s, T=t, H=h, W=w,
        sxn=x.stride(0), sxc=x.stride(1), sxt=x.stride(2), sxh=x.stride(3), sxw=x.stride(4),
        son=out.stride(0), soc=out.stride(1), sot=out.stride(2), soh=out.stride(3), sow=out.stride(4),
        HAS_BIAS=bias is not None, K=k, KK=triton.next_power_of_2(k * k), POS_DENSE=dense,
    )
    return out, attn, pooled, argmax


@st_attention_fwd_triton.register_fake
def _(x, weight, bias):
    check_st_attention_inputs(x, weight, bias)
    return _fakes.st_attention_fwd(x, weight, bias)


@triton_op(
    "meranet::st_attention_bwd_triton",
    "(Tensor grad_out, Tensor x, Tensor weight, Tensor attn, Tensor pooled, Tensor argmax) "
    "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
)
def st_attention_bwd_triton(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, attn: torch.Tensor, pooled: torch.Tensor,
    argmax: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused backward from the forward's saved (attn, pooled, argmax).

    Returns grad_x (x's dtype and layout), grad_weight [1,2,k,k,k] and grad_bias [1] in weight's dtype
    (accumulated in float32; grad_bias is returned even when the forward had no bias).
    """
    _check_backward_inputs(grad_out, x, weight, attn, pooled, argmax)
    grad_x = empty_dense_like(x)
    if grad_x.numel() == 0:
        return grad_x, weight.new_zeros(weight.shape), weight.new_zeros(1)
    n, c, t, h, w = x.shape
    s = t * h * w
    k = int(weight.shape[-1])  # a constexpr of the kernels: specialise it under symbolic tracing
    kk = triton.next_power_of_2(k * k)
    attn, pooled, argmax = attn.contiguous(), pooled.contiguous(), argmax.contiguous()
    w32 = weight.to(torch.float32).contiguous()
    glogit = x.new_empty((n, s), dtype=torch.float32)
    programs = n * triton.cdiv(s, _GATHER_BLOCK_S)
    gw_partial = x.new_empty((programs, 2, k, kk), dtype=torch.float32)
    gb_partial = x.new_empty((programs,), dtype=torch.float32)
    dense = _positions_dense(grad_out, x, grad_x)
    g_strides = dict(zip(("sgn", "sgc", "sgt", "sgh", "sgw"), grad_out.stride()))
    _launch(
        _LOGIT_GRAD, n, s,
        g_ptr=grad_out, x_ptr=x, attn_ptr=attn, glogit_ptr=glogit, C=c, S=s, H=h, W=w,
        sxn=x.stride(0), sxc=x.stride(1), sxt=x.stride(2), sxh=x.stride(3), sxw=x.stride(4),
        POS_DENSE=dense, **g_strides,
    )
    _launch(
        _INPUT_GRAD, n, s,
        g_ptr=grad_out, gx_ptr=grad_x, glogit_ptr=glogit, attn_ptr=attn, pooled_ptr=pooled,
        argmax_ptr=argmax, w_ptr=w32, gw_part_ptr=gw_partial, gb_part_ptr=gb_partial,
        C=c, S=s, T=t, H=h, W=w,
        sxn=grad_x.stride(0), sxc=grad_x.stride(1), sxt=grad_x.stride(2), sxh=grad_x.stride(3),
        sxw=grad_x.stride(4),
        K=k, KK=kk, POS_DENSE=dense, BLOCK_S=_GATHER_BLOCK_S, **g_strides,
    )
    # Fixed-order reductions of the per-program partials: run-to-run deterministic.
    grad_weight = gw_partial[..., : k * k].sum(0).reshape(weight.shape).to(weight.dtype)
    grad_bias = gb_partial.sum(0, keepdim=True).to(weight.dtype)
    return grad_x, grad_weight, grad_bias


@st_attention_bwd_triton.register_fake
def _(grad_out, x, weight, attn, pooled, argmax):
    _check_backward_inputs(grad_out, x, weight, attn, pooled, argmax)
    return _fakes.st_attention_bwd(grad_out, x, weight, attn, pooled, argmax)


register_st_attention_autograd("meranet::st_attention_fwd_triton", torch.ops.meranet.st_attention_bwd_triton)
