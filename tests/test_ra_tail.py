"""meranet_fast.ops.ra_tail: relu(STA(CA(y)) + shortcut) in one operator, against the eager reference
(values; gradients of y, shortcut and every weight), gradcheck, opcheck, torch.compile, autocast,
awkward shapes, layouts, bad inputs, and the RA block's tail.

Triton tests run under TRITON_INTERPRET=1 (or on a GPU) on tiny shapes and are marked ``triton``.
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp
from fixtures.devices import on_device

from meranet_fast.ops import ra_tail
from meranet_fast.ops.reference import ra_tail_reference

NAMES = ("y", "shortcut", "w_reduce", "b_reduce", "w_expand", "b_expand", "st_weight", "st_bias")


def layout_as(t, layout):
    if layout == "channels_last_3d":
        return t.contiguous(memory_format=torch.channels_last_3d)
    if layout == "sliced":  # non-dense view of a wider tensor
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def make_args(shape, reduction=16, k=5, dtype=torch.float32, ca_bias=True, st_bias=True, layout="contiguous",
              shortcut_layout=None):
    """[y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias]; values are spread out so
    no two channels of u = y * a tie for the max."""
    n, c, t, h, w = shape
    hidden = max(1, c // reduction)
    y = layout_as(torch.randn(shape, dtype=dtype), layout)
    shortcut = layout_as(torch.randn(shape, dtype=dtype), shortcut_layout or layout)
    return [
        y, shortcut,
        torch.randn(hidden, c, dtype=dtype) / c ** 0.5,
        0.1 * torch.randn(hidden, dtype=dtype) if ca_bias else None,
        torch.randn(c, hidden, dtype=dtype) / hidden ** 0.5,
        0.1 * torch.randn(c, dtype=dtype) if ca_bias else None,
        torch.randn(1, 2, k, k, k, dtype=dtype) / (2 * k ** 3) ** 0.5 * 2,
        0.1 * torch.randn(1, dtype=dtype) if st_bias else None,
    ]


def run(fn, args, grad_out, **kwargs):
    # detach() keeps the strides (a clone of a sliced view would be contiguous)
    leaves = [a.detach().requires_grad_() if a is not None else None for a in args]
    out = fn(*leaves, **kwargs)
    present = [a for a in leaves if a is not None]
    return out, torch.autograd.grad((out * grad_out).sum(), present)


def assert_matches_reference(args, atol, rtol, backend="cpp"):
    grad_out = torch.randn(args[0].shape, dtype=args[0].dtype).to(args[0].device)
    out, grads = run(ra_tail, args, grad_out, backend=backend)
    rout, rgrads = run(ra_tail_reference, args, grad_out)
    torch.testing.assert_close(out, rout, atol=atol, rtol=rtol)
    names = [n for n, a in zip(NAMES, args) if a is not None]
    for name, g, rg in zip(names, grads, rgrads):
        torch.testing.assert_close(g, rg, atol=atol, rtol=rtol, msg=lambda m, name=name: f"grad {name}: {m}")
    return out


# (shape, reduction, k): T=1, odd sizes, sizes smaller than the kernel, C=16 r=16 (hidden 1),
# C=18 (not a multiple of 16), C=1, a 1x1x1 volume.
SHAPES = [
    ((2, 20, 3, 5, 7), 4, 5),
    ((1, 16, 1, 4, 4), 16, 3),
    ((2, 18, 2, 3, 5), 16, 7),
    ((2, 1, 2, 3, 3), 16, 3),
    ((1, 6, 1, 1, 1), 2, 5),
]


@needs_cpp
@pytest.mark.parametrize("shape,reduction,k", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(shape, reduction, k, layout, dtype):
    args = make_args(shape, reduction, k, dtype, layout=layout)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    out = assert_matches_reference(args, **tol)
    dense_cl = layout == "channels_last_3d" and not args[0].is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last_3d if dense_cl else torch.contiguous_format)


@needs_cpp
@pytest.mark.parametrize("ca_bias,st_bias", [(False, False), (True, False), (False, True)])
def test_cpp_without_biases(ca_bias, st_bias):
    args = make_args((2, 12, 2, 3, 4), 4, 3, torch.float64, ca_bias=ca_bias, st_bias=st_bias)
    assert_matches_reference(args, atol=1e-10, rtol=1e-9)


@needs_cpp
@pytest.mark.parametrize("y_layout,sc_layout", [("contiguous", "channels_last_3d"), ("channels_last_3d", "sliced")])
def test_cpp_mixed_layouts(y_layout, sc_layout):
    args = make_args((2, 8, 2, 3, 5), 4, 3, torch.float64, layout=y_layout, shortcut_layout=sc_layout)
    assert_matches_reference(args, atol=1e-10, rtol=1e-9)


@needs_cpp
def test_cpp_chunked_positions_match_reference():
    """More positions than one CPU task's chunk (1024) in both layouts."""
    for layout in ("contiguous", "channels_last_3d"):
        args = make_args((1, 3, 3, 20, 40), 2, 5, torch.float64, layout=layout)
        assert_matches_reference(args, atol=1e-10, rtol=1e-9)


def distinct_args(shape, dtype, layout):
    """Arguments whose y values are distinct multiples of 1/16 along every pooled axis (exact in bf16,
    no ties in either max), with channel-attention weights close to 1 and spread apart."""
    n, c, t, h, w = shape
    s = t * h * w
    y = torch.stack([torch.randperm(s * c) for _ in range(n)]).sub(s * c // 2).div(16).reshape(n, s, c)
    y = y.transpose(1, 2).reshape(shape).to(dtype)
    args = make_args(shape, 16, 5, dtype, layout=layout)
    args[0] = layout_as(y, layout)
    return args


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_cpp_low_precision_within_twice_eager_error(dtype, layout):
    """Fused error vs a float64 reference stays within 2x eager's error in the same dtype (+ eps)."""
    shape = (2, 32, 2, 4, 5)
    args = distinct_args(shape, dtype, layout)
    grad_out = torch.randn(shape, dtype=dtype)
    out, grads = run(ra_tail, args, grad_out, backend="cpp")
    eout, egrads = run(ra_tail_reference, args, grad_out)
    xout, xgrads = run(ra_tail_reference, [a.double() if a is not None else None for a in args], grad_out.double())
    for name, got, low, ref in zip(NAMES, [out, *grads], [eout, *egrads], [xout, *xgrads]):
        assert got.dtype == dtype
        err = (got.double() - ref).abs().max().item()
        err_eager = (low.double() - ref).abs().max().item()
        assert err <= 2 * err_eager + 1e-3 * max(1.0, ref.abs().max().item()), (name, err, err_eager)


@needs_cpp
def test_cpp_gradcheck_float64():
    args = [a.requires_grad_() for a in make_args((2, 6, 2, 3, 3), 3, 3, torch.float64)]

    def fn(*a):
        return ra_tail(*a, backend="cpp")

    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6)


@needs_cpp
def test_opcheck_composite_and_kernel_ops():
    args = make_args((2, 8, 2, 3, 3), 4, 3)
    leaves = [a.clone().requires_grad_() for a in args]
    torch.library.opcheck(torch.ops.meranet.ra_tail.default, (*leaves, "cpp"))
    no_bias = list(leaves)
    no_bias[3] = no_bias[5] = no_bias[7] = None
    torch.library.opcheck(torch.ops.meranet.ra_tail.default, (*no_bias, "cpp"))
    with torch.no_grad():
        out, *maps = torch.ops.meranet.ra_tail(*args, "cpp")  # detached: the backward op has no derivative
    y_, _, w_reduce, b_reduce, w_expand, b_expand, st_weight, _ = args
    for biases in ((b_reduce, b_expand), (None, None)):
        torch.library.opcheck(torch.ops.meranet.ra_tail_backward.default,
                              (torch.randn_like(out), out, y_, w_reduce, biases[0], w_expand, biases[1], st_weight,
                               *maps, "cpp"))
    y, shortcut, _, _, _, _, w, b = args
    a = torch.rand(2, 8)
    pooled, argmax = torch.ops.meranet.ra_pool(y, a)
    out, attn = torch.ops.meranet.ra_attend(y, shortcut, a, pooled, w, b)
    g = torch.randn_like(y)
    _, grad_pooled, _, _ = torch.ops.meranet.ra_attend_bwd(g, out, y, a, attn, pooled, w)
    for op, op_args in (
        (torch.ops.meranet.ra_pool.default, (y, a)),
        (torch.ops.meranet.ra_attend.default, (y, shortcut, a, pooled, w, b)),
        (torch.ops.meranet.ra_attend_bwd.default, (g, out, y, a, attn, pooled, w)),
        (torch.ops.meranet.ca_scale_grad.default, (g, y, attn, grad_pooled, argmax)),
    ):
        torch.library.opcheck(op, op_args)


@needs_cpp
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_cpp_torch_compile_fullgraph(layout):
    torch._dynamo.reset()
    args = make_args((2, 16, 2, 4, 5), 16, 5, layout=layout)
    grad_out = torch.randn(args[0].shape)

    def fn(*a):
        return ra_tail(*a, backend="cpp") * 2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out1, g1 = run(compiled, args, grad_out)
    out2, g2 = run(fn, args, grad_out)
    torch.testing.assert_close(out1, out2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@needs_cpp
def test_cpp_autocast_bf16_with_float32_parameters(native_cpu_conv):
    x = torch.randn(2, 16, 2, 6, 6)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    params = [p.requires_grad_() for p in make_args((2, 16, 2, 6, 6), 4, 5)[2:]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        shortcut = x.to(torch.bfloat16)
        out = ra_tail(y, shortcut, *params, backend="cpp")
        ref = ra_tail_reference(y, shortcut, *params)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=5e-2, rtol=5e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@needs_cpp
def test_cpp_deterministic_and_empty_batch():
    args = make_args((2, 8, 3, 17, 31), 4, 5, layout="channels_last_3d")
    grad_out = torch.randn(args[0].shape)
    first = run(ra_tail, args, grad_out, backend="cpp")
    second = run(ra_tail, args, grad_out, backend="cpp")
    for a, b in zip([first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b)
    empty = make_args((0, 8, 2, 3, 3), 4, 3)
    out, grads = run(ra_tail, empty, torch.randn(0, 8, 2, 3, 3), backend="cpp")
    assert out.shape == empty[0].shape and grads[0].shape == empty[0].shape


@needs_cpp
def test_double_backward_is_refused_by_name():
    leaves = [a.requires_grad_() for a in make_args((1, 8, 2, 3, 3), 4, 3)]
    out = ra_tail(*leaves, backend="cpp")
    (grad_y,) = torch.autograd.grad(out.sum(), leaves[0])  # a first-order gradient works ...
    assert grad_y.shape == leaves[0].shape
    out = ra_tail(*leaves, backend="cpp")
    refused = r"meranet::ra_tail_backward has no derivative: double backward \(create_graph=True\)"
    with pytest.raises(RuntimeError, match=refused):
        torch.autograd.grad(out.sum(), leaves[0], create_graph=True)  # ... a graph of it is refused


@needs_cpp
def test_operator_names_a_bad_backend():
    args = make_args((1, 4, 2, 3, 3), 4, 3)
    with pytest.raises(RuntimeError, match="ra_tail: backend must be 'cpp', 'cuda' or 'triton', got 'fast'"):
        torch.ops.meranet.ra_tail(*args, "fast")


def test_block_tail_equals_fused_op():
    """The RA block's tail (meranet_fast.nn.BasicBlock3d._attention_tail) is exactly the fused op with the
    block's parameters: this is the call the fused model uses."""
    from meranet_fast.nn import BasicBlock3d

    for shared in ("conv", "mlp"):
        block = BasicBlock3d(16, 16, attention=True, shared=shared).double()
        y = torch.randn(2, 16, 2, 5, 5, dtype=torch.float64)
        identity = torch.randn_like(y)
        expected = block._attention_tail(y, identity)
        got = ra_tail(y, identity, *block.ca.shared_weights(), block.sta.conv.weight, block.sta.conv.bias)
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9)


# The bad-input table of the public function: tests/test_bad_inputs.py.


@needs_cpp
def test_kernel_ops_check_their_arguments():
    y, shortcut, _, _, _, _, w, b = make_args((1, 4, 2, 3, 3), 4, 3)
    a = torch.rand(1, 4)
    pooled, _ = torch.ops.meranet.ra_pool(y, a)
    with pytest.raises(RuntimeError, match="ra_attend: weight kernel size k must be 3, 5 or 7"):
        torch.ops.meranet.ra_attend(y, shortcut, a, pooled, torch.randn(1, 2, 4, 4, 4), b)
    with pytest.raises(RuntimeError, match="ra_attend: pooled must be"):
        torch.ops.meranet.ra_attend(y, shortcut, a, pooled[:, :1], w, b)
    with pytest.raises(RuntimeError, match="ra_attend: shortcut shape"):
        torch.ops.meranet.ra_attend(y, shortcut[:, :2], a, pooled, w, b)
    with pytest.raises(RuntimeError, match="ra_pool: scale must be"):
        torch.ops.meranet.ra_pool(y, torch.rand(1, 4, dtype=torch.float64))


# Triton: CPU tensors under the interpreter, CUDA tensors on a GPU (the triton_device fixture).
@pytest.mark.triton
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced"])
@pytest.mark.parametrize("shape,reduction,k", [((2, 20, 3, 5, 7), 4, 5), ((1, 16, 1, 3, 4), 16, 3),
                                               ((1, 18, 2, 3, 2), 16, 7)])
def test_triton_matches_reference(shape, reduction, k, layout, triton_device):
    args = [on_device(a, triton_device) for a in make_args(shape, reduction, k, layout=layout)]
    assert_matches_reference(args, atol=2e-5, rtol=1e-4, backend="triton")


@pytest.mark.triton
def test_triton_bf16_within_twice_eager_error(triton_device):
    shape = (1, 32, 2, 3, 4)
    args = [on_device(a, triton_device) for a in distinct_args(shape, torch.bfloat16, "contiguous")]
    grad_out = torch.randn(shape, dtype=torch.bfloat16).to(triton_device)
    out, grads = run(ra_tail, args, grad_out, backend="triton")
    eout, egrads = run(ra_tail_reference, args, grad_out)
    xout, xgrads = run(ra_tail_reference, [a.double() if a is not None else None for a in args], grad_out.double())
    for name, got, low, ref in zip(NAMES, [out, *grads], [eout, *egrads], [xout, *xgrads]):
        err = (got.double() - ref).abs().max().item()
        err_eager = (low.double() - ref).abs().max().item()
        assert err <= 2 * err_eager + 1e-3 * max(1.0, ref.abs().max().item()), (name, err, err_eager)
