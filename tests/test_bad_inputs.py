"""Bad inputs, one table per public op: the exact exception type and the words its message must contain.

Every public op (``st_attention``, ``channel_attention``, ``ra_tail``) checks its inputs in Python before
any backend runs, so a case raises the same error whatever the backend; each row is run with
``"eager"``, ``"cpp"`` and ``"auto"``. Device mixes use ``meta`` tensors next to CPU ones (no GPU
needed), and sizes that would overflow 32-bit indexing use ``meta`` tensors (nothing is allocated).

Defined behaviours that are not errors are tested at the end: meta tensors through every public op and
backend (shapes, dtypes and layouts only), NaN and inf propagate like the eager reference (docs/design.md
§5), and sizes past 2^31 elements are accepted wherever the index arithmetic is 64-bit.
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp

from meranet_fast.ops import channel_attention, ra_tail, st_attention
from meranet_fast.ops._checks import MAX_ARGMAX_CHANNELS, backend_dtype_status
from meranet_fast.ops.backends import backend_status

# Every row runs on these backends; the checks come first, so the error is the same on each.
BACKENDS = ["eager", pytest.param("cpp", marks=needs_cpp), "auto"]

HUGE_C = MAX_ARGMAX_CHANNELS + 1  # one channel more than the int32 channel argmax can index


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _int_requires_grad():
    """An integer tensor that requires grad: torch itself refuses to make one, before any op sees it."""
    return torch.ones(1, 2, 3, 4, 5, dtype=torch.int64).requires_grad_()


# --------------------------------------------------------------------------------------------------
# st_attention(x, weight, bias)
# --------------------------------------------------------------------------------------------------
def _st(**changes):
    args = dict(x=torch.randn(1, 2, 3, 4, 5), weight=torch.randn(1, 2, 3, 3, 3), bias=torch.randn(1))
    args.update({k: (v() if callable(v) else v) for k, v in changes.items()})
    return args


# case: (changes to the good arguments, exception type, regex its message must match)
ST_ATTENTION_BAD = {
    "x_not_tensor": (dict(x=[[1.0]]), TypeError, r"st_attention: x must be a torch.Tensor, got list"),
    "x_rank_4": (dict(x=lambda: torch.randn(2, 3, 4, 5)), ValueError,
                 r"st_attention: x must be a 5-D tensor \[N, C, T, H, W\], got shape \[2, 3, 4, 5\]"),
    "x_rank_6": (dict(x=lambda: torch.randn(1, 2, 3, 4, 5, 1)), ValueError, r"x must be a 5-D tensor"),
    "x_int64": (dict(x=lambda: torch.ones(1, 2, 3, 4, 5, dtype=torch.int64)), TypeError,
                r"st_attention: x must be a floating-point tensor, got torch.int64"),
    "x_bool": (dict(x=lambda: torch.ones(1, 2, 3, 4, 5, dtype=torch.bool)), TypeError,
               r"x must be a floating-point tensor, got torch.bool"),
    "x_complex": (dict(x=lambda: torch.randn(1, 2, 3, 4, 5, dtype=torch.complex64)), TypeError,
                  r"x must be a floating-point tensor, got torch.complex64"),
    "x_no_channels": (dict(x=lambda: torch.randn(1, 0, 3, 4, 5)), ValueError,
                      r"st_attention: x must have at least one channel, got shape \[1, 0, 3, 4, 5\]"),
    "weight_not_tensor": (dict(weight=0.5), TypeError, r"st_attention: weight must be a torch.Tensor, got float"),
    "weight_one_map": (dict(weight=lambda: torch.randn(1, 1, 3, 3, 3)), ValueError,
                       r"st_attention: weight must have shape \[1, 2, k, k, k\], got \[1, 1, 3, 3, 3\]"),
    "weight_rank_4": (dict(weight=lambda: torch.randn(2, 3, 3, 3)), ValueError,
                      r"weight must have shape \[1, 2, k, k, k\], got \[2, 3, 3, 3\]"),
    "weight_not_cube": (dict(weight=lambda: torch.randn(1, 2, 3, 3, 5)), ValueError,
                        r"weight must have shape \[1, 2, k, k, k\], got \[1, 2, 3, 3, 5\]"),
    "kernel_size_4": (dict(weight=lambda: torch.randn(1, 2, 4, 4, 4)), ValueError,
                      r"st_attention: weight kernel size k must be 3, 5 or 7, got 4"),
    "kernel_size_9": (dict(weight=lambda: torch.randn(1, 2, 9, 9, 9)), ValueError,
                      r"kernel size k must be 3, 5 or 7, got 9"),
    "kernel_size_1": (dict(weight=lambda: torch.randn(1, 2, 1, 1, 1)), ValueError,
                      r"kernel size k must be 3, 5 or 7, got 1"),
    "weight_dtype": (dict(weight=lambda: torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)), TypeError,
                     r"st_attention: weight dtype \(torch.float64\) must match x dtype \(torch.float32\)"),
    "weight_int": (dict(weight=lambda: torch.ones(1, 2, 3, 3, 3, dtype=torch.int32)), TypeError,
                   r"weight dtype \(torch.int32\) must match x dtype \(torch.float32\)"),
    "bias_not_tensor": (dict(bias=0.5), TypeError, r"st_attention: bias must be a torch.Tensor or None, got float"),
    "bias_two": (dict(bias=lambda: torch.randn(2)), ValueError, r"st_attention: bias must have shape \[1\], got \[2\]"),
    "bias_scalar": (dict(bias=lambda: torch.tensor(0.5)), ValueError, r"bias must have shape \[1\], got \[\]"),
    "bias_dtype": (dict(bias=lambda: torch.randn(1, dtype=torch.float16)), TypeError,
                   r"st_attention: bias dtype \(torch.float16\) must match x dtype \(torch.float32\)"),
    "weight_on_meta": (dict(weight=lambda: _meta(1, 2, 3, 3, 3)), ValueError,
                       r"st_attention: weight is on meta but x is on cpu"),
    "bias_on_meta": (dict(bias=lambda: _meta(1)), ValueError, r"st_attention: bias is on meta but x is on cpu"),
    "x_on_meta_weight_on_cpu": (dict(x=lambda: _meta(1, 2, 3, 4, 5)), ValueError,
                                r"st_attention: weight is on cpu but x is on meta"),
    "channels_past_int32_argmax": (
        dict(x=lambda: _meta(1, HUGE_C, 1, 1, 1), weight=lambda: _meta(1, 2, 3, 3, 3), bias=lambda: _meta(1)),
        ValueError, r"st_attention: x has 2147483648 channels, more than the int32 channel argmax can index "
                    r"\(at most 2147483647 = 2\^31 - 1\)"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(ST_ATTENTION_BAD))
def test_st_attention_bad_inputs(case, backend):
    changes, exc, pattern = ST_ATTENTION_BAD[case]
    with pytest.raises(exc, match=pattern):
        st_attention(**_st(**changes), backend=backend)


# --------------------------------------------------------------------------------------------------
# channel_attention(y, w_reduce, b_reduce, w_expand, b_expand)
# --------------------------------------------------------------------------------------------------
def _ca(**changes):
    args = dict(y=torch.randn(1, 8, 2, 3, 3), w_reduce=torch.randn(2, 8), b_reduce=torch.randn(2),
                w_expand=torch.randn(8, 2), b_expand=torch.randn(8))
    args.update({k: (v() if callable(v) else v) for k, v in changes.items()})
    return args


CHANNEL_ATTENTION_BAD = {
    "y_not_tensor": (dict(y=[1.0]), TypeError, r"channel_attention: y must be a torch.Tensor, got list"),
    "y_rank_4": (dict(y=lambda: torch.randn(8, 2, 3, 3)), ValueError,
                 r"channel_attention: y must be 5-D \[N, C, T, H, W\], got shape \(8, 2, 3, 3\)"),
    "y_int64": (dict(y=lambda: torch.ones(1, 8, 2, 3, 3, dtype=torch.int64)), TypeError,
                r"channel_attention: y must be a floating-point tensor, got torch.int64"),
    "y_complex": (dict(y=lambda: torch.randn(1, 8, 2, 3, 3, dtype=torch.complex64)), TypeError,
                  r"y must be a floating-point tensor, got torch.complex64"),
    "y_no_channels": (dict(y=lambda: torch.randn(1, 0, 2, 3, 3)), ValueError,
                      r"channel_attention: y must have at least one channel, got shape \(1, 0, 2, 3, 3\)"),
    "y_no_positions": (dict(y=lambda: torch.randn(1, 8, 0, 3, 3)), ValueError,
                       r"channel_attention: y must have T\*H\*W >= 1 to pool over, got shape \(1, 8, 0, 3, 3\)"),
    "w_reduce_not_tensor": (dict(w_reduce="w"), TypeError,
                            r"channel_attention: w_reduce must be a torch.Tensor, got str"),
    "w_reduce_conv_weight": (dict(w_reduce=lambda: torch.randn(2, 8, 1, 1, 1)), ValueError,
                             r"channel_attention: w_reduce must be 2-D \(flatten 1x1x1 conv weights with "
                             r"\.flatten\(1\)\), got shape \(2, 8, 1, 1, 1\)"),
    "w_reduce_columns": (dict(w_reduce=lambda: torch.randn(2, 7)), ValueError,
                         r"channel_attention: w_reduce must have shape \[C/r, C\] = \[hidden, 8\], got \(2, 7\)"),
    "w_reduce_no_hidden": (dict(w_reduce=lambda: torch.randn(0, 8), w_expand=lambda: torch.randn(8, 0)), ValueError,
                           r"w_reduce must have shape \[C/r, C\] = \[hidden, 8\], got \(0, 8\)"),
    "w_expand_not_tensor": (dict(w_expand="w"), TypeError,
                            r"channel_attention: w_expand must be a torch.Tensor, got str"),
    "w_expand_shape": (dict(w_expand=lambda: torch.randn(8, 3)), ValueError,
                       r"channel_attention: w_expand must have shape \[C, C/r\] = \[8, 2\], got \(8, 3\)"),
    "b_reduce_shape": (dict(b_reduce=lambda: torch.randn(3)), ValueError,
                       r"channel_attention: b_reduce must have shape \[2\], got \(3,\)"),
    "b_expand_shape": (dict(b_expand=lambda: torch.randn(1, 8)), ValueError,
                       r"channel_attention: b_expand must have shape \[8\], got \(1, 8\)"),
    "b_reduce_not_tensor": (dict(b_reduce=[0.0, 0.0]), TypeError,
                            r"channel_attention: b_reduce must be a torch.Tensor or None, got list"),
    "w_reduce_int": (dict(w_reduce=lambda: torch.ones(2, 8, dtype=torch.int64)), TypeError,
                     r"channel_attention: w_reduce must be floating point, got torch.int64"),
    "b_expand_int": (dict(b_expand=lambda: torch.ones(8, dtype=torch.int32)), TypeError,
                     r"channel_attention: b_expand must be floating point, got torch.int32"),
    "w_expand_on_meta": (dict(w_expand=lambda: _meta(8, 2)), ValueError,
                         r"channel_attention: w_expand is on meta but y is on cpu"),
    "b_reduce_on_meta": (dict(b_reduce=lambda: _meta(2)), ValueError,
                         r"channel_attention: b_reduce is on meta but y is on cpu"),
    "y_on_meta_weights_on_cpu": (dict(y=lambda: _meta(1, 8, 2, 3, 3)), ValueError,
                                 r"channel_attention: w_reduce is on cpu but y is on meta"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CHANNEL_ATTENTION_BAD))
def test_channel_attention_bad_inputs(case, backend):
    changes, exc, pattern = CHANNEL_ATTENTION_BAD[case]
    with pytest.raises(exc, match=pattern):
        channel_attention(**_ca(**changes), backend=backend)


# --------------------------------------------------------------------------------------------------
# ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)
# --------------------------------------------------------------------------------------------------
def _ra(**changes):
    args = dict(y=torch.randn(1, 8, 2, 3, 3), shortcut=torch.randn(1, 8, 2, 3, 3), w_reduce=torch.randn(2, 8),
                b_reduce=torch.randn(2), w_expand=torch.randn(8, 2), b_expand=torch.randn(8),
                st_weight=torch.randn(1, 2, 3, 3, 3), st_bias=torch.randn(1))
    args.update({k: (v() if callable(v) else v) for k, v in changes.items()})
    return args


def _huge_ra():
    """Every argument on meta, y with one channel more than the int32 channel argmax can index."""
    return dict(y=_meta(1, HUGE_C, 1, 1, 1), shortcut=_meta(1, HUGE_C, 1, 1, 1), w_reduce=_meta(1, HUGE_C),
                b_reduce=None, w_expand=_meta(HUGE_C, 1), b_expand=None, st_weight=_meta(1, 2, 3, 3, 3),
                st_bias=None)


RA_TAIL_BAD = {
    "y_rank_4": (dict(y=lambda: torch.randn(8, 2, 3, 3)), ValueError,
                 r"ra_tail: y must be 5-D \[N, C, T, H, W\], got shape \(8, 2, 3, 3\)"),
    "y_int64": (dict(y=lambda: torch.ones(1, 8, 2, 3, 3, dtype=torch.int64)), TypeError,
                r"ra_tail: y must be a floating-point tensor, got torch.int64"),
    "y_no_channels": (dict(y=lambda: torch.randn(1, 0, 2, 3, 3)), ValueError,
                      r"ra_tail: y must have at least one channel, got shape \(1, 0, 2, 3, 3\)"),
    "y_no_positions": (dict(y=lambda: torch.randn(1, 8, 2, 0, 3)), ValueError,
                       r"ra_tail: y must have T\*H\*W >= 1 to pool over"),
    "shortcut_not_tensor": (dict(shortcut=None), TypeError, r"ra_tail: shortcut must be a torch.Tensor, got NoneType"),
    "shortcut_shape": (dict(shortcut=lambda: torch.randn(1, 8, 2, 3, 4)), ValueError,
                       r"ra_tail: shortcut shape \(1, 8, 2, 3, 4\) must equal y shape \(1, 8, 2, 3, 3\)"),
    "shortcut_dtype": (dict(shortcut=lambda: torch.randn(1, 8, 2, 3, 3, dtype=torch.float64)), TypeError,
                       r"ra_tail: shortcut dtype torch.float64 must match y dtype torch.float32"),
    "shortcut_on_meta": (dict(shortcut=lambda: _meta(1, 8, 2, 3, 3)), ValueError,
                         r"ra_tail: shortcut is on meta but y is on cpu"),
    "w_reduce_columns": (dict(w_reduce=lambda: torch.randn(2, 9)), ValueError,
                         r"ra_tail: w_reduce must have shape \[C/r, C\] = \[hidden, 8\], got \(2, 9\)"),
    "b_expand_shape": (dict(b_expand=lambda: torch.randn(3)), ValueError,
                       r"ra_tail: b_expand must have shape \[8\], got \(3,\)"),
    "w_expand_int": (dict(w_expand=lambda: torch.ones(8, 2, dtype=torch.int64)), TypeError,
                     r"ra_tail: w_expand must be floating point, got torch.int64"),
    "st_weight_not_tensor": (dict(st_weight=1.0), TypeError, r"ra_tail: st_weight must be a torch.Tensor, got float"),
    "st_weight_one_map": (dict(st_weight=lambda: torch.randn(1, 1, 3, 3, 3)), ValueError,
                          r"ra_tail: st_weight must have shape \[1, 2, k, k, k\] with k in \(3, 5, 7\), "
                          r"got \(1, 1, 3, 3, 3\)"),
    "kernel_size_4": (dict(st_weight=lambda: torch.randn(1, 2, 4, 4, 4)), ValueError,
                      r"st_weight must have shape \[1, 2, k, k, k\] with k in \(3, 5, 7\), got \(1, 2, 4, 4, 4\)"),
    "st_weight_rank_3": (dict(st_weight=lambda: torch.randn(2, 3, 3)), ValueError,
                         r"st_weight must have shape \[1, 2, k, k, k\] with k in \(3, 5, 7\), got \(2, 3, 3\)"),
    "st_weight_int": (dict(st_weight=lambda: torch.ones(1, 2, 3, 3, 3, dtype=torch.int64)), TypeError,
                      r"ra_tail: st_weight must be floating point, got torch.int64"),
    "st_bias_shape": (dict(st_bias=lambda: torch.randn(2)), ValueError,
                      r"ra_tail: st_bias must have shape \[1\], got \(2,\)"),
    "st_bias_int": (dict(st_bias=lambda: torch.ones(1, dtype=torch.int64)), TypeError,
                    r"ra_tail: st_bias must be floating point, got torch.int64"),
    "st_bias_not_tensor": (dict(st_bias=0.1), TypeError, r"ra_tail: st_bias must be a torch.Tensor or None, got float"),
    "st_weight_on_meta": (dict(st_weight=lambda: _meta(1, 2, 3, 3, 3)), ValueError,
                          r"ra_tail: st_weight is on meta but y is on cpu"),
    "channels_past_int32_argmax": (_huge_ra, ValueError,
                                   r"ra_tail: y has 2147483648 channels, more than the int32 channel argmax "
                                   r"can index \(at most 2147483647 = 2\^31 - 1\)"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(RA_TAIL_BAD))
def test_ra_tail_bad_inputs(case, backend):
    changes, exc, pattern = RA_TAIL_BAD[case]
    args = changes() if callable(changes) else _ra(**changes)
    with pytest.raises(exc, match=pattern):
        ra_tail(**args, backend=backend)


@pytest.mark.parametrize("op", [st_attention, channel_attention, ra_tail], ids=lambda f: f.__name__)
def test_unknown_backend_is_named(op):
    args = {st_attention: _st, channel_attention: _ca, ra_tail: _ra}[op]()
    with pytest.raises(ValueError, match=rf"{op.__name__}: backend must be one of \('auto', 'eager', 'cpp', "
                                         r"'cuda', 'triton'\), got 'fast'"):
        op(**args, backend="fast")


def test_requires_grad_on_an_integer_tensor_is_refused_by_torch():
    """No op sees such an input: torch refuses to make it (so the ops need no rule of their own)."""
    with pytest.raises(RuntimeError, match="(?i)only Tensors of floating point .*dtype can require gradients"):
        _int_requires_grad()


def test_every_table_has_at_least_15_cases():
    assert min(len(ST_ATTENTION_BAD), len(CHANNEL_ATTENTION_BAD), len(RA_TAIL_BAD)) >= 15


# --------------------------------------------------------------------------------------------------
# Meta tensors: every public op and backend gives the CPU result's shapes, dtypes and layout
# --------------------------------------------------------------------------------------------------
def _meta_cases():
    """(op, backend, dtype) for every backend that can run on meta here and takes the dtype (the refusals
    of float64 are test_float64.py's)."""
    cases = []
    for op in ("st_attention", "channel_attention", "ra_tail"):
        for name in ("auto", "eager", "cpp", "cuda", "triton"):
            ok, why = backend_status(name, "meta") if name != "auto" else (True, "")
            for dtype in (torch.float32, torch.bfloat16, torch.float64):
                if backend_dtype_status(op, name, dtype)[0]:
                    mark = pytest.mark.skipif(not ok, reason=f"{name} on meta: {why}")
                    cases.append(pytest.param(op, name, dtype, marks=mark, id=f"{op}-{name}-{dtype}"))
    return cases


def _op_args(op, dtype, layout, device):
    fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
    y = torch.randn(2, 8, 3, 4, 5, dtype=dtype).contiguous(memory_format=fmt)
    if op == "st_attention":
        args = dict(x=y, weight=torch.randn(1, 2, 3, 3, 3, dtype=dtype), bias=torch.randn(1, dtype=dtype))
    else:
        args = dict(y=y, w_reduce=torch.randn(2, 8, dtype=dtype), b_reduce=torch.randn(2, dtype=dtype),
                    w_expand=torch.randn(8, 2, dtype=dtype), b_expand=torch.randn(8, dtype=dtype))
        if op == "ra_tail":
            args.update(shortcut=torch.randn_like(y), st_weight=torch.randn(1, 2, 3, 3, 3, dtype=dtype), st_bias=None)
    return {k: (v.to(device).requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


OPS = {"st_attention": st_attention, "channel_attention": channel_attention, "ra_tail": ra_tail}


@pytest.mark.parametrize("op, backend, dtype", _meta_cases())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_meta_tensors_through_every_public_op(op, backend, dtype, layout):
    meta = _op_args(op, dtype, layout, "meta")
    out = OPS[op](**meta, backend=backend)
    cpu = OPS[op](**_op_args(op, dtype, layout, "cpu"), backend="eager")
    assert out.device.type == "meta"
    assert (out.shape, out.dtype) == (cpu.shape, cpu.dtype)
    if backend != "eager":  # the fused ops keep channels_last_3d (eager follows torch's own rules)
        assert out.is_contiguous(memory_format=torch.channels_last_3d) == (layout == "channels_last_3d")
    out.sum().backward()  # the backward's fake kernels: every gradient has its input's shape and dtype
    for name, t in meta.items():
        if isinstance(t, torch.Tensor):
            assert t.grad is not None and (t.grad.shape, t.grad.dtype, t.grad.device.type) == (
                t.shape, t.dtype, "meta"), name


@needs_cpp
def test_meta_sizes_past_32_bit_indexing_are_accepted():
    """2^34 elements on meta: accepted by the C++ operators (64-bit index arithmetic), shapes only."""
    y = _meta(2, 4, 2**10, 2**11, 2**11)  # 2^35 elements
    assert y.numel() > 2**31
    out = st_attention(y, _meta(1, 2, 5, 5, 5), None, backend="cpp")
    assert out.shape == y.shape
    ca = channel_attention(y, _meta(2, 4), None, _meta(4, 2), None, backend="cpp")
    assert ca.shape == y.shape
    tail = ra_tail(y, _meta(*y.shape), _meta(2, 4), None, _meta(4, 2), None, _meta(1, 2, 3, 3, 3), None,
                   backend="cpp")
    assert tail.shape == y.shape


# --------------------------------------------------------------------------------------------------
# NaN and inf: defined behaviour, not an error. Like the eager reference they propagate (a NaN is the
# maximum of its channel / position and the first NaN gets the max gradient: README, Conventions).
# --------------------------------------------------------------------------------------------------
def _with_specials(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[7] = float("nan")
    t.view(-1)[-5] = float("inf")
    t.view(-1)[40] = float("-inf")
    return t


_TRITON_OK, _TRITON_WHY = backend_status("triton", "cpu")
# (backend, dtype, tolerance): the C++ kernels in float64, Triton (float32 only) under the interpreter.
NAN_BACKENDS = [
    pytest.param("cpp", torch.float64, 1e-12, marks=needs_cpp, id="cpp"),
    pytest.param("triton", torch.float32, 1e-5, id="triton",
                 marks=[pytest.mark.triton,
                        pytest.mark.skipif(not _TRITON_OK, reason=f"triton on cpu: {_TRITON_WHY}")]),
]


@pytest.mark.parametrize("backend, dtype, tol", NAN_BACKENDS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_nan_and_inf_propagate_like_the_reference(op, backend, dtype, tol):
    args = _op_args(op, dtype, "contiguous", "cpu")
    first = next(iter(args))
    args[first] = _with_specials(args[first].detach())
    got = OPS[op](**args, backend=backend)
    ref = OPS[op](**args, backend="eager")
    assert got.isnan().any()
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isinf(), ref.isinf())
    finite = ref.isfinite()
    torch.testing.assert_close(got[finite], ref[finite], rtol=tol, atol=tol)


@pytest.mark.parametrize("backend, dtype, tol", NAN_BACKENDS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_nan_weight_makes_the_whole_output_nan(op, backend, dtype, tol):
    args = _op_args(op, dtype, "contiguous", "cpu")
    name = "weight" if op == "st_attention" else "w_reduce"
    args[name] = torch.full_like(args[name].detach(), float("nan"))
    out = OPS[op](**args, backend=backend)
    assert out.isnan().all()  # ra_tail: relu(NaN) is NaN, like torch.relu
    assert OPS[op](**args, backend="eager").isnan().all()
