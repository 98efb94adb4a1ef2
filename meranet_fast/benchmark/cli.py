"""Benchmarks: a fused operator against eager PyTorch and torch.compile, or whole models.

Operator (eager reference vs torch.compile of it vs each available fused backend, interleaved in one
run; median and spread, speedups, effective GB/s and the fraction of a measured copy bandwidth):

    meranet-fast bench --op st_attention --shapes 8x64x16x28x28,8x128x8x14x14 --reps 20 \\
        --json st.json --plot st.png

Models (one training step and one inference pass of 3D ResNet-18, eager and fused MERANet-18, and the
fused one under torch.compile; attention overhead and attention time from the profiler):

    meranet-fast bench --model --batch 2,8 --input 16x112x112 --reps 3 --json models.json

Backends that cannot run here are skipped with the reason printed. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

_DTYPES = ("float32", "float64", "float16", "bfloat16")


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _shapes(text: str) -> list[tuple[int, ...]]:
    from meranet_fast.benchmark.specs import parse_shape

    try:
        return [parse_shape(s) for s in _csv(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 2,8, got {text!r}") from None
    if min(vals) < 1:
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return vals


def _clip(text: str) -> tuple[int, int, int]:
    try:
        t, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like TxHxW (e.g. 16x112x112), got {text!r}") from None
    if min(t, h, w) < 1:
        raise argparse.ArgumentTypeError(f"--input sizes must be positive, got {text!r}")
    return t, h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--op", help="operator to benchmark: st_attention, channel_attention or ra_tail "
                      "(any registered spec; default: st_attention)")
    what.add_argument("--model", action="store_true",
                      help="benchmark whole models (training step and inference) instead of an operator")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: cpu")
    parser.add_argument("--dtype", type=_csv, default=None,
                        help=f"one of {', '.join(_DTYPES)} (--model: a comma list; default float32, "
                             "and bfloat16,float32 for --model on cuda)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 20 op, 3 model)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3 op, 1 model)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every measurement and machine info")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="write a PNG chart (matplotlib)")
    op = parser.add_argument_group("operator benchmark")
    op.add_argument("--shapes", type=_shapes, default=None, metavar="NxCxTxHxW,...",
                    help="input shapes (default: the op's, for st_attention 8x64x16x28x28,8x128x8x14x14)")
    op.add_argument("--backends", type=_csv, default=["eager", "compile", "cpp", "cuda", "triton"],
                    help="comma list of eager, compile, cpp, cuda, triton (default: all; unavailable ones "
                         "are skipped with the reason); eager is always run as the baseline")
    op.add_argument("--pass", dest="passes", type=_csv, default=["forward", "backward", "full"],
                    help="comma list of forward, backward, full (default: all)")
    mod = parser.add_argument_group("model benchmark (--model)")
    mod.add_argument("--batch", type=_ints, default=[2, 8], help="batch sizes (default: 2,8)")
    mod.add_argument("--input", type=_clip, default=(16, 112, 112), metavar="TxHxW",
                     help="clip size, 3 channels (default: 16x112x112)")
    mod.add_argument("--models", type=_csv, default=None,
                     help="variants (default: resnet3d18,meranet18-eager,meranet18-fused,meranet18-fused-compile)")
    mod.add_argument("--modes", type=_csv, default=["train", "inference"], help="default: train,inference")
    mod.add_argument("--no-profile", action="store_true", help="skip the profiler attribution of attention time")
    mod.add_argument("--profile-reps", type=int, default=3,
                     help="profiled calls per MERANet variant, interleaved; the median is reported (default: 3)")


def main(args: argparse.Namespace) -> int:
    import torch

    from meranet_fast.benchmark import report

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but torch.cuda.is_available() is False")
    for d in args.dtype or []:
        if d not in _DTYPES:
            raise SystemExit(f"bench: --dtype must be among {_DTYPES}, got {d!r}")
    if args.reps is not None and args.reps < 1:
        raise SystemExit("bench: --reps must be >= 1")

    def save_partial(results: dict) -> None:
        """--json is rewritten after every shape (op) or batch and mode (model): a cut-off run keeps them."""
        if args.json:
            report.write_json(results, args.json)

    if args.model:
        from meranet_fast.benchmark.model_bench import MODEL_VARIANTS, run_model_benchmark

        dtypes = args.dtype or (["bfloat16", "float32"] if args.device == "cuda" else ["float32"])
        variants = args.models or list(MODEL_VARIANTS)
        for v in variants:
            if v not in MODEL_VARIANTS:
                raise SystemExit(f"bench: unknown model {v!r}; known: {', '.join(MODEL_VARIANTS)}")
        for mde in args.modes:
            if mde not in ("train", "inference"):
                raise SystemExit(f"bench: --modes are train and inference, got {mde!r}")
        results = run_model_benchmark(
            variants=variants, batches=args.batch, clip=args.input,
            dtypes=[getattr(torch, d) for d in dtypes], device=args.device, modes=args.modes,
            reps=args.reps or 3, warmup=1 if args.warmup is None else args.warmup,
            profile=not args.no_profile, profile_reps=max(1, args.profile_reps), on_progress=save_partial)
        print(report.format_model_table(results))
        plot = report.plot_model_times
    else:
        from meranet_fast.benchmark.op_bench import run_op_benchmark
        from meranet_fast.benchmark.specs import PASSES, REGISTRY

        name = args.op or "st_attention"
        if name not in REGISTRY:
            raise SystemExit(f"bench: unknown --op {name!r}; known: {', '.join(sorted(REGISTRY))}")
        if args.dtype and len(args.dtype) != 1:
            raise SystemExit("bench: --op takes one --dtype")
        for p in args.passes:
            if p not in PASSES:
                raise SystemExit(f"bench: --pass must be among {PASSES}, got {p!r}")
        for shape in args.shapes or []:
            try:
                REGISTRY[name].check_shape(shape)
            except ValueError as exc:
                raise SystemExit(f"bench: {exc}") from None
        results = run_op_benchmark(
            REGISTRY[name], shapes=args.shapes, dtype=getattr(torch, (args.dtype or ["float32"])[0]),
            device=args.device, backends=args.backends, passes=args.passes,
            reps=args.reps or 20, warmup=3 if args.warmup is None else args.warmup, on_progress=save_partial)
        print(report.format_op_table(results))
        plot = report.plot_op_speedups
    if args.json:
        print(f"wrote {report.write_json(results, args.json)}")
    if args.plot:
        print(f"wrote {plot(results, args.plot)}")
    return 0
