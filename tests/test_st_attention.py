"""Fused spatio-temporal attention op (meranet_fast.ops.st_attention): every backend vs the eager reference.

CPU in CI: the C++ kernel, the eager backend, and the Triton kernels under TRITON_INTERPRET=1. CUDA tests
are marked ``cuda`` and skip with the reason when no GPU / no CUDA build is present.
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp
from torch import nn

import meranet_fast
from meranet_fast.ops import backends, st_attention, st_attention_with_map
from meranet_fast.ops.reference import st_attention_reference


def _backend_param(name: str, device: str):
    ok, why = backends.backend_status(name, device)
    marks = [pytest.mark.skipif(not ok, reason=f"{name} on {device}: {why}")]
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    if name == "triton":
        marks.append(pytest.mark.triton)
    return pytest.param(name, device, marks=marks, id=f"{name}-{device}")


# Every backend, on the device it runs on (explicit skips with the reason otherwise).
BACKENDS = [
    _backend_param("eager", "cpu"),
    _backend_param("cpp", "cpu"),
    _backend_param("triton", "cpu"),
    _backend_param("cuda", "cuda"),
    _backend_param("triton", "cuda"),
]
FUSED_CPU = [p for p in BACKENDS if p.values[0] in ("cpp", "triton") and p.values[1] == "cpu"]
FUSED = [p for p in BACKENDS if p.values[0] != "eager"]

# Triton's CPU interpreter is slow: it gets the small shapes only.
SHAPES = [
    (2, 3, 4, 5, 6),   # odd-ish everything
    (1, 1, 1, 1, 1),   # C=1, T=H=W=1 (smaller than every k)
    (1, 5, 1, 7, 3),   # T=1, W < k
    (3, 17, 3, 9, 11),  # C not a multiple of any vector width, odd T/H/W
    (1, 2, 2, 2, 37),  # W longer than a block of 16/32
]


def _dtype_supported(backend: str, dtype: torch.dtype) -> bool:
    return not (backend == "triton" and dtype == torch.float64)


def _inputs(shape, k=5, dtype=torch.float64, device="cpu", bias=True, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, t, h, w = shape
    if layout == "sliced":
        big = torch.randn(n, 2 * c, t + 1, h, 2 * w, generator=g, dtype=torch.float64)
        x = big[:, 1::2, 1:, :, ::2]
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    weight = torch.randn(1, 2, k, k, k, generator=g, dtype=torch.float64) * (2.0 / k**1.5)
    b = torch.randn(1, generator=g, dtype=torch.float64) if bias else None
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last_3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    weight = weight.to(device=device, dtype=dtype)
    b = None if b is None else b.to(device=device, dtype=dtype)
    return x, weight, b


def _grads(fn, x, weight, bias, grad_out, which=(True, True, True)):
    """(out, grad_x, grad_weight, grad_bias) of sum(fn(x, w, b) * grad_out); None where not requested."""
    xs = x.detach().clone().requires_grad_(which[0])
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        xs = x.detach().clone(memory_format=torch.channels_last_3d).requires_grad_(which[0])
    ws = weight.detach().clone().requires_grad_(which[1])
    bs = None if bias is None else bias.detach().clone().requires_grad_(which[2])
    out = fn(xs, ws, bs)
    leaves = [t for t in (xs, ws, bs) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, leaves, grad_out) if leaves else []
    it = iter(grads)
    gx = next(it) if which[0] else None
    gw = next(it) if which[1] else None
    gb = next(it) if bs is not None and which[2] else None
    return out, gx, gw, gb


def _ref(x, w, b):
    return st_attention_reference(x, w, b)[0]


def _close(actual, expected, tol, name):
    assert actual.shape == expected.shape, name
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.double().abs().max().item() if expected.numel() else 0.0)
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol:.3g} * {scale:.3g}"


# --------------------------------------------------------------------------------------------------
# Values and gradients against the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k", [3, 5, 7])
def test_matches_reference_float64(backend, device, shape, k):
    dtype = torch.float64 if _dtype_supported(backend, torch.float64) else torch.float32
    tol = 1e-6 if dtype == torch.float64 else 2e-5
    x, w, b = _inputs(shape, k=k, device=device, dtype=dtype, bias=k != 7)
    g = torch.randn_like(x)
    out, gx, gw, gb = _grads(lambda *a: st_attention(*a, backend=backend), x, w, b, g)
    ref = _grads(_ref, x.double(), w.double(), None if b is None else b.double(), g.double())
    assert out.dtype == x.dtype
    for name, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), (out, gx, gw, gb), ref):
        if e is None:
            assert a is None
        else:
            _close(a, e, tol, name)


LAYOUTS = ["contiguous", "channels_last_3d", "sliced"]


@pytest.mark.parametrize("backend, device", FUSED_CPU)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (2, 20, 3, 6, 19)], ids=lambda s: "x".join(map(str, s)))
def test_layouts(backend, device, layout, shape):
    dtype = torch.float64 if _dtype_supported(backend, torch.float64) else torch.float32
    tol = 1e-6 if dtype == torch.float64 else 2e-5
    x, w, b = _inputs(shape, k=3, device=device, dtype=dtype, layout=layout)
    g = torch.randn(x.shape, dtype=dtype)
    if layout == "channels_last_3d":
        g = g.contiguous(memory_format=torch.channels_last_3d)
    out, gx, gw, gb = _grads(lambda *a: st_attention(*a, backend=backend), x, w, b, g)
    ref = _grads(_ref, x, w, b, g)
    for name, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), (out, gx, gw, gb), ref):
        _close(a, e, tol, name)
    if layout == "channels_last_3d":
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        assert gx.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        assert out.is_contiguous()


@needs_cpp
@pytest.mark.parametrize("g_kind", ["expanded", "sliced", "other_layout"])
def test_cpp_grad_out_with_any_strides(g_kind):
    x, w, b = _inputs((2, 6, 3, 5, 7), k=3)
    if g_kind == "expanded":  # what out.sum() sends back: all strides 0
        g = torch.ones(1, dtype=x.dtype).expand(x.shape)
    elif g_kind == "sliced":
        g = torch.randn(2, 6, 3, 5, 14, dtype=x.dtype)[..., ::2]
    else:
        g = torch.randn(x.shape, dtype=x.dtype).contiguous(memory_format=torch.channels_last_3d)
    got = _grads(lambda *a: st_attention(*a, backend="cpp"), x, w, b, g)
    ref = _grads(_ref, x, w, b, g)
    for name, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), got, ref):
        _close(a, e, 1e-6, name)


@needs_cpp
@pytest.mark.parametrize("isa", ["default", "auto"])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_cpp_both_instruction_sets(monkeypatch, isa, k, layout):
    """All CPU kernels exist for baseline x86-64 and AVX2+FMA (MERANET_CPU_ISA=default forces the former);
    H = 6 exercises a full and a short group of rows of the row-blocked small-map kernels."""
    if isa == "default":
        monkeypatch.setenv("MERANET_CPU_ISA", "default")
    x, w, b = _inputs((2, 9, 4, 6, 21), k=k, dtype=torch.float32, layout=layout)
    g = torch.randn_like(x)
    got = _grads(lambda *a: st_attention(*a, backend="cpp"), x, w, b, g)
    ref = _grads(_ref, x.double(), w.double(), b.double(), g.double())
    for name, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), got, ref):
        _close(a, e, 2e-5, name)


def _low_precision_case(backend, device, dtype, shape, k, layout="contiguous"):
    """Fused error vs the fp64 reference <= 2x the eager-in-dtype error + eps (docs/design.md §6)."""
    _, w, b = _inputs(shape, k=k, device=device, dtype=dtype)
    # Tie-free x, exact in every dtype: distinct multiples of 1/4 along C plus a shared offset per
    # position (on ties the fused backends and eager amax route the max gradient differently).
    gen = torch.Generator().manual_seed(2)
    perm = torch.rand(shape, generator=gen).argsort(dim=1).double()
    offset = torch.randint(-8, 9, (shape[0], 1, *shape[2:]), generator=gen).double() / 8
    x = ((perm - shape[1] / 2) / 4 + offset).to(device=device, dtype=dtype)
    if layout == "channels_last_3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    fused = _grads(lambda *a: st_attention(*a, backend=backend), x, w, b, g)
    eager = _grads(_ref, x, w, b, g)
    exact = _grads(_ref, x.double(), w.double(), b.double(), g.double())
    eps = {torch.bfloat16: 1e-2, torch.float16: 1e-3, torch.float32: 1e-6}[dtype]
    for name, f, e, r in zip(("out", "grad_x", "grad_weight", "grad_bias"), fused, eager, exact):
        assert f.dtype == dtype, name
        ferr = (f.double() - r).abs().max().item()
        eerr = (e.double() - r).abs().max().item()
        scale = max(1.0, r.abs().max().item())
        assert ferr <= 2 * eerr + eps * scale, f"{name}: fused error {ferr:.3g}, eager error {eerr:.3g}"


@pytest.mark.parametrize("backend, device", FUSED_CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_low_precision_dtypes(backend, device, dtype, layout):
    _low_precision_case(backend, device, dtype, (2, 19, 3, 7, 9), 5, layout)


@pytest.mark.parametrize("backend, device", FUSED)
@pytest.mark.parametrize("which", [(True, False, False), (False, True, False), (False, False, True),
                                   (True, True, False), (False, True, True)], ids=str)
def test_requires_grad_subsets(backend, device, which):
    dtype = torch.float64 if _dtype_supported(backend, torch.float64) else torch.float32
    x, w, b = _inputs((1, 4, 3, 4, 5), k=3, device=device, dtype=dtype)
    g = torch.randn_like(x)
    got = _grads(lambda *a: st_attention(*a, backend=backend), x, w, b, g, which)
    ref = _grads(_ref, x, w, b, g, which)
    for name, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), got, ref):
        assert (a is None) == (e is None), name
        if a is not None:
            _close(a, e, 2e-5, name)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 2, 2, 2), (2, 3, 0, 4, 4), (1, 2, 3, 0, 5), (1, 2, 3, 4, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_empty(backend, device, shape):
    dtype = torch.float64 if _dtype_supported(backend, torch.float64) else torch.float32
    x, w, b = _inputs(shape, k=3, device=device, dtype=dtype)
    xs, ws, bs = x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    out = st_attention(xs, ws, bs, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.sum().backward()
    assert xs.grad.shape == x.shape
    assert torch.equal(ws.grad, torch.zeros_like(w)) and torch.equal(bs.grad, torch.zeros_like(b))


# --------------------------------------------------------------------------------------------------
# Op machinery: gradcheck, opcheck, torch.compile
# --------------------------------------------------------------------------------------------------
@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
@pytest.mark.parametrize("k", [3, 5])
def test_gradcheck_cpp(layout, k):
    x, w, b = _inputs((2, 3, 3, 4, 5), k=k, layout=layout)
    # Keep clear of max ties under the finite-difference perturbation (the max is not differentiable there).
    x = x + torch.arange(3, dtype=x.dtype).view(1, 3, 1, 1, 1) * 0.5
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: st_attention(*a, backend="cpp"), args, eps=1e-6, atol=1e-5)


def _opcheck_samples(device):
    samples = []
    for i, (shape, k, dtype, layout, bias) in enumerate([
        ((2, 3, 4, 5, 6), 3, torch.float32, "contiguous", True),
        ((1, 4, 2, 3, 3), 5, torch.float64, "channels_last_3d", False),
        ((2, 2, 3, 3, 4), 7, torch.bfloat16, "sliced", True),
        ((1, 1, 1, 1, 1), 3, torch.float32, "contiguous", True),
    ]):
        x, w, b = _inputs(shape, k=k, dtype=dtype, device=device, layout=layout, bias=bias, seed=i)
        samples.append((x.requires_grad_(), w.requires_grad_(), None if b is None else b.requires_grad_()))
    return samples


@needs_cpp
@pytest.mark.parametrize("sample", range(4))
def test_opcheck_cpp(sample):
    x, w, b = _opcheck_samples("cpu")[sample]
    torch.library.opcheck(torch.ops.meranet.st_attention_fwd.default, (x, w, b))
    out, attn, pooled, argmax = torch.ops.meranet.st_attention_fwd(x.detach(), w.detach(), b)
    g = torch.randn_like(out)
    torch.library.opcheck(torch.ops.meranet.st_attention_bwd.default,
                          (g, x.detach(), w.detach(), attn, pooled, argmax))


class _TinySTA(nn.Module):
    def __init__(self, k=5):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, k, padding=k // 2)

    def forward(self, x):
        return st_attention(x, self.conv.weight, self.conv.bias).relu() * 2.0


@needs_cpp
def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = _TinySTA()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 4, 3, 6, 7, requires_grad=True)
    out_c = compiled(x)
    out_e = model(x)
    torch.testing.assert_close(out_c, out_e)
    (gx_c,) = torch.autograd.grad(out_c.sum(), x)
    (gx_e,) = torch.autograd.grad(out_e.sum(), x)
    torch.testing.assert_close(gx_c, gx_e)


# --------------------------------------------------------------------------------------------------
# Semantics: autocast, ties, determinism, the map, backend choice, conversion
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "eager"])
def test_autocast_cpu_bf16_keeps_x_dtype_and_casts_params(backend):
    x, w, b = _inputs((2, 4, 3, 5, 6), k=3, dtype=torch.float32)
    xb = x.to(torch.bfloat16)
    w32, b32 = w.float().requires_grad_(), b.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st_attention(xb, w32, b32, backend=backend)
        out_f32 = st_attention(x, w32, b32, backend=backend)
    assert out.dtype == torch.bfloat16  # x's dtype: the op is autocast-neutral
    assert out_f32.dtype == torch.float32
    out.float().sum().backward()
    assert w32.grad.dtype == torch.float32 and b32.grad.dtype == torch.float32
    expected = _ref(xb, w32.detach().to(torch.bfloat16), b32.detach().to(torch.bfloat16))
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)
    with pytest.raises(TypeError, match="weight dtype"):  # outside autocast the dtypes must match
        st_attention(xb, w32, b32, backend=backend)


@pytest.mark.parametrize("backend, device", FUSED)
def test_ties_send_the_max_gradient_to_the_first_channel(backend, device):
    x = torch.zeros(1, 4, 1, 1, 2, device=device)
    x[0, 1] = 3.0
    x[0, 3] = 3.0  # channels 1 and 3 tie for the max
    w = torch.zeros(1, 2, 3, 3, 3, device=device)
    w[0, 1, 1, 1, 1] = 1.0  # logit = max map: only the max path carries weight
    xs = x.clone().requires_grad_()
    out = st_attention(xs, w, backend=backend)
    g = torch.zeros_like(out)
    g[0, 1] = 1.0  # gA = x[1] = 3 at every position
    out.backward(g)
    a = torch.sigmoid(torch.tensor(3.0))
    g_max = 3.0 * a * (1 - a)
    expected = torch.zeros_like(x)
    expected[0, 1] = a + g_max  # first max index gets the whole max-path gradient
    torch.testing.assert_close(xs.grad, expected)
    # eager amax splits it between the tied channels
    xe = x.clone().requires_grad_()
    _ref(xe, w, None).backward(g)
    torch.testing.assert_close(xe.grad[0, 3], torch.full_like(xe.grad[0, 3], g_max / 2))


@pytest.mark.parametrize("backend, device", FUSED)
def test_backward_is_deterministic(backend, device):
    x, w, b = _inputs((2, 13, 5, 9, 23), k=5, device=device, dtype=torch.float32, layout="channels_last_3d")
    g = torch.randn_like(x)
    r1 = _grads(lambda *a: st_attention(*a, backend=backend), x, w, b, g)
    r2 = _grads(lambda *a: st_attention(*a, backend=backend), x, w, b, g)
    for a, e in zip(r1, r2):
        assert torch.equal(a, e)


@needs_cpp
def test_cpp_result_does_not_depend_on_thread_count():
    x, w, b = _inputs((2, 7, 6, 9, 12), k=5, dtype=torch.float32)
    g = torch.randn_like(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        r1 = _grads(lambda *a: st_attention(*a, backend="cpp"), x, w, b, g)
        torch.set_num_threads(max(2, threads))
        r2 = _grads(lambda *a: st_attention(*a, backend="cpp"), x, w, b, g)
    finally:
        torch.set_num_threads(threads)
    for a, e in zip(r1, r2):
        assert torch.equal(a, e)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_with_map(backend, device):
    dtype = torch.float64 if _dtype_supported(backend, torch.float64) else torch.float32
    x, w, b = _inputs((2, 3, 4, 5, 6), k=5, device=device, dtype=dtype)
    out, attn = st_attention_with_map(x, w, b, backend=backend)
    ref_out, ref_attn = st_attention_reference(x, w, b)
    assert attn.dtype == x.dtype and attn.shape == (2, 1, 4, 5, 6)
    _close(out, ref_out, 2e-5, "out")
    _close(attn, ref_attn, 2e-5, "attn")


@needs_cpp
def test_cpp_saved_tensors_contract():
    x, w, b = _inputs((2, 5, 3, 4, 6), k=3, dtype=torch.bfloat16, layout="channels_last_3d")
    x[0, 2, 0, 0, 0] = 100.0
    out, attn, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, w, b)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last_3d)
    assert attn.dtype == torch.float32 and attn.shape == (2, 1, 3, 4, 6) and attn.is_contiguous()
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 2, 3, 4, 6) and pooled.is_contiguous()
    assert argmax.dtype == torch.int32 and argmax.shape == (2, 3, 4, 6)
    xf = x.float()
    torch.testing.assert_close(pooled[:, 0], xf.mean(1))
    torch.testing.assert_close(pooled[:, 1], xf.amax(1))
    assert torch.equal(argmax.long(), xf.argmax(1))
    assert argmax[0, 0, 0, 0].item() == 2
    gx, gw, gb = torch.ops.meranet.st_attention_bwd(torch.ones_like(out), x, w, attn, pooled, argmax)
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16 and gw.shape == w.shape
    assert gb.shape == (1,) and gb.dtype == torch.bfloat16
    # grad_bias is returned even without a bias
    *_, gb_none = torch.ops.meranet.st_attention_bwd(torch.ones_like(out), x, w, attn, pooled, argmax)
    assert gb_none.shape == (1,)


@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels", [3, 8, 21, 64])
def test_cpp_argmax_is_the_first_max_with_many_ties(layout, dtype, channels):
    x, w, b = _inputs((2, channels, 3, 4, 5), k=3, dtype=dtype, layout=layout)
    x.mul_(1.5).round_()  # in place (keeps the layout): a handful of integer values, ties everywhere
    _, _, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, w, b)
    assert torch.equal(argmax.long(), x.argmax(1))  # torch.argmax returns the first maximal index
    torch.testing.assert_close(pooled[:, 1], x.amax(1).to(pooled.dtype))
    torch.testing.assert_close(pooled[:, 0], x.double().mean(1).to(pooled.dtype))


@needs_cpp
def test_nan_propagates_like_amax():
    x, w, b = _inputs((1, 4, 2, 3, 3), k=3, dtype=torch.float32)
    x[0, 2, 1, 1, 1] = float("nan")
    out = st_attention(x, w, b, backend="cpp")
    ref = _ref(x, w, b)
    assert torch.equal(out.isnan(), ref.isnan())
    _, _, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, w, b)
    assert pooled[0, 1, 1, 1, 1].isnan() and argmax[0, 1, 1, 1].item() == 2


# --------------------------------------------------------------------------------------------------
# Bad inputs of the operators themselves (the public function's table: tests/test_bad_inputs.py)
# --------------------------------------------------------------------------------------------------
def _good():
    return torch.randn(1, 2, 3, 4, 5), torch.randn(1, 2, 3, 3, 3), torch.randn(1)


# The bad-input table of the public function: tests/test_bad_inputs.py.

@needs_cpp
def test_cpp_op_checks_its_inputs_too():
    x, w, b = _good()
    with pytest.raises(RuntimeError, match="kernel size k must be 3, 5 or 7"):
        torch.ops.meranet.st_attention_fwd(x, torch.randn(1, 2, 4, 4, 4), b)
    out, attn, pooled, argmax = torch.ops.meranet.st_attention_fwd(x, w, b)
    with pytest.raises(RuntimeError, match="argmax must be int32"):
        torch.ops.meranet.st_attention_bwd(out, x, w, attn, pooled, argmax.long())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_unavailable_backends_say_why(monkeypatch):
    x, w, b = _good()
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available: .*the tensors are on cpu"):
        st_attention(x, w, b, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="backend 'triton' is not available"):
        st_attention(x, w, b, backend="triton")


def test_convert_switches_modules_in_place():
    from meranet_fast.nn import SpatioTemporalAttention3d

    model = nn.Sequential(nn.Conv3d(3, 4, 1), SpatioTemporalAttention3d(5), nn.Sequential(SpatioTemporalAttention3d(3)))
    assert meranet_fast.convert(model) is model
    stas = [m for m in model.modules() if isinstance(m, SpatioTemporalAttention3d)]
    assert len(stas) == 2 and all(m.backend == "auto" for m in stas)
    x = torch.randn(2, 3, 3, 6, 7)
    fused = model(x)
    meranet_fast.convert(model, backend="eager")
    assert all(m.backend == "eager" for m in stas)
    torch.testing.assert_close(fused, model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="convert: backend must be one of"):
        meranet_fast.convert(model, backend="fused")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_auto_backend_on_cuda():
    x, w, b = _inputs((2, 3, 4, 5, 6), k=5, device="cuda", dtype=torch.float32)
    chosen = backends.resolve_backend("auto", x.device)
    assert chosen in ("cuda", "triton", "eager")
    _close(st_attention(x, w, b), _ref(x, w, b), 2e-5, "out")
