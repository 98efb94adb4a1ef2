"""pytest-benchmark comparison of the spatio-temporal attention op: eager vs torch.compile vs fused backends.

Run on demand only (``tests`` is the default test path, so ``pytest`` never collects this):

    .venv/bin/python -m pytest benchmarks/test_bench_st_attention.py --benchmark-only \\
        --benchmark-group-by=group --benchmark-columns=min,median,iqr,rounds

Shapes, inputs, the eager reference, the fused backends and the bytes model all come from the package
harness (``meranet_fast.benchmark``). The device is CUDA when available, else CPU (override with
``MERANET_BENCH_DEVICE=cpu``). pytest-benchmark times each implementation separately (not interleaved);
``meranet-fast bench`` is the interleaved, noise-robust comparison.
"""
from __future__ import annotations

import os

import pytest
import torch

from meranet_fast.benchmark.harness import synchronize
from meranet_fast.benchmark.op_bench import fused_impls, make_pass_fn
from meranet_fast.benchmark.specs import get_spec

pytest.importorskip("pytest_benchmark")

SPEC = get_spec("st_attention")
DEVICE = torch.device(os.environ.get("MERANET_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
DTYPE = torch.float32
IMPLS = ("eager", "compile", "cpp", "cuda", "triton")
_COMPILED = torch.compile(SPEC.reference, dynamic=False)


def _impl(name: str):
    if name == "eager":
        return SPEC.reference
    if name == "compile":
        return _COMPILED
    fns, skipped = fused_impls(SPEC, [name], DEVICE)
    if name in skipped:
        pytest.skip(skipped[name])
    return fns[name]


@pytest.mark.parametrize("pass_", ("forward", "backward"))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SPEC.default_shapes, ids=lambda s: "x".join(map(str, s)))
def test_st_attention(benchmark, shape, impl, pass_):
    fn = _impl(impl)
    inputs = SPEC.make_inputs(shape, DTYPE, DEVICE)
    with torch.no_grad():
        expected = SPEC.reference(*inputs)
        torch.testing.assert_close(fn(*inputs), expected, rtol=1e-4, atol=1e-5)  # never time a wrong result
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)
    run = make_pass_fn(fn, inputs, pass_, grad_out)  # backward: graph built here, once
    run()  # torch.compile compiles here, outside the timing
    synchronize(DEVICE)

    def timed():
        run()
        synchronize(DEVICE)

    shape_s = "x".join(map(str, shape))
    benchmark.group = f"st_attention {shape_s} {pass_} {DEVICE.type}"
    benchmark.extra_info.update(bytes=SPEC.bytes_moved(shape, inputs[0].element_size(), pass_),
                                bytes_model=SPEC.bytes_model[pass_], impl=impl)
    benchmark.pedantic(timed, rounds=10, warmup_rounds=2, iterations=1)
