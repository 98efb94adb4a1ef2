"""64-bit indexing: element offsets past 2^31 work on the backends that run here (docs/design.md §5).

The C++ CPU and the Triton st_attention kernels read x through its strides, so a strided view whose
elements sit beyond element 2^31 of its storage exercises exactly the index arithmetic that 32-bit
offsets would break (``n * stride_n`` or ``c * stride_c`` past 2^31), without a 4 GiB computation: the
storage is allocated but untouched (the operating system maps its pages lazily), and only the few
addressed elements are written and read.

The composed ops (channel_attention, ra_tail) copy a strided input into a dense layout first, whose
offsets stay below its (small) size; their 64-bit index arithmetic is read, not run, here (README, 64-bit
indexing). Sizes past the int32 channel argmax are refused by name (tests/test_bad_inputs.py), and meta
tensors of 2^35 elements go through every op (same file).
"""
from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp

from meranet_fast.ops import st_attention
from meranet_fast.ops.backends import backend_status
from meranet_fast.ops.reference import st_attention_reference

TRITON_OK, TRITON_WHY = backend_status("triton", "cpu")
BACKENDS = [
    pytest.param("cpp", marks=needs_cpp),
    pytest.param("triton", marks=[pytest.mark.triton,
                                  pytest.mark.skipif(not TRITON_OK, reason=f"triton on cpu: {TRITON_WHY}")]),
]

SHAPE = (3, 3, 2, 3, 4)
# Sample n starts at n * (2^30 + 3): sample 2 past element 2^31, where n * stride_n overflows int32.
STRIDES = (2**30 + 3, 2**20, 12, 4, 1)


def _far_view(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(a SHAPE view at STRIDES into an untouched storage of 2^31 + 2^22 elements, its values)."""
    storage = torch.empty(2**31 + 2**22, dtype=dtype)
    x = storage.as_strided(SHAPE, STRIDES)
    values = torch.randn(SHAPE).to(dtype)
    x.copy_(values)  # writes the addressed elements only
    offsets = [sum(i * s for i, s in zip(idx, STRIDES)) for idx in ((1, 2, 1, 2, 3), (2, 0, 0, 0, 0), (2, 2, 1, 2, 3))]
    assert offsets[0] < 2**31 < offsets[1] < offsets[2] < storage.numel()
    return x, values


@pytest.mark.parametrize("backend", BACKENDS)
def test_st_attention_offsets_past_2_31(backend):
    x, values = _far_view(torch.float16)
    w = torch.randn(1, 2, 3, 3, 3, dtype=torch.float16)
    b = torch.randn(1, dtype=torch.float16)
    g = torch.randn(SHAPE).to(torch.float16)
    xr = x.requires_grad_(True)
    out = st_attention(xr, w.requires_grad_(True), b, backend=backend)
    grad_x, grad_w = torch.autograd.grad(out, (xr, w), g)
    # The reference in float32 on the same values, held in an ordinary small tensor.
    x32 = values.float().requires_grad_(True)
    w32 = w.detach().float().requires_grad_(True)
    ref = st_attention_reference(x32, w32, b.float())[0]
    ref_gx, ref_gw = torch.autograd.grad(ref, (x32, w32), g.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(grad_x.float(), ref_gx, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(grad_w.float(), ref_gw, rtol=1e-2, atol=1e-2)
