"""meranet_fast.ops.channel_attention: the fused op against the eager reference (values, gradients of y and
every weight), gradcheck, opcheck, torch.compile, autocast, awkward shapes, layouts, bad inputs.

Triton tests run under TRITON_INTERPRET=1 (or on a GPU) on tiny shapes and are marked ``triton``.
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp
from fixtures.devices import on_device

from meranet_fast import _extension
from meranet_fast.ops import backends, channel_attention, channel_attention_with_map
from meranet_fast.ops.backends import backend_status, resolve_backend
from meranet_fast.ops.reference import channel_attention_reference

LAYOUTS = ("contiguous", "channels_last_3d", "sliced")


def make_input(shape, dtype, layout):
    if layout == "sliced":  # a non-dense view: every other W column of a wider tensor
        n, c, t, h, w = shape
        return torch.randn(n, c, t, h, 2 * w, dtype=dtype)[..., ::2]
    y = torch.randn(shape, dtype=dtype)
    if layout == "channels_last_3d":
        y = y.contiguous(memory_format=torch.channels_last_3d)
    return y


def distinct_input(shape, dtype, layout="contiguous"):
    """Values k/16 with distinct integers k along T*H*W of every (n, c): exact in bf16/fp16 and free of
    ties, so the argmax-tie convention (first index vs eager's even split) does not enter comparisons."""
    n, c, t, h, w = shape
    s = t * h * w
    y = torch.stack([torch.randperm(s) for _ in range(n * c)]).sub(s // 2).to(dtype).div(16)
    y = y.reshape(shape)
    return y.contiguous(memory_format=torch.channels_last_3d) if layout == "channels_last_3d" else y


def make_weights(c, reduction=16, dtype=torch.float32, bias=True):
    hidden = max(1, c // reduction)
    w_reduce = torch.randn(hidden, c, dtype=dtype) / c ** 0.5
    w_expand = torch.randn(c, hidden, dtype=dtype) / hidden ** 0.5
    b_reduce = 0.1 * torch.randn(hidden, dtype=dtype) if bias else None
    b_expand = 0.1 * torch.randn(c, dtype=dtype) if bias else None
    return [w_reduce, b_reduce, w_expand, b_expand]


def _leaves(tensors):
    return [t.detach().requires_grad_() if t is not None else None for t in tensors]


def run(fn, y, weights, grad_out, grad_a=None, **kwargs):
    """(out, a, grads of y and each present weight) of fn = fused / reference."""
    y = y.detach().requires_grad_()  # detach() keeps the strides (a clone of a sliced view would not)
    weights = _leaves(weights)
    out, a = fn(y, *weights, **kwargs)
    loss = (out * grad_out).sum()
    if grad_a is not None:
        loss = loss + (a * grad_a).sum()
    inputs = [y] + [w for w in weights if w is not None]
    return out, a, torch.autograd.grad(loss, inputs)


def assert_matches_reference(y, weights, atol, rtol, backend="cpp", with_grad_a=False):
    grad_out = torch.randn(y.shape, dtype=y.dtype).to(y.device)
    grad_a = torch.randn(y.shape[:2], dtype=y.dtype).to(y.device) if with_grad_a else None
    out, a, grads = run(channel_attention_with_map, y, weights, grad_out, grad_a, backend=backend)
    rout, ra, rgrads = run(channel_attention_reference, y, weights, grad_out, grad_a)
    torch.testing.assert_close(out, rout, atol=atol, rtol=rtol)
    torch.testing.assert_close(a, ra, atol=atol, rtol=rtol)
    names = ["y"] + [n for n, w in zip(("w_reduce", "b_reduce", "w_expand", "b_expand"), weights) if w is not None]
    for name, g, rg in zip(names, grads, rgrads):
        torch.testing.assert_close(g, rg, atol=atol, rtol=rtol, msg=lambda m, name=name: f"grad {name}: {m}")
    return out


# (shape, reduction): T=1, odd sizes, C=16 with r=16 (hidden 1), C=18 not a multiple of 16, C=1, 1x1x1
SHAPES = [
    ((2, 20, 3, 5, 7), 4),
    ((1, 16, 1, 4, 4), 16),
    ((2, 18, 2, 3, 5), 16),
    ((3, 1, 2, 3, 3), 16),
    ((2, 6, 1, 1, 1), 2),
]


@needs_cpp
@pytest.mark.parametrize("shape,reduction", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(shape, reduction, layout, dtype):
    y = make_input(shape, dtype, layout)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    out = assert_matches_reference(y, make_weights(shape[1], reduction, dtype), **tol)
    if layout == "channels_last_3d" and shape[1] > 1 and shape[2] * shape[3] * shape[4] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        assert out.is_contiguous()


@needs_cpp
@pytest.mark.parametrize("bias", [False, True])
def test_cpp_without_biases_and_grad_through_map(bias):
    y = make_input((2, 12, 2, 3, 4), torch.float64, "contiguous")
    assert_matches_reference(y, make_weights(12, 4, torch.float64, bias=bias), atol=1e-10, rtol=1e-9,
                             with_grad_a=True)


@needs_cpp
@pytest.mark.parametrize("n", [2, 16])  # 2 * N * C * C/r multiply-adds: 2^16 (CPU loops), 2^19 (ATen GEMM)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_cpp_network_loops_and_gemm_match_reference(n, dtype, bias):
    """The network runs as plain loops up to 2^18 multiply-adds a product on CPU, as ATen ops above
    (csrc/cpu/ca_network_cpu.cpp): both sides of the limit, with and without biases, gradient of a too."""
    y = make_input((n, 512, 1, 2, 2), dtype, "contiguous")
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    assert_matches_reference(y, make_weights(512, 16, dtype, bias), **tol, with_grad_a=True)


@needs_cpp
def test_cpp_chunked_positions_match_reference():
    """More positions than one CPU task's chunk (1024): the fixed-order combination of partials."""
    for layout in ("contiguous", "channels_last_3d"):
        y = make_input((1, 3, 3, 20, 40), torch.float64, layout)
        assert_matches_reference(y, make_weights(3, 2, torch.float64), atol=1e-10, rtol=1e-9)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_cpp_low_precision_within_twice_eager_error(dtype, layout):
    """Fused error vs a float64 reference stays within 2x eager's error in the same dtype (+ eps)."""
    shape = (2, 32, 2, 5, 6)
    y = distinct_input(shape, dtype, layout)
    weights = make_weights(32, 16, dtype)
    grad_out = torch.randn(shape, dtype=dtype)
    fused = run(channel_attention_with_map, y, weights, grad_out, backend="cpp")
    eager = run(channel_attention_reference, y, weights, grad_out)
    exact = run(channel_attention_reference, y.double(), [w.double() for w in weights], grad_out.double())
    eps = 1e-3
    for got, low, ref in zip([fused[0], fused[1], *fused[2]], [eager[0], eager[1], *eager[2]],
                             [exact[0], exact[1], *exact[2]]):
        assert got.dtype == dtype
        err = (got.double() - ref).abs().max().item()
        err_eager = (low.double() - ref).abs().max().item()
        assert err <= 2 * err_eager + eps * max(1.0, ref.abs().max().item()), (err, err_eager)


@needs_cpp
def test_cpp_gradcheck_float64():
    y = torch.randn(2, 6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weights = _leaves(make_weights(6, 3, torch.float64))

    def fn(y, w_reduce, b_reduce, w_expand, b_expand):
        out, a = channel_attention_with_map(y, w_reduce, b_reduce, w_expand, b_expand, backend="cpp")
        return out, a

    assert torch.autograd.gradcheck(fn, (y, *weights), eps=1e-6, atol=1e-6)


@needs_cpp
def test_opcheck_composite_and_kernel_ops():
    y = torch.randn(2, 8, 2, 3, 3)
    w_reduce, b_reduce, w_expand, b_expand = _leaves(make_weights(8, 4))
    yg = y.clone().requires_grad_()
    torch.library.opcheck(torch.ops.meranet.channel_attention.default,
                          (yg, w_reduce, b_reduce, w_expand, b_expand, "cpp"))
    torch.library.opcheck(torch.ops.meranet.channel_attention.default, (yg, w_reduce, None, w_expand, None, "cpp"))
    w_reduce, b_reduce, w_expand, b_expand = make_weights(8, 4)  # the backward op has no derivative
    out, a_map, avg_map, max_map, argmax_map = torch.ops.meranet.channel_attention(
        y, w_reduce, b_reduce, w_expand, b_expand, "cpp")
    grads = (torch.randn_like(out), torch.randn_like(a_map), torch.randn_like(avg_map), torch.randn_like(max_map))
    for given in (grads, (grads[0], None, None, None), (None, grads[1], None, None)):  # absent output gradients
        for biases in ((b_reduce, b_expand), (None, None)):
            torch.library.opcheck(torch.ops.meranet.channel_attention_backward.default,
                                  (*given, y, w_reduce, biases[0], w_expand, biases[1], a_map, avg_map, max_map,
                                   argmax_map, "cpp"))
    avg, mx, argmax = torch.ops.meranet.ca_pool(y)
    a = torch.rand(2, 8)
    g = torch.randn_like(y)
    for op, args in (
        (torch.ops.meranet.ca_pool.default, (y,)),
        (torch.ops.meranet.ca_pool.default, (y.contiguous(memory_format=torch.channels_last_3d),)),
        (torch.ops.meranet.ca_scale.default, (y, a)),
        (torch.ops.meranet.ca_scale_grad.default, (g, y, None, None, None)),
        (torch.ops.meranet.ca_input_grad.default, (g, a, avg, mx, argmax, None, None, None)),
    ):
        torch.library.opcheck(op, args)


@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_cpp_torch_compile_fullgraph(layout):
    torch._dynamo.reset()
    y = make_input((2, 16, 2, 4, 5), torch.float32, layout)
    weights = make_weights(16, 16)
    grad_out = torch.randn(y.shape)

    def fn(y, w_reduce, b_reduce, w_expand, b_expand):
        out, a = channel_attention_with_map(y, w_reduce, b_reduce, w_expand, b_expand, backend="cpp")
        return out * 2 + a.sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y1, w1 = y.clone().requires_grad_(), _leaves(weights)
    y2, w2 = y.clone().requires_grad_(), _leaves(weights)
    out1 = compiled(y1, *w1)
    out2 = fn(y2, *w2)
    torch.testing.assert_close(out1, out2)
    g1 = torch.autograd.grad((out1 * grad_out).sum(), [y1, *w1])
    g2 = torch.autograd.grad((out2 * grad_out).sum(), [y2, *w2])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@needs_cpp
def test_cpp_autocast_bf16_with_float32_parameters(native_cpu_conv):
    """Under CPU autocast the activations are bf16 while the parameters stay float32."""
    x = torch.randn(2, 3, 2, 6, 6)
    conv = torch.nn.Conv3d(3, 16, 3, padding=1)
    weights = _leaves(make_weights(16, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert y.dtype == torch.bfloat16
        out = channel_attention(y, *weights, backend="cpp")
        ref = channel_attention_reference(y, *weights)[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
    # The gradient reaching the conv output.
    (gy,) = torch.autograd.grad(out.float().sum(), y, retain_graph=True)
    (ref_gy,) = torch.autograd.grad(ref.float().sum(), y)
    assert gy.dtype == torch.bfloat16 and torch.isfinite(gy).all()
    # Per (n, c) totals: bf16 values tie often, and the op gives a tied max's gradient to the first
    # position where eager amax splits it (test_cpp_ties_send_max_gradient_to_first_position).
    torch.testing.assert_close(gy.float().sum(dim=(2, 3, 4)), ref_gy.float().sum(dim=(2, 3, 4)), atol=5e-2, rtol=3e-2)
    out.float().sum().backward()
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in weights)
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@needs_cpp
def test_cpp_ties_send_max_gradient_to_first_position():
    """Constant y: eager amax splits the max gradient among the tied positions, the fused op gives it
    all to the first one; the total gradient and every other position agree up to that move."""
    y = torch.full((1, 4, 1, 2, 3), 0.5, dtype=torch.float64)
    weights = make_weights(4, 2, torch.float64, bias=False)
    weights[0] = weights[0].abs()  # hidden pre-activations > 0: the max path carries gradient
    grad_out = torch.randn(y.shape, dtype=torch.float64)
    _, _, (gy, *_) = run(channel_attention_with_map, y, weights, grad_out, backend="cpp")
    _, _, (rgy, *_) = run(channel_attention_reference, y, weights, grad_out)
    torch.testing.assert_close(gy.sum(dim=(2, 3, 4)), rgy.sum(dim=(2, 3, 4)))
    diff = (gy - rgy).flatten(2)  # the moved max gradient: +m (S-1)/S at s = 0, -m/S elsewhere
    torch.testing.assert_close(diff[..., 1:], diff[..., 1:2].expand_as(diff[..., 1:]))
    assert diff[..., 1:].abs().max() > 1e-6


@needs_cpp
def test_cpp_deterministic_and_empty_batch():
    y = make_input((2, 8, 3, 17, 31), torch.float32, "channels_last_3d")
    weights = make_weights(8, 4)
    grad_out = torch.randn(y.shape)
    first = run(channel_attention_with_map, y, weights, grad_out, backend="cpp")
    second = run(channel_attention_with_map, y, weights, grad_out, backend="cpp")
    for a, b in zip([first[0], first[1], *first[2]], [second[0], second[1], *second[2]]):
        assert torch.equal(a, b)
    empty = torch.randn(0, 8, 2, 3, 3, requires_grad=True)
    out = channel_attention(empty, *weights, backend="cpp")
    assert out.shape == empty.shape
    out.sum().backward()
    assert empty.grad.shape == empty.shape


def test_eager_backend_is_the_reference():
    y = torch.randn(1, 4, 2, 2, 2)
    weights = make_weights(4, 2)
    torch.testing.assert_close(channel_attention(y, *weights, backend="eager"),
                               channel_attention_reference(y, *weights)[0])
    assert resolve_backend("auto", "cpu", op="channel_attention") == ("cpp" if _extension.is_loaded() else "eager")


@needs_cpp
def test_double_backward_is_refused_by_name():
    y = torch.randn(1, 8, 2, 3, 3, requires_grad=True)
    out = channel_attention(y, *make_weights(8, 4), backend="cpp")
    with pytest.raises(RuntimeError, match=r"meranet::channel_attention_backward has no derivative: double backward"):
        torch.autograd.grad(out.sum(), y, create_graph=True)


@pytest.mark.parametrize("op", ["channel_attention", "ra_tail"])
def test_composed_operators_need_the_extension(op, monkeypatch):
    """Without meranet_fast._C (it holds the C++ composition and autograd), "auto" falls back to the eager
    reference and a compiled or Triton backend is refused with the reason and the build hint."""
    from meranet_fast.ops import ra_tail
    from meranet_fast.ops.reference import ra_tail_reference

    y = torch.randn(1, 8, 2, 3, 3)
    args = [y, *make_weights(8, 4)]
    fn, ref = channel_attention, lambda *a: channel_attention_reference(*a)[0]
    if op == "ra_tail":
        args = [y, torch.randn_like(y), *make_weights(8, 4), torch.randn(1, 2, 3, 3, 3), None]
        fn, ref = ra_tail, ra_tail_reference
    monkeypatch.setattr(backends, "_CPP_LOADED", False)  # what the registry sees without _C
    monkeypatch.setattr(_extension, "LOAD_ERROR", "ImportError: test")
    torch.testing.assert_close(fn(*args, backend="auto"), ref(*args))
    # triton: where it runs CPU tensors (the interpreter)
    for backend in ("cpp", "triton") if backend_status("triton", torch.device("cpu"))[0] else ("cpp",):
        with pytest.raises(RuntimeError, match=f"{op}: backend '{backend}' is not available: .*meranet_fast._C"):
            fn(*args, backend=backend)


# The bad-input table of the public function: tests/test_bad_inputs.py.


@needs_cpp
def test_kernel_ops_check_their_arguments():
    y = torch.randn(1, 4, 2, 2, 2)
    with pytest.raises(RuntimeError, match="ca_scale: scale must be Float"):
        torch.ops.meranet.ca_scale(y, torch.rand(1, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="ca_scale: scale must be"):
        torch.ops.meranet.ca_scale(y, torch.rand(1, 5))
    with pytest.raises(RuntimeError, match="ca_scale_grad: grad shape"):
        torch.ops.meranet.ca_scale_grad(torch.randn(1, 4, 2, 2, 1), y, None, None, None)
    with pytest.raises(RuntimeError, match="given together"):
        torch.ops.meranet.ca_scale_grad(y, y, torch.rand(1, 1, 2, 2, 2), None, None)
    with pytest.raises(RuntimeError, match="ca_pool: y must be a 5-D"):
        torch.ops.meranet.ca_pool(torch.randn(4, 2, 2, 2))


# Triton: CPU tensors under the interpreter, CUDA tensors on a GPU (the triton_device fixture).
@pytest.mark.triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,reduction", [((2, 20, 3, 5, 7), 4), ((1, 16, 1, 3, 4), 16), ((2, 18, 2, 3, 5), 16)])
def test_triton_matches_reference(shape, reduction, layout, triton_device):
    y = on_device(make_input(shape, torch.float32, layout), triton_device)
    weights = [on_device(w, triton_device) for w in make_weights(shape[1], reduction)]
    assert_matches_reference(y, weights, atol=1e-5, rtol=1e-4, backend="triton", with_grad_a=True)


@pytest.mark.triton
def test_triton_bf16_within_twice_eager_error(triton_device):
    shape = (1, 32, 2, 4, 5)
    y = distinct_input(shape, torch.bfloat16).to(triton_device)
    weights = [w.to(triton_device) for w in make_weights(32, 16, torch.bfloat16)]
    grad_out = torch.randn(shape, dtype=torch.bfloat16).to(triton_device)
    fused = run(channel_attention_with_map, y, weights, grad_out, backend="triton")
    eager = run(channel_attention_reference, y, weights, grad_out)
    exact = run(channel_attention_reference, y.double(), [w.double() for w in weights], grad_out.double())
    for got, low, ref in zip([fused[0], *fused[2]], [eager[0], *eager[2]], [exact[0], *exact[2]]):
        err = (got.double() - ref).abs().max().item()
        err_eager = (low.double() - ref).abs().max().item()
        assert err <= 2 * err_eager + 1e-3 * max(1.0, ref.abs().max().item()), (err, err_eager)
