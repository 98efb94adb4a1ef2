"""Triton backend of the fused spatio-temporal attention op against the eager reference.

On CPU these run under the Triton interpreter, which must be switched on before triton is imported:
    TRITON_INTERPRET=1 python -m pytest tests/test_st_attention_triton.py
Shapes are tiny because the interpreter is slow. The torch.compile / opcheck tests need a GPU.
"""
import os

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRET
if not (INTERPRET or ON_GPU):
    pytest.skip(
        "Triton tests need a CUDA device or the CPU interpreter (run with TRITON_INTERPRET=1)",
        allow_module_level=True,
    )
pytest.importorskip("triton")

from meranet_fast.ops.backends import backend_status  # noqa: E402
from meranet_fast.ops.reference import st_attention_reference  # noqa: E402
from meranet_fast.ops.triton.st_attention import autotune_enabled, check_st_attention_inputs  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = "cuda" if ON_GPU else "cpu"
fwd = torch.ops.meranet.st_attention_fwd_triton
bwd = torch.ops.meranet.st_attention_bwd_triton


def make_inputs(shape, k, bias=True, dtype=torch.float32, seed=0):
    """x, weight, bias (or None) and an upstream gradient g, all on DEVICE in dtype."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    weight = torch.randn(1, 2, k, k, k, generator=gen) / k  # keeps the logits O(1)
    b = torch.randn(1, generator=gen) if bias else None
    g = torch.randn(shape, generator=gen)
    return tuple(t if t is None else t.to(DEVICE, dtype) for t in (x, weight, b, g))


def make_untied_inputs(shape, k, dtype):
    """make_inputs with the first seed whose channel max is unique everywhere once rounded to dtype:
    on a tie eager amax splits the gradient while the op gives it to the first index (tested apart)."""
    for seed in range(100):
        x, weight, b, g = make_inputs(shape, k, dtype=dtype, seed=seed)
        if ((x == x.amax(1, keepdim=True)).sum(1) == 1).all():
            return x, weight, b, g
    raise AssertionError(f"no tie-free {dtype} input of shape {shape} in 100 seeds")


def reference(x, weight, bias, g, dtype=torch.float64, fn=st_attention_reference):
    """(out, attn, grad_x, grad_weight, grad_bias) of eager autograd in dtype; a zero bias stands in
    for None (same values) so that grad_bias is always defined."""
    if bias is None:
        bias = weight.new_zeros(1)
    x, weight, bias = (t.detach().to(dtype).requires_grad_() for t in (x, weight, bias))
    out, attn = fn(x, weight, bias)
    grads = torch.autograd.grad(out, (x, weight, bias), g.to(dtype))
    return (out, attn, *grads)


def fused(x, weight, bias, g):
    """(out, attn, grad_x, grad_weight, grad_bias, pooled, argmax) from the two Triton ops."""
    out, attn, pooled, argmax = fwd(x, weight, bias)
    grad_x, grad_weight, grad_bias = bwd(g, x, weight, attn, pooled, argmax)
    return out, attn, grad_x, grad_weight, grad_bias, pooled, argmax


def assert_matches_reference(x, weight, bias, g, rtol=1e-4, atol=1e-4):
    got = fused(x, weight, bias, g)
    names = ("out", "attn", "grad_x", "grad_weight", "grad_bias")
    for name, actual, expected in zip(names, got, reference(x, weight, bias, g)):
        torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return got


def assert_within_twice_eager(got, eager, exact, dtype):
    """The low-precision rule of docs/design.md §6 on (out, attn, grad_x, grad_weight, grad_bias): the fused error
    against fp64 stays within 2x the error of eager PyTorch in dtype, plus one ulp of the magnitude."""
    for name, f, e, ref in zip(("out", "attn", "grad_x", "grad_weight", "grad_bias"), got, eager, exact):
        fused_err = (f.double() - ref).abs().max().item()
        eager_err = (e.double() - ref).abs().max().item()
        slack = torch.finfo(dtype).eps * ref.abs().max().item()
        assert fused_err <= 2 * eager_err + slack, (name, fused_err, eager_err)


# (N, C, T, H, W), k, bias
CASES = [
    ((2, 5, 5, 6, 7), 5, True),  # odd T/H/W
    ((1, 1, 4, 5, 3), 3, True),  # C = 1
    ((2, 3, 1, 6, 5), 5, False),  # T = 1, no bias
    ((1, 4, 2, 3, 2), 7, True),  # every T/H/W smaller than k
    ((1, 6, 3, 4, 5), 3, False),
    ((2, 8, 7, 7, 7), 7, True),
    ((1, 20, 2, 3, 3), 3, True),  # C spans two channel chunks of the default config (BLOCK_C=16)
    ((1, 2, 1, 1, 1), 5, True),  # a single position
]


@pytest.mark.parametrize("shape,k,bias", CASES, ids=[f"{'x'.join(map(str, s))}-k{k}" for s, k, _ in CASES])
def test_forward_and_gradients_match_reference(shape, k, bias):
    x, weight, b, g = make_inputs(shape, k, bias)
    out, attn, _, _, _, pooled, argmax = assert_matches_reference(x, weight, b, g)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert attn.dtype == torch.float32 and attn.shape == (shape[0], 1, *shape[2:]) and attn.is_contiguous()
    torch.testing.assert_close(pooled[:, 0], x.double().mean(1).float(), rtol=1e-6, atol=1e-6)
    assert torch.equal(pooled[:, 1], x.amax(1).float())
    assert argmax.dtype == torch.int32 and torch.equal(argmax.long(), x.argmax(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
def test_low_precision_error_within_twice_eager(dtype, channels_last):
    x, weight, b, g = make_untied_inputs((2, 8, 5, 6, 7), 5, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    exact = reference(x, weight, b, g)
    eager = reference(x, weight, b, g, dtype=dtype)
    got = fused(x, weight, b, g)
    assert got[0].dtype == dtype and got[2].dtype == dtype and got[3].dtype == dtype
    assert_within_twice_eager(got, eager, exact, dtype)


def _channels_last(x, g):
    return x.to(memory_format=torch.channels_last_3d), g.to(memory_format=torch.channels_last_3d)


def _sliced(x, g):
    return x[:, 1:, :, 1:, ::2], g[:, 1:, :, 1:, ::2]


def _expanded_grad(x, g):  # what out.sum().backward() hands the op: every stride 0
    return x, g[:1, :1, :1, :1, :1].expand_as(x)


@pytest.mark.parametrize("layout", [_channels_last, _sliced, _expanded_grad], ids=lambda f: f.__name__.strip("_"))
def test_strided_inputs(layout):
    x, weight, b, g = make_inputs((2, 6, 3, 7, 9), 3)
    x, g = layout(x, g)
    out, _, grad_x, *_ = assert_matches_reference(x, weight, b, g)
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        assert grad_x.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        assert out.is_contiguous() and grad_x.is_contiguous()


@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 6), (2, 3, 0, 5, 6), (1, 2, 3, 0, 4)])
def test_empty_inputs(shape):
    x, weight, b, g = make_inputs(shape, 3)
    out, attn, pooled, argmax = fwd(x, weight, b)
    n, _, t, h, w = shape
    assert out.shape == shape and attn.shape == (n, 1, t, h, w)
    assert pooled.shape == (n, 2, t, h, w) and argmax.shape == (n, t, h, w)
    grad_x, grad_weight, grad_bias = bwd(g, x, weight, attn, pooled, argmax)
    assert grad_x.shape == shape
    assert torch.equal(grad_weight, torch.zeros_like(weight)) and torch.equal(grad_bias, weight.new_zeros(1))


def _first_max_reference(x, weight, bias):
    """The op's documented semantics: the max map's gradient goes to the FIRST maximal channel."""
    peak = x.gather(1, x.argmax(1, keepdim=True))
    pooled = torch.cat([x.mean(1, keepdim=True), peak], 1)
    attn = torch.sigmoid(F.conv3d(pooled, weight, bias, padding=weight.shape[-1] // 2))
    return x * attn, attn


def test_channel_max_ties_route_gradient_to_first_index():
    x, weight, b, g = make_inputs((1, 20, 2, 3, 3), 3)
    x = torch.randint(-2, 3, x.shape, generator=torch.Generator().manual_seed(1)).to(x)
    x[:, 19] = x[:, :19].amax(1)  # a tie at every position
    x[:, 3, 0] = x[:, 18, 0] = 5.0  # ties across the two channel chunks of the default config
    assert ((x == x.amax(1, keepdim=True)).sum(1) > 1).all(), "every position should hold a tie"
    got = fused(x, weight, b, g)
    assert torch.equal(got[-1].long(), x.argmax(1)) and (got[-1][:, 0] == 3).all()
    for name, actual, expected in zip(
        ("out", "attn", "grad_x", "grad_weight", "grad_bias"), got, reference(x, weight, b, g, fn=_first_max_reference)
    ):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # eager amax splits tied gradients evenly, so it must disagree here
    assert not torch.allclose(got[2].double(), reference(x, weight, b, g)[2], atol=1e-3)


def test_backward_is_deterministic():
    shape = (4, 32, 8, 16, 16) if ON_GPU else (2, 8, 7, 7, 7)
    x, weight, b, g = make_inputs(shape, 5)
    _, attn, pooled, argmax = fwd(x, weight, b)
    first = bwd(g, x, weight, attn, pooled, argmax)
    second = bwd(g, x, weight, attn, pooled, argmax)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _valid():
    return make_inputs((1, 2, 3, 4, 5), 3)[:3]


BAD_FORWARD_INPUTS = [
    (lambda x, w, b: (x[0], w, b), ValueError, "x must be a 5-D tensor"),
    (lambda x, w, b: (x.long(), w, b), TypeError, "x must be a floating-point tensor"),
    (lambda x, w, b: (x.double(), w.double(), b.double()), TypeError, "x must be float32"),
    (lambda x, w, b: (x[:, :0], w, b), ValueError, "x must have at least one channel"),
    (lambda x, w, b: (x, w[:, :, :2, :2, :2], b), ValueError, "kernel size k must be 3, 5 or 7"),  # even k
    (lambda x, w, b: (x, w.new_zeros(1, 2, 9, 9, 9), b), ValueError, "kernel size k must be 3, 5 or 7"),
    (lambda x, w, b: (x, w.new_zeros(1, 2, 3, 5, 5), b), ValueError, "weight must have shape"),
    (lambda x, w, b: (x, w.new_zeros(2, 2, 3, 3, 3), b), ValueError, "weight must have shape"),
    (lambda x, w, b: (x, w.half(), b), TypeError, "weight dtype"),
    (lambda x, w, b: (x, w.to("meta"), b), ValueError, "weight is on"),
    (lambda x, w, b: (x, w, b.new_zeros(2)), ValueError, "bias must have shape"),
    (lambda x, w, b: (x, w, b.half()), TypeError, "bias dtype"),
]


@pytest.mark.parametrize("bad,error,message", BAD_FORWARD_INPUTS)
def test_bad_forward_inputs_name_the_argument(bad, error, message):
    with pytest.raises(error, match=message):
        fwd(*bad(*_valid()))


def test_non_tensor_inputs_name_the_argument():
    x, w, b = _valid()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        check_st_attention_inputs(x.tolist(), w, b)
    with pytest.raises(TypeError, match="bias must be a torch.Tensor or None"):
        check_st_attention_inputs(x, w, 0.5)


def test_bad_backward_inputs_name_the_argument():
    x, w, b = _valid()
    _, attn, pooled, argmax = fwd(x, w, b)
    with pytest.raises(ValueError, match="grad_out must be"):
        bwd(x[:, :1], x, w, attn, pooled, argmax)
    with pytest.raises(ValueError, match="argmax must be"):
        bwd(x, x, w, attn, pooled, argmax.long())
    with pytest.raises(ValueError, match="pooled must be"):
        bwd(x, x, w, attn, pooled[:, :1], argmax)


def test_availability_and_autotune_switch(monkeypatch):
    available, reason = backend_status("triton", DEVICE)
    assert available, reason
    assert autotune_enabled() is (not INTERPRET)
    monkeypatch.setenv("MERANET_TRITON_AUTOTUNE", "0")
    assert not autotune_enabled()


# The remaining opcheck utility, test_aot_dispatch_dynamic, compiles the op: GPU only (TestOnGPU).
EAGER_OPCHECKS = ("test_schema", "test_faketensor", "test_autograd_registration")


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
def test_opcheck_schema_and_fake_kernels(channels_last):
    x, weight, b, g = make_inputs((2, 4, 3, 5, 6), 3)
    if channels_last:
        x, g = _channels_last(x, g)
    torch.library.opcheck(fwd, (x, weight, b), test_utils=EAGER_OPCHECKS)
    torch.library.opcheck(fwd, (x, weight, None), test_utils=EAGER_OPCHECKS)
    _, attn, pooled, argmax = fwd(x, weight, b)
    torch.library.opcheck(bwd, (g, x, weight, attn, pooled, argmax), test_utils=EAGER_OPCHECKS)


@pytest.mark.skipif(not ON_GPU, reason="torch.compile / opcheck over a triton_op need a CUDA device")
class TestOnGPU:
    @pytest.mark.parametrize("autotune", ["1", "0"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
    def test_model_sized_inputs(self, monkeypatch, autotune, dtype, channels_last):
        monkeypatch.setenv("MERANET_TRITON_AUTOTUNE", autotune)
        x, weight, b, g = make_inputs((2, 64, 8, 14, 14), 5, dtype=dtype)
        if channels_last:
            x, g = _channels_last(x, g)
        if dtype == torch.float32:
            assert_matches_reference(x, weight, b, g)
            return
        # 64 bf16 channels tie somewhere for any seed: compare with the first-index semantics
        exact = reference(x, weight, b, g, fn=_first_max_reference)
        eager = reference(x, weight, b, g, dtype=dtype, fn=_first_max_reference)
        assert_within_twice_eager(fused(x, weight, b, g), eager, exact, dtype)

    def test_compile_fullgraph(self):
        x, weight, b, g = make_inputs((2, 8, 5, 6, 7), 5)

        def step(x, weight, b, g):
            out, attn, pooled, argmax = fwd(x, weight, b)
            return (out * 2, *bwd(g, x, weight, attn, pooled, argmax))

        compiled = torch.compile(step, fullgraph=True)
        for actual, expected in zip(compiled(x, weight, b, g), step(x, weight, b, g)):
            torch.testing.assert_close(actual, expected)

    @pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
    @pytest.mark.parametrize("bias", [True, False])
    def test_opcheck(self, channels_last, bias):
        x, weight, b, g = make_inputs((2, 4, 3, 5, 6), 3, bias)
        if channels_last:
            x, g = _channels_last(x, g)
        torch.library.opcheck(fwd, (x, weight, b))
        _, attn, pooled, argmax = fwd(x, weight, b)
        torch.library.opcheck(bwd, (g, x, weight, attn, pooled, argmax))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_triton_pools_propagate_nan_like_the_cpp_kernels(layout):
    """All three Triton pools (st_attention's and ra_pool over channels, ca_pool over positions) follow
    torch.amax and the C++ kernels: a NaN is the maximum and the first NaN gets the argmax, also when the
    NaNs lie in different chunks (16 channels / 128 positions per chunk under the interpreter)."""
    import meranet_fast.ops.triton.channel_attention  # noqa: F401  (registers the ops)
    import meranet_fast.ops.triton.ra_tail  # noqa: F401
    from meranet_fast import _extension

    if not _extension.is_loaded():
        pytest.skip("the C++ kernels to compare with are not built")
    nan = float("nan")
    y = torch.randn(2, 40, 1, 12, 25)  # C = 40: three channel chunks; S = 300: three position chunks
    y[0, 1, 0, 8, 0] = y[0, 1, 0, 10, 20] = nan  # channel 1 of sample 0: positions 200 (first) and 270
    y[0, 3, 0, 5, 5] = y[0, 3, 0, 0, 5] = nan  # positions 130 and 5 (first)
    y[1, 35, 0, 0, 7] = y[1, 20, 0, 0, 7] = nan  # position 7 of sample 1: channels 20 (first) and 35
    y[1, 33, 0, 6, 0] = y[1, 3, 0, 6, 0] = nan  # position 150: channels 3 (first) and 33
    if layout == "channels_last_3d":
        y = y.contiguous(memory_format=torch.channels_last_3d)
    scale = torch.rand(2, 40) + 0.5
    weight = torch.randn(1, 2, 3, 3, 3) / 3
    on = lambda *ts: [t.to(DEVICE) for t in ts]  # noqa: E731
    checks = [
        (torch.ops.meranet.ca_pool_triton(*on(y))[1:], torch.ops.meranet.ca_pool(y)[1:]),
        (torch.ops.meranet.ra_pool_triton(*on(y, scale)), torch.ops.meranet.ra_pool(y, scale)),
        (fwd(*on(y, weight), None)[2:], torch.ops.meranet.st_attention_fwd(y, weight, None)[2:]),
    ]
    for (t_max, t_idx), (c_max, c_idx) in checks:
        torch.testing.assert_close(t_max.cpu(), c_max, equal_nan=True)
        assert torch.equal(t_idx.cpu(), c_idx)
    _, ca_max, ca_idx = torch.ops.meranet.ca_pool(y)
    assert ca_max[0, 1].isnan() and ca_idx[0, 1] == 200 and ca_idx[0, 3] == 5
    _, ra_idx = torch.ops.meranet.ra_pool(y, scale)
    assert ra_idx[1, 0, 0, 7] == 20 and ra_idx[1, 0, 6, 0] == 3
