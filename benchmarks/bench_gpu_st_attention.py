"""Kernel-level benchmark of the fused spatio-temporal attention ops, without the autograd layer.

Times ``torch.ops.meranet.st_attention_{fwd,bwd}_triton`` and, when the CUDA build of the extension is
loaded, ``torch.ops.meranet.st_attention_{fwd,bwd}``, against the eager reference and a copy of an
x-sized tensor (the bandwidth roof), interleaved with the package harness (``meranet_fast.benchmark``:
CUDA-event timing, median / IQR, the bytes model of its README). Passes: ``forward`` (fwd op),
``backward`` (bwd op from one saved forward; eager: autograd.grad on a graph built once) and ``full``.
Every fused implementation is checked against eager (out and grad_x) before it is timed.
``meranet-fast bench --op st_attention --device cuda`` covers the public op with its autograd and
torch.compile of the reference.

    python3 benchmarks/bench_gpu_st_attention.py --json out.json
    TRITON_INTERPRET=1 python3 benchmarks/bench_gpu_st_attention.py --device cpu --shapes 1x4x3x5x6 \\
        --reps 2 --warmup 1 --json /tmp/smoke.json        # CPU smoke test of this script
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from meranet_fast.benchmark import harness
from meranet_fast.benchmark.op_bench import make_pass_fn
from meranet_fast.benchmark.specs import PASSES, ST_KERNEL_SIZE, get_spec, parse_shape
from meranet_fast.ops.backends import backend_status

SPEC = get_spec("st_attention")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}  # relative to max |eager|


def fused_backends(device: torch.device) -> tuple[dict, dict]:
    """``({name: (fwd op, bwd op)}, {name: reason skipped})``, as the backend registry says for ``device``."""
    pairs = {"triton": ("st_attention_fwd_triton", "st_attention_bwd_triton"),
             "cuda": ("st_attention_fwd", "st_attention_bwd")}
    ops, skipped = {}, {}
    for name, (fwd, bwd) in pairs.items():
        ok, why = backend_status(name, device, "st_attention")
        if ok:
            ops[name] = (getattr(torch.ops.meranet, fwd), getattr(torch.ops.meranet, bwd))
        else:
            skipped[name] = why
    return ops, skipped


def fused_pass_fn(fwd, bwd, inputs, grad_out, pass_):
    x, weight, bias = inputs
    if pass_ == "forward":
        return lambda: fwd(x, weight, bias)
    if pass_ == "backward":
        saved = fwd(x, weight, bias)[1:]
        return lambda: bwd(grad_out, x, weight, *saved)

    def full():
        return bwd(grad_out, x, weight, *fwd(x, weight, bias)[1:])

    return full


def check_against_eager(fwd, bwd, inputs, grad_out) -> float:
    """Max relative error of out and grad_x against eager autograd; raises when above the tolerance."""
    x, weight, bias = inputs
    leaf = x.detach().requires_grad_()
    expected = SPEC.reference(leaf, weight, bias)
    (expected_gx,) = torch.autograd.grad(expected, leaf, grad_out)
    out, *saved = fwd(x, weight, bias)
    grad_x = bwd(grad_out, x, weight, *saved)[0]
    err = max(
        ((a.double() - e.double()).abs().max() / e.double().abs().max().clamp_min(1e-12)).item()
        for a, e in ((out, expected), (grad_x, expected_gx))
    )
    if not err <= TOLERANCE[x.dtype]:
        raise RuntimeError(f"differs from eager by {err:.3g} (relative)")
    return err


def run(args) -> dict:
    device = torch.device(args.device)
    timer = harness.timer_for(device)
    backends, skipped = fused_backends(device)
    for name, why in skipped.items():
        print(f"[bench] skipping {name}: {why}", file=sys.stderr)
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for shape in args.shapes:
            shape_s = "x".join(map(str, shape))
            inputs = SPEC.make_inputs(shape, dtype, device)
            grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
            errors = {}
            for name, (fwd, bwd) in list(backends.items()):
                try:
                    errors[name] = check_against_eager(fwd, bwd, inputs, grad_out)
                except Exception as exc:  # reported and left out, the others still run
                    skipped[f"{name}/{dtype_name}/{shape_s}"] = f"{type(exc).__name__}: {exc}"
                    print(f"[bench] {name} {dtype_name} {shape_s} failed: {exc}", file=sys.stderr)
            for pass_ in args.passes:
                cases = {"eager": make_pass_fn(SPEC.reference, inputs, pass_, grad_out)}
                for name in errors:
                    cases[name] = fused_pass_fn(*backends[name], inputs, grad_out, pass_)
                copy_fn, copy_bytes = harness.copy_case(SPEC.copy_numel(shape), dtype, device)
                cases["copy"] = copy_fn
                print(f"[bench] {shape_s} {dtype_name} {pass_}: {', '.join(cases)}", file=sys.stderr)
                stats = harness.run_interleaved(cases, reps=args.reps, warmup=args.warmup, timer=timer)
                copy_gbps = harness.gbps(copy_bytes, stats["copy"].median)
                useful = SPEC.bytes_moved(shape, inputs[0].element_size(), pass_)
                for name, st in stats.items():
                    moved = copy_bytes if name == "copy" else useful
                    row = {"shape": shape_s, "dtype": dtype_name, "pass": pass_, "impl": name, **st.to_dict(),
                           "bytes": moved, "gbps": harness.gbps(moved, st.median),
                           "copy_fraction": harness.gbps(moved, st.median) / copy_gbps,
                           "max_rel_err_vs_eager": errors.get(name)}
                    if name != "copy":
                        row["speedup_vs_eager"] = stats["eager"].median / st.median
                        row["paired_speedup_vs_eager"] = harness.paired_ratio(stats["eager"], st)
                    rows.append(row)
                    print(f"{shape_s:>16} {dtype_name:>8} {pass_:>8} {name:>6}: {st.median * 1e3:8.3f} ms "
                          f"{row['gbps']:8.1f} GB/s {row['copy_fraction']:6.1%} of copy")
    return {"kind": "op-kernels", "op": "st_attention", "bytes_model": SPEC.bytes_model,
            "kernel_size": ST_KERNEL_SIZE, "reps": args.reps, "warmup": args.warmup,
            "machine": harness.machine_info(device), "skipped": skipped, "measurements": rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--shapes", default="8x64x16x28x28,8x128x8x14x14",
                   type=lambda s: [parse_shape(v) for v in s.split(",")], help="NxCxTxHxW,... (k=5)")
    p.add_argument("--dtypes", default="float32,bfloat16", type=lambda s: s.split(","),
                   help=f"comma list of {', '.join(DTYPES)}")
    p.add_argument("--passes", default=",".join(PASSES), type=lambda s: s.split(","))
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = p.parse_args(argv)
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"--dtypes: unknown {d!r}")
    for q in args.passes:
        if q not in PASSES:
            p.error(f"--passes: unknown {q!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"[bench] wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
