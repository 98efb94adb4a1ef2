"""The vectorised CPU row kernels (csrc/cpu/ca_ra_cpu_kernels.h, fold_rows in csrc/cpu/simd.h) for both
instruction sets, both layouts and lengths around the vector width and the task chunk: meranet::ca_pool (over
positions), meranet::ra_pool (over channels of y * scale) and st_attention's channel pooling give exact sums,
maxima and first argmax with ties and NaNs; meranet::ca_scale and meranet::ra_attend_bwd's ReLU-mask pass
match torch.
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp

pytestmark = needs_cpp

ISAS = ("default", "auto")  # MERANET_CPU_ISA=default forces the baseline x86-64 copy of the kernels
LAYOUTS = ("contiguous", "channels_last_3d")


def _layout(y, layout):
    return y.contiguous(memory_format=torch.channels_last_3d) if layout == "channels_last_3d" else y


def _isa(monkeypatch, isa):
    if isa == "default":
        monkeypatch.setenv("MERANET_CPU_ISA", "default")


def _first_argmax(v, dim):
    """Index of the first maximum along dim, a NaN counting as the maximum (torch.amax semantics)."""
    nan = torch.isnan(v)
    mx = torch.where(nan.any(dim, keepdim=True), torch.nan, v.amax(dim, keepdim=True))
    hit = (v == mx) | (nan & torch.isnan(mx))
    return hit.int().argmax(dim)  # argmax of a 0/1 tensor: its first 1


def _ties(shape, dtype):
    """Few distinct values (many ties), exact in every dtype."""
    return torch.randint(-3, 4, shape).to(dtype) / 4


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
# S around the vector width (8 / 4 lanes), below and above the short-row limit (one accumulator chain below
# 4 * 4 vectors, four above) and past the 1024-position task chunk; C odd and even
@pytest.mark.parametrize("shape", [(2, 3, 1, 1, 7), (1, 9, 1, 3, 3), (1, 6, 1, 7, 11), (2, 17, 2, 5, 13),
                                   (1, 5, 3, 19, 23)])
def test_ca_pool_exact_with_ties(monkeypatch, isa, layout, dtype, shape):
    _isa(monkeypatch, isa)
    y = _layout(_ties(shape, dtype), layout)
    avg, mx, idx = torch.ops.meranet.ca_pool(y)
    flat = y.double().flatten(2)
    torch.testing.assert_close(avg.double(), flat.mean(2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mx.double(), flat.amax(2), rtol=0, atol=0)
    torch.testing.assert_close(idx, _first_argmax(flat, 2).long(), rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 1, 1, 2, 3), (1, 7, 2, 3, 3), (2, 8, 1, 4, 5), (1, 130, 1, 2, 3),
                                   (1, 37, 3, 19, 23)])
def test_ra_pool_exact_with_ties(monkeypatch, isa, layout, dtype, shape):
    _isa(monkeypatch, isa)
    y = _layout(_ties(shape, dtype), layout)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.randint(1, 3, (shape[0], shape[1])).to(acc) / 2  # 0.5 or 1: products stay exact, ties stay
    pooled, argmax = torch.ops.meranet.ra_pool(y, scale)
    u = y.to(acc) * scale[:, :, None, None, None]
    torch.testing.assert_close(pooled[:, 0], u.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pooled[:, 1], u.amax(1), rtol=0, atol=0)
    torch.testing.assert_close(argmax, _first_argmax(u, 1).int(), rtol=0, atol=0)


# shape, NaN positions, expected ca_pool argmax {(n, c): flat position}, expected ra_pool argmax
# {(n, t, h, w): channel}. Short rows take the one-chain reduction, long rows (>= 128) the four-chain one.
NAN_CASES = {
    "short rows": ((2, 11, 2, 3, 7),
                   [(0, 4, 1, 2, 5), (0, 4, 0, 1, 1),  # an earlier position: channel 4's argmax
                    (1, 2, 0, 0, 3), (1, 9, 0, 0, 3)],  # same position, a later channel: channel 2 wins
                   {(0, 4): (0 * 3 + 1) * 7 + 1, (1, 2): 3},
                   {(1, 0, 0, 3): 2, (0, 0, 1, 1): 4, (0, 1, 2, 5): 4}),
    "long rows": ((1, 130, 1, 1, 300),
                  [(0, 1, 0, 0, 200), (0, 1, 0, 0, 150),  # the first NaN of channel 1's row: 150
                   (0, 100, 0, 0, 7), (0, 120, 0, 0, 7)],  # a later channel at the same position
                  {(0, 1): 150},
                  {(0, 0, 0, 7): 100, (0, 0, 0, 150): 1}),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", NAN_CASES)
def test_pools_propagate_nan_to_the_first_nan(monkeypatch, isa, layout, case):
    """Like torch.amax, a NaN is the maximum; the first NaN gets the argmax (and the max gradient)."""
    _isa(monkeypatch, isa)
    shape, nans, ca_expected, ra_expected = NAN_CASES[case]
    y = torch.randn(shape)
    for pos in nans:
        y[pos] = torch.nan
    y = _layout(y, layout)
    _, mx, idx = torch.ops.meranet.ca_pool(y)
    flat = y.flatten(2)
    torch.testing.assert_close(mx, flat.amax(2), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(idx, _first_argmax(flat, 2).long(), rtol=0, atol=0)
    assert all(idx[nc] == pos for nc, pos in ca_expected.items())
    pooled, argmax = torch.ops.meranet.ra_pool(y, torch.ones(shape[:2]))
    torch.testing.assert_close(pooled[:, 1], y.amax(1), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(argmax, _first_argmax(y, 1).int(), rtol=0, atol=0)
    assert all(argmax[p] == c for p, c in ra_expected.items())


@pytest.mark.parametrize("isa", ISAS)
def test_all_minus_infinity_gives_the_first_index(monkeypatch, isa):
    _isa(monkeypatch, isa)
    y = torch.full((1, 10, 1, 2, 9), -torch.inf)
    _, mx, idx = torch.ops.meranet.ca_pool(y)
    assert (mx == -torch.inf).all() and (idx == 0).all()
    _, argmax = torch.ops.meranet.ra_pool(y, torch.ones(1, 10))
    assert (argmax == 0).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 1, 1, 7), (1, 9, 2, 5, 13), (1, 5, 3, 19, 23)])
def test_ca_scale_matches_torch(monkeypatch, isa, layout, dtype, shape):
    _isa(monkeypatch, isa)
    y = _layout(torch.randn(shape, dtype=dtype), layout)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.rand(shape[:2], dtype=acc)
    out = torch.ops.meranet.ca_scale(y, scale)
    assert out.dtype == dtype and out.is_contiguous(memory_format=_memory_format(layout))
    torch.testing.assert_close(out, (y.to(acc) * scale[:, :, None, None, None]).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 1, 1, 7), (1, 9, 2, 5, 13), (1, 17, 3, 19, 23)])
def test_ra_attend_bwd_relu_mask_pass(monkeypatch, isa, layout, dtype, shape):
    """gz = g * [out > 0]; grad_pooled / grad_weight / grad_bias against autograd of the eager formula."""
    _isa(monkeypatch, isa)
    n, c = shape[:2]
    y = _layout(torch.randn(shape, dtype=dtype), layout)
    out = _layout(torch.randn(shape, dtype=dtype).relu(), layout)  # zeros where the mask is off
    g = _layout(torch.randn(shape, dtype=dtype), layout)
    scale = torch.rand(n, c, dtype=dtype)
    pooled = torch.randn(n, 2, *shape[2:], dtype=dtype, requires_grad=True)
    weight = (torch.randn(1, 2, 3, 3, 3, dtype=dtype) * 0.2).requires_grad_()
    bias = torch.zeros(1, dtype=dtype, requires_grad=True)
    attn = torch.sigmoid(torch.nn.functional.conv3d(pooled, weight, bias, padding=1))
    gz, gpooled, gw, gb = torch.ops.meranet.ra_attend_bwd(g, out, y, scale, attn.detach(), pooled.detach(),
                                                          weight.detach())
    ref_gz = g * (out > 0)
    torch.testing.assert_close(gz, ref_gz, rtol=0, atol=0)
    grad_attn = (ref_gz * y * scale[:, :, None, None, None]).sum(1, keepdim=True)
    ref = torch.autograd.grad(attn, (pooled, weight, bias), grad_attn)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, got, want in zip(("grad_pooled", "grad_weight", "grad_bias"), (gpooled, gw, gb), ref):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"{name}: {m}")


def _memory_format(layout):
    return torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 1, 1, 2, 3), (1, 6, 2, 3, 3), (2, 9, 1, 4, 5), (1, 37, 3, 19, 23)])
def test_st_attention_pool_exact_with_ties(monkeypatch, isa, layout, dtype, shape):
    """st_attention's channel pooling folds rows with the same helper (fold_rows in csrc/cpu/simd.h)."""
    _isa(monkeypatch, isa)
    x = _layout(_ties(shape, dtype), layout)
    x[0, -1, 0, 0, 0] = torch.nan  # the max of that position is NaN, at the last channel
    weight = torch.zeros(1, 2, 3, 3, 3, dtype=dtype)
    _, _, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, weight, None)
    u = x.double()
    torch.testing.assert_close(pooled[:, 0].double(), u.mean(1), rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(pooled[:, 1].double(), u.amax(1).float().double(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(argmax, _first_argmax(u, 1).int(), rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ["channel_attention", "ra_tail"])
@pytest.mark.parametrize("shape", [(2, 9, 1, 3, 5), (1, 20, 3, 7, 11)])
def test_channel_attention_backward_rows(monkeypatch, isa, layout, op, shape):
    """ca_scale_grad / ca_input_grad rows (gu_vec, grad_dot_row, input_grad_row), with and without the
    spatio-temporal maps (ra_tail passes them), through the public ops: every gradient against eager."""
    from meranet_fast.ops import channel_attention, ra_tail
    from meranet_fast.ops.reference import channel_attention_reference, ra_tail_reference

    _isa(monkeypatch, isa)
    n, c = shape[:2]
    hidden = max(1, c // 4)
    y = _layout(torch.randn(shape, dtype=torch.float64), layout)
    weights = [torch.randn(hidden, c, dtype=torch.float64) / c ** 0.5, 0.1 * torch.randn(hidden, dtype=torch.float64),
               torch.randn(c, hidden, dtype=torch.float64) / hidden ** 0.5, 0.1 * torch.randn(c, dtype=torch.float64)]
    if op == "ra_tail":
        weights = [_layout(torch.randn(shape, dtype=torch.float64), layout), *weights,
                   torch.randn(1, 2, 3, 3, 3, dtype=torch.float64) * 0.3, 0.1 * torch.randn(1, dtype=torch.float64)]
        fused, ref = (lambda *a: ra_tail(*a, backend="cpp")), ra_tail_reference
    else:
        fused = lambda *a: channel_attention(*a, backend="cpp")  # noqa: E731
        ref = lambda *a: channel_attention_reference(*a)[0]  # noqa: E731
    grad_out = torch.randn(shape, dtype=torch.float64)
    results = []
    for fn in (fused, ref):  # float32 kernels (the vector paths) against the float64 reference
        leaves = [t.detach().requires_grad_() for t in [y, *weights]]
        args = [t.float() for t in leaves] if fn is fused else leaves
        out = fn(*args)
        results.append(torch.autograd.grad((out.double() * grad_out).sum(), leaves))
    for i, (got, want) in enumerate(zip(*results)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"grad of input {i}: {m}")
