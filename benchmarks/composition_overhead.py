"""Per-call cost of composing ``ra_tail`` in C++ (today's ``meranet::ra_tail``, C++ autograd) against a thin
Python composition of the same kernel-level operators (``torch.autograd.Function``), on CPU or CUDA (the
compiled kernels of the device: backend "cpp" or "cuda").

Both run the same kernels (``meranet::ca_pool``, ``ra_pool``, ``ra_attend``; backward ``ra_attend_bwd``,
``ca_scale_grad``, ``ca_input_grad``) and the same [N, C] channel network math, so the difference of their
forward+backward times is what the composition layer costs per call (docs/design.md §4.2). Timed
interleaved in one run (meranet_fast.benchmark.harness), at MERANet-18's four block shapes (batch 8, clip
16x112x112) and at a tiny shape where the kernels cost almost nothing.

    python benchmarks/composition_overhead.py --threads 1 --json benchmarks/results/cpu_composition_overhead.json
    python benchmarks/composition_overhead.py --device cuda --json composition.json     # in the GPU check
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from meranet_fast.benchmark import harness
from meranet_fast.ops import backends, ra_tail

OPS = torch.ops.meranet
#: MERANet-18's residual-attention blocks at batch 8 on 16x112x112 clips, and a shape with almost no work.
SHAPES = ((8, 64, 8, 28, 28), (8, 128, 4, 14, 14), (8, 256, 2, 7, 7), (8, 512, 1, 4, 4), (1, 16, 1, 2, 2))


class PythonRaTail(torch.autograd.Function):
    """ra_tail composed in Python from the kernel-level operators (the alternative to csrc's composition)."""

    @staticmethod
    def forward(ctx, y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias):
        avg, mx, ca_argmax = OPS.ca_pool(y)
        rows = torch.cat([avg, mx])  # [2N, C]: both pooled rows through the network at once
        wr, we = w_reduce.to(rows.dtype), w_expand.to(rows.dtype)
        hidden = torch.addmm(b_reduce.to(rows.dtype), rows, wr.t())
        logits = torch.addmm(b_expand.to(rows.dtype), hidden.relu(), we.t())
        a = torch.sigmoid(logits[: avg.shape[0]] + logits[avg.shape[0]:])
        pooled, sta_argmax = OPS.ra_pool(y, a)
        out, attn = OPS.ra_attend(y, shortcut, a, pooled, st_weight, st_bias)
        ctx.save_for_backward(y, out, wr, we, st_weight, a, attn, pooled, sta_argmax, rows, hidden, ca_argmax)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        y, out, wr, we, st_weight, a, attn, pooled, sta_argmax, rows, hidden, ca_argmax = ctx.saved_tensors
        grad_z, grad_pooled, grad_sw, grad_sb = OPS.ra_attend_bwd(grad_out, out, y, a, attn, pooled, st_weight)
        grad_a = OPS.ca_scale_grad(grad_z, y, attn, grad_pooled, sta_argmax)
        grad_logits = (grad_a * a * (1 - a)).repeat(2, 1)  # the same gradient reaches both rows' logits
        grad_hidden = (grad_logits @ we) * (hidden > 0)
        grad_rows = grad_hidden @ wr
        n = a.shape[0]
        grad_y = OPS.ca_input_grad(grad_z, a, grad_rows[:n], grad_rows[n:], ca_argmax, attn, grad_pooled,
                                   sta_argmax)
        return (grad_y, grad_z, grad_hidden.t() @ rows, grad_hidden.sum(0), grad_logits.t() @ hidden.relu(),
                grad_logits.sum(0), grad_sw, grad_sb)


def _inputs(shape, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    hidden = max(1, c // 16)
    y = torch.randn(shape, generator=gen)
    shortcut = torch.randn(shape, generator=gen)
    weights = [torch.randn(hidden, c, generator=gen) / c ** 0.5, torch.randn(hidden, generator=gen) * 0.1,
               torch.randn(c, hidden, generator=gen) / hidden ** 0.5, torch.randn(c, generator=gen) * 0.1,
               torch.randn(1, 2, 5, 5, 5, generator=gen) / 250 ** 0.5, torch.randn(1, generator=gen) * 0.1]
    return [t.to(device).requires_grad_() for t in [y, shortcut] + weights]


def _step(fn, inputs, grad):
    def run():
        out = fn(*inputs)
        out.backward(grad)
        for t in inputs:
            t.grad = None
    return run


def _network_step(shape, inputs, device):
    """The Python composition's [N, C] network forward and backward alone (ATen ops on [2N, C] rows), the part
    of its cost that is not composition: the C++ composition runs the network as plain loops on CPU."""
    n, c = shape[:2]
    rows = torch.randn(2 * n, c, device=device)
    wr, br, we, be = (t.detach() for t in inputs[2:6])
    grad_a = torch.randn(n, c, device=device)

    def run():
        hidden = torch.addmm(br, rows, wr.t())
        logits = torch.addmm(be, hidden.relu(), we.t())
        a = torch.sigmoid(logits[:n] + logits[n:])
        grad_logits = (grad_a * a * (1 - a)).repeat(2, 1)
        grad_hidden = (grad_logits @ we) * (hidden > 0)
        return grad_hidden @ wr, grad_hidden.t() @ rows, grad_hidden.sum(0), grad_logits.t() @ hidden.relu()
    return run


def measure(shapes, reps: int, warmup: int, device: torch.device) -> dict:
    compiled = "cpp" if device.type == "cpu" else "cuda"
    rows = []
    for shape in shapes:
        inputs = _inputs(shape, device)
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)

        def cpp(*tensors):
            return ra_tail(*tensors, backend=compiled)

        # Same values and gradients: the comparison is between two compositions of the same computation.
        results = []
        for fn in (cpp, PythonRaTail.apply):
            out = fn(*inputs)
            results.append([out] + list(torch.autograd.grad(out, inputs, grad)))
        for name, ref, got in zip(("out", "y", "shortcut", "w_reduce", "b_reduce", "w_expand", "b_expand",
                                   "st_weight", "st_bias"), *results):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        stats = harness.run_interleaved({"cpp_composition": _step(cpp, inputs, grad),
                                         "python_composition": _step(PythonRaTail.apply, inputs, grad),
                                         "python_network_only": _network_step(shape, inputs, device)},
                                        reps=reps, warmup=warmup, timer=harness.timer_for(device))
        c, p, net = stats["cpp_composition"], stats["python_composition"], stats["python_network_only"]
        rows.append({"shape": "x".join(map(str, shape)), "cpp_ms": 1e3 * c.median, "python_ms": 1e3 * p.median,
                     "python_minus_cpp_ms": 1e3 * (p.median - c.median),
                     "python_network_ms": 1e3 * net.median,
                     "paired_speedup_of_cpp": harness.paired_ratio(p, c),
                     "cpp": c.to_dict(), "python": p.to_dict(), "python_network": net.to_dict()})
        row = rows[-1]
        print(f"{row['shape']:>16}  C++ {row['cpp_ms']:8.3f} ms  Python {row['python_ms']:8.3f} ms  "
              f"difference {row['python_minus_cpp_ms']:+7.3f} ms  (paired ratio {row['paired_speedup_of_cpp']:.2f}; "
              f"of it the Python network's ATen ops {row['python_network_ms']:.3f} ms)", flush=True)
    return {"kind": "composition_overhead", "op": "ra_tail", "pass": "forward+backward", "backend": compiled,
            "reps": reps, "warmup": warmup, "threads": torch.get_num_threads(), "machine": harness.machine_info(device),
            "measurements": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                    help="comma-separated NxCxTxHxW shapes (default: MERANet-18's blocks at batch 8, and a tiny one)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ok, why = backends.backend_status("cpp" if device.type == "cpu" else "cuda", device, "ra_tail")
    if not ok:
        print(f"composition_overhead: the compiled kernels cannot run: {why}", file=sys.stderr)
        return 2
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    results = measure(shapes, args.reps, args.warmup, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
