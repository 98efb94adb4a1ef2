"""Benchmarks of the fused operators and of the models: timing harness, op registry, CLI (``meranet-fast bench``)."""
from meranet_fast.benchmark.harness import Stats, cpu_timer, machine_info, run_interleaved, summarize  # noqa: F401
from meranet_fast.benchmark.specs import REGISTRY, OpBenchSpec, get_spec, register  # noqa: F401
