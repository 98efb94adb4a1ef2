"""Triton kernels of the channel-attention operators: ``torch.ops.meranet.ca_*_triton``.

Same schemas and semantics as the C++ ops (csrc/ops/channel_attention.h), composed with autograd by
meranet_fast/ops/channel_attention.py and ra_tail.py:

  ca_pool_triton(y)                     -> avg, max, first argmax over T*H*W per (n, c)   read y
  ca_scale_triton(y, scale)             -> y * scale[n, c]                                read y, write out
  ca_scale_grad_triton(g, y, [A, gP, I]) -> sum_thw gu * y per (n, c)                     read g, y
  ca_input_grad_triton(g, scale, g_avg, g_max, argmax, [A, gP, I])
                                        -> gu * scale + g_avg / THW + g_max [thw == argmax]  read g, write gy
with gu = g, or gu = g * A + gP[0] / C + gP[1] [c == I] when a spatio-temporal attention follows.

Activations are made dense first (NCTHW, or channels_last_3d when the input is in it; other strided
inputs are copied once), so every kernel addresses ``n * C * S + c * SC + s * SS`` with one
channel stride SC and one position stride SS. Per-(n, c) reductions run on a grid of
``N * cdiv(C, BLOCK_C)`` programs looping over positions; per-position kernels on
``N * cdiv(S, BLOCK_S)`` programs looping over channels. float32 / float16 / bfloat16 activations,
float32 maps and accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from meranet_fast.ops import _fakes
from meranet_fast.ops._layout import dense_format
from meranet_fast.ops.triton._register import triton_op
from meranet_fast.ops.triton.st_attention import _merge_first_max, _program_positions, autotune_enabled

__all__ = ["check_activation", "dense", "launch", "tunable", "channel_strides"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Host helpers (shared with meranet_fast/ops/triton/ra_tail.py)
# --------------------------------------------------------------------------------------------
def check_activation(op: str, name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{op}: {name} must be 5-D [N, C, T, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16 for the Triton backend, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"{op}: {name} must have at least one channel, got shape {tuple(x.shape)}")


def check_small(op: str, name: str, t, shape, dtype, ref: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be {dtype} of shape {list(shape)}, got {got}")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but the activations are on {ref.device}")


def check_same(op: str, name: str, t, y: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.shape != y.shape or t.dtype != y.dtype or t.device != y.device:
        got = f"{t.dtype} {list(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must match y ({y.dtype} {list(y.shape)} on {y.device}), got {got}")


def dense(x: torch.Tensor, fmt) -> torch.Tensor:
    return x.contiguous(memory_format=fmt)


def channel_strides(x: torch.Tensor) -> tuple[int, int]:
    """(SC, SS): channel and flat-position strides of a dense activation (NCTHW or channels_last_3d)."""
    n, c, t, h, w = x.shape
    if dense_format(x) == torch.channels_last_3d:
        return 1, c
    return t * h * w, 1


def tunable(kernel, configs, key):
    """(autotuned kernel, kernel pinned to configs[0]): autotuning is off under the interpreter."""
    return triton.autotune(configs=configs, key=key)(kernel), triton.autotune(configs=configs[:1], key=key)(kernel)


def launch(pair, grid, **kwargs) -> None:
    tuned, fixed = pair
    wrap_triton(tuned if autotune_enabled() else fixed)[grid](**kwargs)


def _sta_maps(op, g, attn, grad_pooled, sta_argmax):
    given = [m is not None for m in (attn, grad_pooled, sta_argmax)]
    if any(given) and not all(given):
        raise ValueError(f"{op}: attn, grad_pooled and sta_argmax must be given together or not at all")
    if not all(given):
        return False, None, None, None
    n, _, t, h, w = g.shape
    check_small(op, "attn", attn, (n, 1, t, h, w), torch.float32, g)
    check_small(op, "grad_pooled", grad_pooled, (n, 2, t, h, w), torch.float32, g)
    check_small(op, "sta_argmax", sta_argmax, (n, t, h, w), torch.int32, g)
    return True, attn.contiguous(), grad_pooled.contiguous(), sta_argmax.contiguous()


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _channel_block(C, BLOCK_C: tl.constexpr):
    """(sample n, BLOCK_C channels c (int64), their mask) of a per-(n, c) reduction program."""
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(C, BLOCK_C)
    c = (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid // blocks, c, c < C


@triton.jit
def _gu(g, c, n, s, smask, attn_ptr, gp_ptr, idx_ptr, C, S, STA: tl.constexpr):
    """Gradient wrt u = y * a: g itself, or g * A + gP0 / C + gP1 [c == argmax] (tile [BLOCK_C, BLOCK_S])."""
    if STA:
        A = tl.load(attn_ptr + n * S + s, mask=smask, other=0.0)
        m0 = tl.load(gp_ptr + n * 2 * S + s, mask=smask, other=0.0) / C
        m1 = tl.load(gp_ptr + n * 2 * S + S + s, mask=smask, other=0.0)
        idx = tl.load(idx_ptr + n * S + s, mask=smask, other=-1)
        g = g * A[None, :] + m0[None, :] + tl.where(c[:, None] == idx[None, :], m1[None, :], 0.0)
    return g


@triton.jit
def _ca_pool_kernel(y_ptr, avg_ptr, max_ptr, idx_ptr, C, S, SC, SS, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n, c, cmask = _channel_block(C, BLOCK_C)
    rows = y_ptr + n * C * S + c[:, None] * SC
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    best = tl.full([BLOCK_C], float("-inf"), dtype=tl.float32)
    best_s = tl.zeros([BLOCK_C], dtype=tl.int64)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        mask = cmask[:, None] & (s < S)[None, :]
        v = tl.load(rows + s[None, :] * SS, mask=mask, other=0.0).to(tl.float32)
        total += tl.sum(v, axis=1)
        best, best_s = _merge_first_max(tl.where(mask, v, float("-inf")), s[None, :], S, best, best_s, 1)
    tl.store(avg_ptr + n * C + c, total / S, mask=cmask)
    tl.store(max_ptr + n * C + c, best, mask=cmask)
    tl.store(idx_ptr + n * C + c, best_s, mask=cmask)


@triton.jit
def _ca_scale_kernel(y_ptr, a_ptr, out_ptr, C, S, SC, SS, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    base = n * C * S + s[None, :] * SS
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        cmask = c < C
        mask = cmask[:, None] & smask[None, :]
        a = tl.load(a_ptr + n * C + c, mask=cmask, other=0.0)
        off = base + c[:, None] * SC
        v = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + off, (v * a[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ca_scale_grad_kernel(g_ptr, y_ptr, attn_ptr, gp_ptr, idx_ptr, ga_ptr, C, S, SC, SS,
                          STA: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n, c, cmask = _channel_block(C, BLOCK_C)
    rows = n * C * S + c[:, None] * SC
    acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        smask = s < S
        mask = cmask[:, None] & smask[None, :]
        off = rows + s[None, :] * SS
        g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        acc += _gu(g, c, n, s, smask, attn_ptr, gp_ptr, idx_ptr, C, S, STA) * y
    tl.store(ga_ptr + n * C + c, tl.sum(acc, axis=1), mask=cmask)


@triton.jit
def _ca_input_grad_kernel(g_ptr, a_ptr, gavg_ptr, gmax_ptr, am_ptr, attn_ptr, gp_ptr, idx_ptr, gy_ptr,
                          C, S, SC, SS, STA: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    _, n, s, smask = _program_positions(S, BLOCK_S)
    base = n * C * S + s[None, :] * SS
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        cmask = c < C
        mask = cmask[:, None] & smask[None, :]
        off = base + c[:, None] * SC
        g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
        gu = _gu(g, c, n, s, smask, attn_ptr, gp_ptr, idx_ptr, C, S, STA)
        a = tl.load(a_ptr + n * C + c, mask=cmask, other=0.0)
        gavg = tl.load(gavg_ptr + n * C + c, mask=cmask, other=0.0)
        gmax = tl.load(gmax_ptr + n * C + c, mask=cmask, other=0.0)
        am = tl.load(am_ptr + n * C + c, mask=cmask, other=-1)
        gy = gu * a[:, None] + (gavg / S)[:, None] + tl.where(s[None, :] == am[:, None], gmax[:, None], 0.0)
        tl.store(gy_ptr + off, gy.to(gy_ptr.dtype.element_ty), mask=mask)


_REDUCE_CONFIGS = [  # per-(n, c) reductions over positions
    triton.Config({"BLOCK_C": 16, "BLOCK_S": 128}, num_warps=4),
    triton.Config({"BLOCK_C": 32, "BLOCK_S": 128}, num_warps=4),
    triton.Config({"BLOCK_C": 8, "BLOCK_S": 512}, num_warps=8),
    triton.Config({"BLOCK_C": 64, "BLOCK_S": 32}, num_warps=4),  # channels_last_3d
]
STREAM_CONFIGS = [  # per-position streams over channels
    triton.Config({"BLOCK_S": 128, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_S": 256, "BLOCK_C": 16}, num_warps=8),
    triton.Config({"BLOCK_S": 32, "BLOCK_C": 64}, num_warps=4),  # channels_last_3d
]
KEY = ["C", "S", "SC"]
_POOL = tunable(_ca_pool_kernel, _REDUCE_CONFIGS, KEY)
_SCALE = tunable(_ca_scale_kernel, STREAM_CONFIGS, KEY)
_SCALE_GRAD = tunable(_ca_scale_grad_kernel, _REDUCE_CONFIGS, KEY + ["STA"])
_INPUT_GRAD = tunable(_ca_input_grad_kernel, STREAM_CONFIGS, KEY + ["STA"])


def channel_grid(n, c):
    return lambda meta: (n * triton.cdiv(c, meta["BLOCK_C"]),)


def position_grid(n, s):
    return lambda meta: (n * triton.cdiv(s, meta["BLOCK_S"]),)


def _geometry(y):
    n, c, t, h, w = y.shape
    return n, c, t * h * w


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------
@triton_op("meranet::ca_pool_triton", "(Tensor y) -> (Tensor avg, Tensor max, Tensor argmax)")
def ca_pool_triton(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_activation("ca_pool_triton", "y", y)
    y = dense(y, dense_format(y))
    avg, mx, idx = _fakes.ca_pool(y)
    n, c, s = _geometry(y)
    if n == 0:
        return avg, mx, idx
    sc, ss = channel_strides(y)
    launch(_POOL, channel_grid(n, c), y_ptr=y, avg_ptr=avg, max_ptr=mx, idx_ptr=idx, C=c, S=s, SC=sc, SS=ss)
    return avg, mx, idx


@ca_pool_triton.register_fake
def _(y):
    check_activation("ca_pool_triton", "y", y)
    return _fakes.ca_pool(y)


@triton_op("meranet::ca_scale_triton", "(Tensor y, Tensor scale) -> Tensor")
def ca_scale_triton(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    op = "ca_scale_triton"
    check_activation(op, "y", y)
    check_small(op, "scale", scale, y.shape[:2], torch.float32, y)
    y = dense(y, dense_format(y))
    out = _fakes.ca_scale(y, scale)
    n, c, s = _geometry(y)
    if out.numel() == 0:
        return out
    sc, ss = channel_strides(y)
    launch(_SCALE, position_grid(n, s), y_ptr=y, a_ptr=scale.contiguous(), out_ptr=out, C=c, S=s, SC=sc, SS=ss)
    return out


@ca_scale_triton.register_fake
def _(y, scale):
    return _fakes.ca_scale(y, scale)


@triton_op("meranet::ca_scale_grad_triton",
           "(Tensor grad, Tensor y, Tensor? attn, Tensor? grad_pooled, Tensor? sta_argmax) -> Tensor")
def ca_scale_grad_triton(grad: torch.Tensor, y: torch.Tensor, attn: torch.Tensor | None,
                         grad_pooled: torch.Tensor | None, sta_argmax: torch.Tensor | None) -> torch.Tensor:
    op = "ca_scale_grad_triton"
    check_activation(op, "y", y)
    check_same(op, "grad", grad, y)
    fmt = dense_format(y)
    y, grad = dense(y, fmt), dense(grad, fmt)
    sta, attn, grad_pooled, sta_argmax = _sta_maps(op, y, attn, grad_pooled, sta_argmax)
    ga = _fakes.ca_scale_grad(grad, y, attn, grad_pooled, sta_argmax)
    n, c, s = _geometry(y)
    if n == 0:
        return ga
    sc, ss = channel_strides(y)
    launch(_SCALE_GRAD, channel_grid(n, c), g_ptr=grad, y_ptr=y, attn_ptr=attn if sta else ga,
           gp_ptr=grad_pooled if sta else ga, idx_ptr=sta_argmax if sta else ga, ga_ptr=ga,
           C=c, S=s, SC=sc, SS=ss, STA=sta)
    return ga


@ca_scale_grad_triton.register_fake
def _(grad, y, attn, grad_pooled, sta_argmax):
    return _fakes.ca_scale_grad(grad, y, attn, grad_pooled, sta_argmax)


@triton_op("meranet::ca_input_grad_triton",
           "(Tensor grad, Tensor scale, Tensor grad_avg, Tensor grad_max, Tensor argmax, "
           "Tensor? attn, Tensor? grad_pooled, Tensor? sta_argmax) -> Tensor")
def ca_input_grad_triton(grad: torch.Tensor, scale: torch.Tensor, grad_avg: torch.Tensor, grad_max: torch.Tensor,
                         argmax: torch.Tensor, attn: torch.Tensor | None, grad_pooled: torch.Tensor | None,
                         sta_argmax: torch.Tensor | None) -> torch.Tensor:
    op = "ca_input_grad_triton"
    check_activation(op, "grad", grad)
    grad = dense(grad, dense_format(grad))
    n, c, s = _geometry(grad)
    for name, t, dtype in (("scale", scale, torch.float32), ("grad_avg", grad_avg, torch.float32),
                           ("grad_max", grad_max, torch.float32), ("argmax", argmax, torch.int64)):
        check_small(op, name, t, (n, c), dtype, grad)
    sta, attn, grad_pooled, sta_argmax = _sta_maps(op, grad, attn, grad_pooled, sta_argmax)
    gy = _fakes.ca_input_grad(grad, scale, grad_avg, grad_max, argmax, attn, grad_pooled, sta_argmax)
    if gy.numel() == 0:
        return gy
    sc, ss = channel_strides(grad)
    launch(_INPUT_GRAD, position_grid(n, s), g_ptr=grad, a_ptr=scale.contiguous(), gavg_ptr=grad_avg.contiguous(),
           gmax_ptr=grad_max.contiguous(), am_ptr=argmax.contiguous(), attn_ptr=attn if sta else gy,
           gp_ptr=grad_pooled if sta else gy, idx_ptr=sta_argmax if sta else gy, gy_ptr=gy,
           C=c, S=s, SC=sc, SS=ss, STA=sta)
    return gy


@ca_input_grad_triton.register_fake
def _(grad, scale, grad_avg, grad_max, argmax, attn, grad_pooled, sta_argmax):
    return _fakes.ca_input_grad(grad, scale, grad_avg, grad_max, argmax, attn, grad_pooled, sta_argmax)
