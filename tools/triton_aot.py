"""Ahead-of-time compile of the Triton kernels for Hopper (sm_90), on a machine without a GPU.

  python tools/triton_aot.py [--jobs N] [--json OUT] [--representative]

The variants are the ones a GPU run launches, found by running the real launch code, not listed by hand:
the public fused operators (forward and backward, with ``backend="triton"``) are called on CPU tensors of
the GPU benchmarks' shapes (``meranet_fast.benchmark.specs.REGISTRY``: every op at its default shapes) and
of MERANet-18's attention blocks (the model benchmark: 16x112x112 clips, batch 2 and 8), in bfloat16 and
float32, while ``wrap_triton`` is replaced by a recorder that keeps each launch's kernel and arguments
instead of running it. Each recorded launch of an autotuned kernel is expanded to every config of its
autotuning table (on a GPU every config is compiled once to be timed), and Triton's own argument binder
for a CUDA target gives the specialization (dtypes, integer / pointer divisibility, constexprs) that the
GPU would compile; identical variants are compiled once.

Every variant is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``; its
cubin's resource usage (cuobjdump) is checked against sm_90's limits: at most 255 registers a thread and
64 Ki registers a block, no spills (local memory), at most 227 KiB of shared memory a block. Exits non-zero
on any compile error or overflow, and prints the count and the time. Needs triton (the compat venv's 3.6)
and meranet_fast._C (the composed ops); never set TRITON_INTERPRET=1 for it.

``--representative`` compiles one variant per kernel, argument dtypes, declared constexprs (block sizes,
flags, kernel size) and options, leaving out the variants that differ only in Triton's integer and pointer
specializations (divisibility by 16, a value of 1): the CPU rehearsal's budget. The GPU run compiles all.

Not covered: the tiny shapes of the GPU tests specialize some integer arguments differently (e.g. a size of
1); their kernels, dtypes and configs are the ones compiled here.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("triton_aot: unset TRITON_INTERPRET (the interpreter replaces the kernels that are compiled here)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
#: sm_90 limits (CUDA C Programming Guide, compute capability 9.0).
MAX_REGS_PER_THREAD = 255
MAX_REGS_PER_BLOCK = 64 * 1024
MAX_SHARED_PER_BLOCK = 227 * 1024
DTYPES = (torch.bfloat16, torch.float32)
MODEL_CLIP = (16, 112, 112)
MODEL_BATCHES = (2, 8)
KERNEL_MODULES = ("meranet_fast.ops.triton.st_attention", "meranet_fast.ops.triton.channel_attention",
                  "meranet_fast.ops.triton.ra_tail")


def _jit_function(kernel):
    """The JITFunction of a launched kernel (an Autotuner wraps one)."""
    return kernel.fn if isinstance(kernel, Autotuner) else kernel


# ------------------------------------------------------------------------------------------------
# Recording the launches
# ------------------------------------------------------------------------------------------------
class _Recorder:
    """Stands in for torch.library.wrap_triton: ``rec(kernel)[grid](**kwargs)`` records, runs nothing."""

    def __init__(self):
        self.launches = []  # (kernel: Autotuner or JITFunction, kwargs)

    def __call__(self, kernel):
        return _Launcher(self, kernel)


class _Launcher:
    def __init__(self, recorder, kernel):
        self.recorder, self.kernel = recorder, kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            fn = _jit_function(self.kernel)
            names = [p.name for p in fn.params]
            self.recorder.launches.append((self.kernel, {**dict(zip(names, args)), **kwargs}))

        return launch


def _model_block_shapes(batch: int) -> list[tuple[int, ...]]:
    """Input shapes of MERANet-18's attention tails on a batch of 3 x 16 x 112 x 112 clips (meta tensors)."""
    from meranet_fast.models import meranet18
    from meranet_fast.nn import ChannelAttention3d

    model = meranet18(num_classes=3, backend="eager").to("meta")
    shapes = []
    for module in model.modules():
        if isinstance(module, ChannelAttention3d):
            module.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        model(torch.empty(batch, 3, *MODEL_CLIP, device="meta"))
    return sorted(set(shapes))


def record_launches() -> tuple[list, list[str]]:
    """Run the fused ops (forward + backward) on the benchmark and model shapes with the recorder."""
    import importlib

    from meranet_fast.benchmark.specs import REGISTRY
    from meranet_fast.ops import backends
    recorder = _Recorder()
    for name in KERNEL_MODULES:
        importlib.import_module(name).wrap_triton = recorder
    # The CPU tensors here stand for CUDA tensors: let "triton" run them (the recorder launches nothing).
    backends._triton_status = lambda device: (True, "recording launches for the AOT compile")
    cases = [(op, shape) for op, spec in sorted(REGISTRY.items()) for shape in spec.default_shapes]
    cases += [("ra_tail", shape) for batch in MODEL_BATCHES for shape in _model_block_shapes(batch)]
    cpu = torch.device("cpu")
    done = []
    for op, shape in dict.fromkeys(cases):
        spec = REGISTRY[op]
        for dtype in DTYPES:
            inputs = [t.requires_grad_() if t.is_floating_point() else t
                      for t in spec.make_inputs(shape, dtype, cpu)]
            out = spec.fused("triton", cpu)(*inputs)
            out.backward(torch.ones_like(out))
            done.append(f"{op} {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}")
    return recorder.launches, done


# ------------------------------------------------------------------------------------------------
# Variants: the specialization a CUDA launch would compile
# ------------------------------------------------------------------------------------------------
def variants(launches, representative: bool = False) -> dict[str, tuple]:
    """key -> (jit function, signature, constexprs, attrs, options dict), one per distinct compile.

    ``representative``: one variant per kernel, argument types, declared constexprs (block sizes, flags)
    and options, whatever the integer and pointer specializations (divisibility by 16, a value of 1)."""
    backend = make_backend(TARGET)
    binders = {}
    out = {}
    for kernel, kwargs in launches:
        fn = _jit_function(kernel)
        configs = kernel.configs if isinstance(kernel, Autotuner) else [None]
        if fn not in binders:
            binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
        for config in configs:
            call = {**kwargs, **(config.all_kwargs() if config is not None else {})}
            bound, specialization, options = binders[fn](**call)
            options_obj, signature, constexprs, attrs = fn._pack_args(backend, call, bound, specialization, options)
            options = {k: v for k, v in options_obj.__dict__.items()}
            declared = {fn.arg_names.index(p.name) for p in fn.params if p.is_constexpr}
            if representative:
                types = [t if t != "constexpr" or i in declared else "int" for i, t in enumerate(signature.values())]
                key = json.dumps([fn.__name__, types,
                                  sorted((str(k), repr(v)) for k, v in constexprs.items() if k[0] in declared),
                                  sorted((k, repr(v)) for k, v in options.items())])
            else:
                key = json.dumps([fn.__name__, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                                  sorted((str(k), repr(v)) for k, v in attrs.items()),
                                  sorted((k, repr(v)) for k, v in options.items())])
            out.setdefault(key, (fn, signature, constexprs, attrs, options))
    return out


def _cuobjdump() -> str:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else "cuobjdump"


def _resources(cubin: bytes) -> dict[str, int]:
    """REG / SHARED / LOCAL / STACK of the cubin's kernel, from ``cuobjdump --dump-resource-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    found = dict(re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", text))
    return {k.lower(): int(v) for k, v in found.items()}


_ITEMS: list = []  # the variants, set before the worker processes fork (JIT functions do not pickle)


def compile_one(index: int) -> dict:
    key, (fn, signature, constexprs, attrs, options) = _ITEMS[index]
    start = time.perf_counter()
    row = {"kernel": fn.__name__, "num_warps": options.get("num_warps"),
           "constexprs": {fn.arg_names[k[0]]: repr(v) for k, v in constexprs.items()
                          if signature[fn.arg_names[k[0]]] == "constexpr"}}
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)
        res = _resources(compiled.asm["cubin"])
        shared = max(res.get("shared", 0), int(compiled.metadata.shared))
        row.update(regs=res.get("reg", 0), spill_bytes=res.get("local", 0), stack=res.get("stack", 0),
                   shared=shared)
        problems = []
        if row["regs"] > MAX_REGS_PER_THREAD:
            problems.append(f"{row['regs']} registers a thread > {MAX_REGS_PER_THREAD}")
        if row["regs"] * 32 * row["num_warps"] > MAX_REGS_PER_BLOCK:
            problems.append(f"{row['regs']} registers x {32 * row['num_warps']} threads > {MAX_REGS_PER_BLOCK}")
        if row["spill_bytes"]:
            problems.append(f"{row['spill_bytes']} bytes of register spills")
        if shared > MAX_SHARED_PER_BLOCK:
            problems.append(f"{shared} bytes of shared memory > {MAX_SHARED_PER_BLOCK}")
        row["problems"] = problems
    except Exception as exc:  # noqa: BLE001  (a compile error is a result here)
        row["problems"] = [f"compile error: {type(exc).__name__}: {str(exc)[:2000]}"]
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _init_worker():
    torch.set_num_threads(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--json", help="write every variant's result here")
    parser.add_argument("--representative", action="store_true",
                        help="one variant per kernel, dtypes, constexprs and options (not per integer "
                             "specialization): the CPU rehearsal's budget")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    launches, cases = record_launches()
    found = variants(launches)
    chosen = variants(launches, representative=True) if args.representative else found
    items = sorted(chosen.items())
    record_s = time.perf_counter() - start
    print(f"triton_aot: {len(launches)} launches recorded over {len(cases)} op/shape/dtype cases; "
          f"{len(found)} distinct variants for cuda sm_{TARGET.arch} (triton {triton.__version__}, "
          f"{record_s:.1f}s); compiling {len(items)}{' representative ones' if args.representative else ''} "
          f"with {args.jobs} processes", flush=True)
    compile_start = time.perf_counter()
    _ITEMS[:] = items
    if args.jobs > 1:
        # fork: the workers inherit _ITEMS and get indices.
        import multiprocessing

        with futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork"),
                                         initializer=_init_worker) as pool:
            rows = list(pool.map(compile_one, range(len(items)), chunksize=2))
    else:
        rows = [compile_one(i) for i in range(len(items))]
    compile_s = time.perf_counter() - compile_start
    failed = [r for r in rows if r["problems"]]
    per_kernel = {}
    for r in rows:
        per_kernel.setdefault(r["kernel"], []).append(r)
    for kernel, rs in sorted(per_kernel.items()):
        regs = [r["regs"] for r in rs if "regs" in r]
        shared = [r["shared"] for r in rs if "shared" in r]
        print(f"  {kernel:28s} {len(rs):4d} variants  registers {min(regs, default=0)}-{max(regs, default=0)}  "
              f"shared {max(shared, default=0)} B  failed {sum(1 for r in rs if r['problems'])}")
    for r in failed[:20]:
        print(f"FAILED {r['kernel']} num_warps={r['num_warps']} {r['constexprs']}: {'; '.join(r['problems'])}")
    print(f"triton_aot: {len(rows)} variants compiled for sm_{TARGET.arch} in {compile_s:.1f}s "
          f"({sum(r['seconds'] for r in rows):.1f}s of compiling); {len(failed)} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": f"cuda sm_{TARGET.arch}", "triton": triton.__version__, "torch": torch.__version__,
                       "cases": cases, "launches": len(launches), "variants": len(found),
                       "representative_only": args.representative, "compiled": len(rows),
                       "failed": len(failed), "record_seconds": round(record_s, 1),
                       "compile_seconds": round(compile_s, 1), "results": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
