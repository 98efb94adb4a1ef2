"""CUDA C++ kernels against their CPU twins: on a GPU, or on the CPU under the CUDA emulator.

Every ``torch.ops.meranet.*`` kernel op has a CPU implementation that the rest of the suite checks against
the eager references; here each CUDA implementation must give the same results as the CPU one on the same
inputs: awkward shapes, ties, every dtype, contiguous / channels_last_3d / sliced layouts, k = 3, 5, 7,
and bit-identical results on a repeated backward (determinism; trivially true when emulated).
The CUDA kernels are the real ones on a GPU, or the emulated build of the same sources
(``make test-cuda-emu``, see tests/cuda_target.py).
"""
import pytest
import torch
from cuda_target import SKIP_REASON, kernel, synchronize, to_device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]
ops = torch.ops.meranet

SHAPES = [(2, 5, 3, 7, 9), (1, 1, 1, 1, 1), (2, 40, 1, 3, 17), (1, 3, 5, 9, 20), (1, 8, 3, 65, 70)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype, loose=False):
    if dtype == torch.float64:
        return dict(atol=1e-9, rtol=1e-9)
    if dtype == torch.float32:
        return dict(atol=1e-3, rtol=1e-3) if loose else dict(atol=1e-4, rtol=1e-4)
    return dict(atol=2e-2, rtol=2e-2)


def activation(shape, dtype, layout):
    n, c, t, h, w = shape
    # rounded values make ties in the channel / position maxima likely: both sides must pick the first
    x = torch.randn(n, c, t, h, 2 * w if layout == "sliced" else w).round(decimals=1).to(dtype)
    if layout == "channels_last_3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x[..., ::2] if layout == "sliced" else x


def assert_same(cpu_result, cuda_result, dtype, loose=False, name="op"):
    cpu_result = cpu_result if isinstance(cpu_result, (tuple, list)) else (cpu_result,)
    cuda_result = cuda_result if isinstance(cuda_result, (tuple, list)) else (cuda_result,)
    for i, (expected, actual) in enumerate(zip(cpu_result, cuda_result)):
        actual = actual.cpu()
        assert actual.shape == expected.shape, f"{name} output {i}: shape {actual.shape} != {expected.shape}"
        if expected.dtype in (torch.int32, torch.int64):
            assert torch.equal(actual, expected), f"{name} output {i}: indices differ"
        else:
            torch.testing.assert_close(actual.double(), expected.double(), equal_nan=True,
                                       **tolerance(dtype, loose), msg=lambda m, i=i: f"{name} output {i}: {m}")


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_st_attention_cuda_matches_cpu(shape, dtype, layout, k):
    torch.manual_seed(0)
    x, g = activation(shape, dtype, layout), activation(shape, dtype, layout)
    w, b = (torch.randn(1, 2, k, k, k) * 0.2).to(dtype), torch.randn(1).to(dtype)
    # reference: the CPU kernel in float32 on the very same values (low-precision inputs are exact in fp32)
    as_f32 = [t.float() for t in (g, x, w, b)]
    fwd_cpu = ops.st_attention_fwd(*as_f32[1:])
    fwd_cuda = kernel(ops.st_attention_fwd)(*to_device(x, w, b))
    assert_same(fwd_cpu, fwd_cuda, dtype, name="st_attention_fwd")
    bwd_cpu = ops.st_attention_bwd(*as_f32[:3], *fwd_cpu[1:])
    bwd_args = to_device(g, x, w, *fwd_cuda[1:])
    bwd_cuda = kernel(ops.st_attention_bwd)(*bwd_args)
    assert_same(bwd_cpu, bwd_cuda, dtype, loose=True, name="st_attention_bwd")
    again = kernel(ops.st_attention_bwd)(*bwd_args)
    assert all(torch.equal(p, q) for p, q in zip(bwd_cuda, again)), "backward is not deterministic"


@pytest.mark.parametrize("k", [3, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_attention_and_ra_tail_cuda_match_cpu(shape, dtype, layout, k):
    torch.manual_seed(0)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    y, shortcut, g = (activation(shape, dtype, layout) for _ in range(3))
    scale = torch.rand(shape[0], shape[1], dtype=acc) + 0.5
    w, b = (torch.randn(1, 2, k, k, k) * 0.2).to(dtype), torch.randn(1).to(dtype)

    def both(op, *args, loose=False):
        expected = op(*args)
        assert_same(expected, kernel(op)(*to_device(*args)), dtype, loose, name=op._qualified_op_name.split("::")[1])
        return expected

    avg, mx, argmax_thw = both(ops.ca_pool, y)
    both(ops.ca_scale, y, scale)
    pooled, argmax_c = both(ops.ra_pool, y, scale)
    out, attn = both(ops.ra_attend, y, shortcut, scale, pooled, w, b)
    grad_z, grad_pooled, *_ = both(ops.ra_attend_bwd, g, out, y, scale, attn, pooled, w, loose=True)
    for maps in [(None, None, None), (attn, grad_pooled, argmax_c)]:
        both(ops.ca_scale_grad, grad_z, y, *maps, loose=True)
        both(ops.ca_input_grad, grad_z, scale, avg, mx, argmax_thw, *maps)
    args = to_device(g, out, y, scale, attn, pooled, w)
    first, second = kernel(ops.ra_attend_bwd)(*args), kernel(ops.ra_attend_bwd)(*args)
    assert all(torch.equal(p, q) for p, q in zip(first, second)), "ra_attend_bwd is not deterministic"


def test_empty_inputs_return_without_launching():
    y, w = to_device(torch.randn(0, 4, 2, 3, 3), torch.randn(1, 2, 3, 3, 3))
    avg, mx, idx = kernel(ops.ca_pool)(y)
    assert avg.shape == (0, 4) and mx.shape == (0, 4) and idx.shape == (0, 4)
    out, attn, pooled, argmax = kernel(ops.st_attention_fwd)(y, w, None)
    assert out.shape == y.shape and attn.shape == (0, 1, 2, 3, 3)
    synchronize()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced"])
def test_pools_propagate_nan_like_the_cpu_kernels(layout):
    """A NaN is the maximum and the first NaN gets the argmax (torch.amax, the CPU kernels), whichever
    thread, warp or chunk of the CUDA reductions sees it."""
    y = activation((2, 40, 3, 17, 31), torch.float32, "contiguous")
    nan = float("nan")
    y[0, 1, 2, 16, 30] = y[0, 1, 0, 9, 4] = y[0, 1, 1, 0, 0] = nan  # channel 1: three positions
    y[1, 39, 0, 0, 0] = y[1, 0, 0, 0, 0] = nan  # position 0 of sample 1: the first and the last channel
    y[1, 17, 1, 2, 3] = y[1, 33, 1, 2, 3] = nan
    if layout == "channels_last_3d":
        y = y.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "sliced":
        y = torch.stack([y, torch.zeros_like(y)], dim=-1).flatten(-2)[..., ::2]
    scale = torch.rand(2, 40) + 0.5
    w = torch.randn(1, 2, 3, 3, 3)
    for op, args in ((ops.ca_pool, (y,)), (ops.ra_pool, (y, scale)), (ops.st_attention_fwd, (y, w, None))):
        assert_same(op(*args), kernel(op)(*to_device(*args)), torch.float32, name=op._qualified_op_name.split("::")[1])
    _, mx, idx = ops.ca_pool(y)
    assert mx[0, 1].isnan() and idx[0, 1] == 9 * 31 + 4  # the earliest of the three NaNs: (t, h, w) = (0, 9, 4)
    _, argmax = ops.ra_pool(y, scale)
    assert argmax[1, 0, 0, 0] == 0 and argmax[1, 1, 2, 3] == 17


def test_ra_attend_relu_keeps_nan_like_the_cpu_kernel():
    """relu(NaN) is NaN (torch.relu, the CPU kernel): a NaN in y reaches out, at the same elements."""
    y, shortcut = torch.randn(1, 6, 2, 5, 7), torch.randn(1, 6, 2, 5, 7)
    y[0, 3, 1, 2, 4] = float("nan")
    scale = torch.rand(1, 6) + 0.5
    w = torch.randn(1, 2, 3, 3, 3)
    pooled, _ = ops.ra_pool(y, scale)
    expected = ops.ra_attend(y, shortcut, scale, pooled, w, None)
    assert expected[0].isnan().any()
    assert_same(expected, kernel(ops.ra_attend)(*to_device(y, shortcut, scale, pooled, w, None)), torch.float32,
                name="ra_attend")


def test_st_attention_refuses_float64_by_name():
    x, w = to_device(torch.randn(1, 3, 2, 3, 3, dtype=torch.float64), torch.randn(1, 2, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"st_attention_fwd \(CUDA\): x must be float32, float16 or bfloat16, "
                                           r"got Double \(the CUDA st_attention kernels compute in float32; "
                                           r"float64 runs on backend 'cpp' or 'eager'\)"):
        kernel(ops.st_attention_fwd)(x, w, None)


# Property-based: the two comparisons above on shapes, dtypes, layouts and kernel sizes drawn by hypothesis
# (the profiles of tests/conftest.py: derandomized "ci" by default), C from 1 to 2048, up to 16384 elements
# (the emulator runs a fiber per CUDA thread). On a machine without hypothesis the test skips with the reason.
try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st
except ImportError as exc:
    _NO_HYPOTHESIS = f"hypothesis is a dev dependency (pip install -e '.[dev]'): {exc}"

    @pytest.mark.skip(reason=_NO_HYPOTHESIS)
    def test_cuda_kernels_match_cpu_on_drawn_inputs():
        pass
else:
    @settings(max_examples=12)
    @given(n=st.integers(1, 2), c=st.one_of(st.integers(1, 40), st.sampled_from([255, 2048])),
           t=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 12),
           dtype=st.sampled_from(DTYPES + [torch.float64]),
           layout=st.sampled_from(["contiguous", "channels_last_3d", "sliced"]), k=st.sampled_from([3, 5, 7]))
    def test_cuda_kernels_match_cpu_on_drawn_inputs(n, c, t, h, w, dtype, layout, k):
        assume(n * c * t * h * w <= 16384)
        shape = (n, c, t, h, w)
        if dtype != torch.float64:  # the CUDA st_attention kernels refuse float64 (a test above)
            test_st_attention_cuda_matches_cpu(shape, dtype, layout, k)
        test_channel_attention_and_ra_tail_cuda_match_cpu(shape, dtype, layout, k)
