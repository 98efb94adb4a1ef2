"""float64 end to end (docs/design.md §5): for float64 inputs every backend that takes float64 keeps the
saved maps and every accumulation in float64, so values and gradients match a float64 eager reference to
1e-10 relative; the backends that refuse float64 refuse it with an error naming the dtype and the
backends that take it, and ``"auto"`` skips them.
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp

from meranet_fast.ops import backends, channel_attention, ra_tail, st_attention
from meranet_fast.ops._checks import NO_FLOAT64, acc_dtype
from meranet_fast.ops.backends import auto_backend
from meranet_fast.ops.reference import channel_attention_reference, ra_tail_reference, st_attention_reference

try:
    import triton  # noqa: F401

    TRITON_IMPORTS, TRITON_IMPORT_ERROR = True, None
except ImportError as exc:
    TRITON_IMPORTS, TRITON_IMPORT_ERROR = False, exc

#: The float64 rule of the issue: gradients within 1e-10 of the float64 reference, relative to its largest.
RTOL = 1e-10

# Shapes with C large enough for the float32 rounding of a saved map to show (~1e-7) if it came back.
SHAPES = [(2, 37, 3, 6, 7), (1, 5, 2, 9, 4)]


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d) if layout == "channels_last_3d" else t


def _st_inputs(shape, k, layout):
    x = _layout(torch.randn(shape, dtype=torch.float64), layout)
    w = torch.randn(1, 2, k, k, k, dtype=torch.float64)
    b = torch.randn(1, dtype=torch.float64)
    return x, w, b


def _ca_weights(c):
    hidden = max(1, c // 4)
    return (torch.randn(hidden, c, dtype=torch.float64) / c ** 0.5, torch.randn(hidden, dtype=torch.float64),
            torch.randn(c, hidden, dtype=torch.float64) / hidden ** 0.5, torch.randn(c, dtype=torch.float64))


def _compare(fn, ref_fn, inputs):
    """Values and gradients of every input: fn vs ref_fn, both float64, at RTOL relative."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out, ref = fn(*leaves), ref_fn(*ref_leaves)
    assert out.dtype == torch.float64
    assert _rel_err(out, ref) <= RTOL
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, g)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        assert got.dtype == torch.float64, f"gradient {i} is {got.dtype}"
        err = _rel_err(got, want)
        assert err <= RTOL, f"gradient {i}: relative error {err:.3g} > {RTOL}"


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_st_attention_float64_gradients(shape, k, layout):
    _compare(lambda x, w, b: st_attention(x, w, b, backend="cpp"),
             lambda x, w, b: st_attention_reference(x, w, b)[0], _st_inputs(shape, k, layout))


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_channel_attention_float64_gradients(shape, layout):
    y = _layout(torch.randn(shape, dtype=torch.float64), layout)
    _compare(lambda *a: channel_attention(*a, backend="cpp"),
             lambda *a: channel_attention_reference(*a)[0], (y, *_ca_weights(shape[1])))


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_ra_tail_float64_gradients(shape, layout):
    y = _layout(torch.randn(shape, dtype=torch.float64), layout)
    shortcut = _layout(torch.randn(shape, dtype=torch.float64), layout)
    _, w, b = _st_inputs(shape, 3, layout)
    _compare(lambda *a: ra_tail(*a, backend="cpp"), ra_tail_reference,
             (y, shortcut, *_ca_weights(shape[1]), w, b))


@needs_cpp
def test_saved_maps_are_in_the_accumulation_dtype():
    """The by-products the backward starts from: float64 for float64 inputs, float32 for the rest."""
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(1, 4, 2, 3, 3, dtype=dtype)
        w = torch.randn(1, 2, 3, 3, 3, dtype=dtype)
        _, attn, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, w, None)
        assert (attn.dtype, pooled.dtype, argmax.dtype) == (acc_dtype(dtype), acc_dtype(dtype), torch.int32)
        y_ca = torch.ops.meranet.channel_attention(x, *(t.to(dtype) for t in _ca_weights(4)), "cpp")
        assert [t.dtype for t in y_ca[1:4]] == [acc_dtype(dtype)] * 3
        # The fake kernels (torch.compile, meta tensors) say the same.
        fake = torch.ops.meranet.st_attention_fwd(x.to("meta"), w.to("meta"), None)
        assert (fake[1].dtype, fake[2].dtype) == (acc_dtype(dtype), acc_dtype(dtype))


@needs_cpp
def test_float64_backward_refuses_float32_maps():
    """The backward checks the saved maps' dtype: float32 maps with float64 x are a caller error."""
    x = torch.randn(1, 3, 2, 3, 3, dtype=torch.float64)
    w = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    _, attn, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, w, None)
    with pytest.raises(RuntimeError, match=r"attn must be Double \[N, 1, T, H, W\]"):
        torch.ops.meranet.st_attention_bwd(torch.ones_like(x), x, w, attn.float(), pooled, argmax)


# --------------------------------------------------------------------------------------------------
# Backends that refuse float64: a clear error, and "auto" passes them over
# --------------------------------------------------------------------------------------------------
def _call(op, backend, dtype=torch.float64, device="cpu"):
    x = torch.randn(1, 4, 2, 3, 3, dtype=dtype, device=device)
    w = torch.randn(1, 2, 3, 3, 3, dtype=dtype, device=device)
    ca = [t.to(device=device, dtype=dtype) for t in _ca_weights(4)]
    if op == "st_attention":
        return st_attention(x, w, None, backend=backend)
    if op == "channel_attention":
        return channel_attention(x, *ca, backend=backend)
    return ra_tail(x, x.clone(), *ca, w, None, backend=backend)


@pytest.mark.parametrize("op, backend", [(op, b) for op, refusing in NO_FLOAT64.items() for b in refusing])
def test_backends_without_float64_refuse_it_by_name(op, backend):
    # meta tensors: every compiled backend can be asked for here, GPU or not.
    with pytest.raises(TypeError, match=rf"{op}: backend '{backend}' does not take torch.float64 inputs: "
                                        r"its kernels compute in float32 and refuse float64 \(float64 runs on "):
        _call(op, backend, device="meta")


@pytest.mark.parametrize("op", ["st_attention", "channel_attention", "ra_tail"])
def test_auto_skips_backends_without_float64(op, monkeypatch):
    """What "auto" picks on a CUDA device when every backend could run there: the first that takes the dtype."""
    monkeypatch.setattr(backends, "backend_status", lambda backend, device, op: (True, "assumed for the test"))
    cuda = torch.device("cuda")
    assert auto_backend(cuda, torch.float64, op) == ("eager" if op == "st_attention" else "cuda")
    assert auto_backend(cuda, torch.float32, op) == "triton"


@pytest.mark.triton
@pytest.mark.skipif(not TRITON_IMPORTS, reason=f"triton cannot be imported: {TRITON_IMPORT_ERROR}")
@pytest.mark.parametrize("op", ["st_attention", "channel_attention", "ra_tail"])
def test_triton_kernels_refuse_float64(op):
    """The table NO_FLOAT64 matches what the Triton kernels' own checks do."""
    from meranet_fast.ops.triton import channel_attention as tri_ca
    from meranet_fast.ops.triton import st_attention as tri_st

    x = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    if op == "st_attention":
        with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16, got torch.float64"):
            tri_st.check_st_attention_inputs(x, torch.randn(1, 2, 3, 3, 3, dtype=torch.float64), None)
    else:
        with pytest.raises(TypeError, match="must be float32, float16 or bfloat16 for the Triton backend"):
            tri_ca.check_activation(op, "y", x)
