"""Benchmark one registered operator: eager reference vs ``torch.compile`` of it vs fused backends.

For every shape and pass the implementations (and a ``dst.copy_(src)`` of an x-sized tensor, the
bandwidth roof) are timed interleaved in one run; see :mod:`meranet_fast.benchmark.harness`.

What each pass times:

* ``forward``: one call under ``torch.no_grad()``.
* ``backward``: only ``torch.autograd.grad(out, inputs, grad_out, retain_graph=True)`` on a graph built
  once before timing (gradients of every floating-point input: x, weight, bias).
* ``full``: forward with autograd recording plus that backward.

``torch.compile`` is compiled for each shape and pass before timing (its first calls run in the
untimed setup and warmup). Each implementation's forward output is checked against eager before it
is timed; the max abs difference goes into the results.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import torch

from meranet_fast.benchmark import harness
from meranet_fast.benchmark.specs import FUSED_BACKENDS, PASSES, BackendUnavailable, OpBenchSpec

__all__ = ["IMPLS", "make_pass_fn", "fused_impls", "run_op_benchmark"]

#: The non-fused implementations; every other requested backend name is a fused backend.
IMPLS = ("eager", "compile")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _leaves(inputs: Sequence) -> tuple:
    """Fresh leaf copies of the floating-point tensor inputs that require grad; others unchanged."""
    return tuple(t.detach().clone().requires_grad_(True)
                 if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def make_pass_fn(fn: Callable[..., torch.Tensor], inputs: Sequence, pass_: str,
                 grad_out: torch.Tensor | None = None) -> Callable[[], object]:
    """The callable timed for one implementation and pass (see the module docstring).

    For ``backward`` the forward graph is built here, once; the returned callable runs only the
    backward (``retain_graph=True`` keeps the graph for the next call).
    """
    if pass_ == "forward":
        def forward():
            with torch.no_grad():
                return fn(*inputs)
        return forward
    if pass_ not in ("backward", "full"):
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    leaves = _leaves(inputs)
    diff = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    if pass_ == "backward":
        out = fn(*leaves)
        g = torch.ones_like(out) if grad_out is None else grad_out

        def backward():
            return torch.autograd.grad(out, diff, g, retain_graph=True)
        return backward

    def full():
        out = fn(*leaves)
        g = torch.ones_like(out) if grad_out is None else grad_out
        return torch.autograd.grad(out, diff, g)
    return full


def fused_impls(spec: OpBenchSpec, backends: Sequence[str], device: torch.device) -> tuple[dict, dict]:
    """``({backend: fn}, {backend: reason skipped})`` for the requested fused backends."""
    fns, skipped = {}, {}
    for backend in backends:
        if backend in IMPLS:
            continue
        if backend not in FUSED_BACKENDS:
            skipped[backend] = f"unknown backend (known: {', '.join(IMPLS + tuple(FUSED_BACKENDS))})"
            continue
        if FUSED_BACKENDS[backend] != device.type:
            why = (" (on CPU Triton runs only in its interpreter, a correctness tool)"
                   if backend == "triton" else "")
            skipped[backend] = f"runs on {FUSED_BACKENDS[backend]}, the benchmark device is {device.type}{why}"
            continue
        try:
            fns[backend] = spec.fused(backend, device)
        except BackendUnavailable as exc:
            skipped[backend] = str(exc)
    return fns, skipped


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-4)


def run_op_benchmark(
    spec: OpBenchSpec,
    *,
    shapes: Sequence[tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    backends: Sequence[str] = ("eager", "compile", "cpp", "cuda", "triton"),
    passes: Sequence[str] = PASSES,
    reps: int = 20,
    warmup: int = 3,
    timer: harness.Timer | None = None,
    log: Callable[[str], None] = _log,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Run the benchmark and return the results dictionary (what ``--json`` writes).

    ``on_progress(results so far)`` is called after every shape (the CLI writes its JSON there, so a run
    that is cut off keeps what it measured)."""
    device = torch.device(device)
    shapes = list(shapes or spec.default_shapes)
    for p in passes:
        if p not in PASSES:
            raise ValueError(f"pass must be one of {PASSES}, got {p!r}")
    timer = timer or harness.timer_for(device)
    machine = harness.machine_info(device)
    fused, skipped = fused_impls(spec, backends, device)
    for backend, reason in skipped.items():
        log(f"[bench] skipping backend {backend!r}: {reason}")
    use_eager = True  # always: it is the baseline of every speedup
    use_compile = "compile" in backends
    measurements: list[dict] = []
    started = time.perf_counter()

    for shape in shapes:
        shape_s = "x".join(map(str, shape))
        inputs = spec.make_inputs(shape, dtype, device)
        with torch.no_grad():
            expected = spec.reference(*inputs)
        grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(
            device=device, dtype=expected.dtype)
        impls: dict[str, Callable] = {}
        if use_eager:
            impls["eager"] = spec.reference
        if use_compile:
            torch._dynamo.reset()
            impls["compile"] = torch.compile(spec.reference, dynamic=False)
        impls.update(fused)

        for pass_ in passes:
            cases: dict[str, Callable[[], object]] = {}
            errors: dict[str, float] = {}
            for name, fn in impls.items():
                if name in skipped:
                    continue
                try:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        got = fn(*inputs)
                    errors[name] = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
                    if not errors[name] <= _tolerance(dtype) * max(1.0, expected.abs().max().item()):
                        raise RuntimeError(f"forward differs from eager by {errors[name]:.3g}")
                    cases[name] = make_pass_fn(fn, inputs, pass_, grad_out)
                    cases[name]()  # compiles (torch.compile) / first call, untimed
                    harness.synchronize(device)
                    if name == "compile":
                        log(f"[bench] {shape_s} {pass_}: torch.compile ready in {time.perf_counter() - t0:.1f}s")
                except BackendUnavailable as exc:
                    skipped[name] = str(exc)
                except Exception as exc:  # a backend that fails here is reported and left out
                    skipped[name] = f"failed on {shape_s} {pass_}: {type(exc).__name__}: {exc}"
                    cases.pop(name, None)
                if name in skipped:
                    log(f"[bench] skipping {name!r}: {skipped[name]}")
            copy_fn, copy_bytes = harness.copy_case(spec.copy_numel(shape), dtype, device)
            cases["copy"] = copy_fn
            log(f"[bench] {spec.name} {shape_s} {pass_}: timing {', '.join(cases)} "
                f"({warmup} warmup + {reps} reps, interleaved)")
            stats = harness.run_interleaved(cases, reps=reps, warmup=warmup, timer=timer)
            useful = spec.bytes_moved(shape, inputs[0].element_size(), pass_)
            copy_gbps = harness.gbps(copy_bytes, stats["copy"].median)
            for name, st in stats.items():
                row = {
                    "op": spec.name, "shape": shape_s, "dtype": str(dtype).replace("torch.", ""),
                    "device": str(device), "pass": pass_, "impl": name, **st.to_dict(),
                }
                if name == "copy":
                    row.update(bytes=copy_bytes, gbps=copy_gbps, copy_fraction=1.0)
                else:
                    row.update(bytes=useful, gbps=harness.gbps(useful, st.median),
                               copy_fraction=harness.gbps(useful, st.median) / copy_gbps,
                               max_abs_err_vs_eager=errors.get(name))
                    for base in ("eager", "compile"):
                        if base in stats:
                            row[f"speedup_vs_{base}"] = stats[base].median / st.median
                            row[f"paired_speedup_vs_{base}"] = harness.paired_ratio(stats[base], st)
                        else:
                            row[f"speedup_vs_{base}"] = row[f"paired_speedup_vs_{base}"] = None
                measurements.append(row)
        del inputs, expected, grad_out, impls
        if on_progress is not None:
            on_progress(_results(spec, machine, shapes, dtype, device, backends, passes, reps, warmup, skipped,
                                 started, measurements))

    machine["loadavg_end_1_5_15"] = harness._loadavg()
    return _results(spec, machine, shapes, dtype, device, backends, passes, reps, warmup, skipped, started,
                    measurements)


def _results(spec, machine, shapes, dtype, device, backends, passes, reps, warmup, skipped, started,
             measurements) -> dict:
    return {
        "kind": "op",
        "op": spec.name,
        "description": spec.description,
        "machine": machine,
        "config": {
            "shapes": ["x".join(map(str, s)) for s in shapes], "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "backends": list(backends), "passes": list(passes),
            "reps": reps, "warmup": warmup, "timer": "cuda events" if device.type == "cuda" else "perf_counter",
        },
        "bytes_model": spec.bytes_model,
        "skipped": skipped,
        "elapsed_s": time.perf_counter() - started,
        "measurements": measurements,
    }
