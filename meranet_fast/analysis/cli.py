"""Parameter and FLOP report: 3D ResNet vs MERANet, per stage, with MERANet's overhead (fvcore).

One flop is one multiply-add (fvcore's convention); element-wise ops and reductions count one flop an
element (see ``meranet_fast.analysis.flops``). Example:

    meranet-fast flops --depth 18 --input 16x112x112 --json flops.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from meranet_fast.analysis.flops import PAPER_MERANET18, PAPER_RESNET3D18, STAGES, compare_models, overhead
from meranet_fast.models import BLOCKS_PER_DEPTH
from meranet_fast.nn import SHORTCUT_TYPES


def _parse_input(text: str) -> tuple[int, int, int]:
    try:
        t, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input must look like TxHxW (e.g. 16x112x112), got {text!r}") from None
    if min(t, h, w) < 1:
        raise argparse.ArgumentTypeError(f"--input sizes must be positive, got {text!r}")
    return t, h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``meranet-fast flops``."""
    parser.add_argument("--depth", type=int, default=18, choices=sorted(BLOCKS_PER_DEPTH),
                        help="network depth (default: 18)")
    parser.add_argument("--input", type=_parse_input, default=(16, 112, 112), metavar="TxHxW",
                        help="clip size; batch 1, 3 channels (default: 16x112x112)")
    parser.add_argument("--num-classes", type=int, default=3, help="classifier outputs (default: 3)")
    parser.add_argument("--shortcut", choices=SHORTCUT_TYPES, default="B",
                        help="residual shortcut type (default: B, the paper's parameter count)")
    parser.add_argument("--backend", choices=("auto", "eager"), default="auto",
                        help="MERANet attention tail: the fused operator (auto, the default; counted like its "
                             "eager code) or the eager modules; the counts are the same")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the full report as JSON")


def _delta(base: float, other: float, fmt: str) -> str:
    """``+91,088 (+0.27%)``-style difference of ``other`` over ``base``."""
    d = overhead(base, other)
    return f"{d['abs']:+{fmt}} ({d['pct']:+.2f}%)"


def format_report(report: dict, paper: dict | None = None) -> str:
    """The printed table for a :func:`~meranet_fast.analysis.compare_models` result.

    ``paper`` (``{"vanilla": {"params", "gflops"}, "meranet": {...}}``) adds the paper's row and a note
    on whether its FLOP figure can come from the measured input.
    """
    van, mer = report["vanilla"], report["meranet"]
    shape = "x".join(str(v) for v in report["input_shape"])
    header = (f"{'':<7}{'params':>13}{'params':>13}{'':>22}{'GFLOPs':>12}{'GFLOPs':>12}{'':>20}\n"
              f"{'stage':<7}{van['name']:>13}{mer['name']:>13}{'overhead':>22}"
              f"{van['name']:>12}{mer['name']:>12}{'overhead':>20}")
    rule = "-" * 99
    backend = f"; {mer['name']} attention: {report['meranet_backend']}" if "meranet_backend" in report else ""
    lines = [f"{van['name']} vs {mer['name']} on input {shape} (fvcore; 1 flop = 1 multiply-add{backend})", "",
             header, rule]

    def row(label: str, p0: int, p1: int, g0: float, g1: float, gfmt: str) -> None:
        lines.append(f"{label:<7}{p0:>13,}{p1:>13,}{_delta(p0, p1, ','):>22}"
                     f"{g0:>12{gfmt}}{g1:>12{gfmt}}{_delta(g0, g1, gfmt):>20}")

    for s in STAGES:
        row(s, van["stage_params"][s], mer["stage_params"][s],
            van["stage_flops"][s] / 1e9, mer["stage_flops"][s] / 1e9, ".4f")
    lines.append(rule)
    row("total", van["params"], mer["params"], van["flops"] / 1e9, mer["flops"] / 1e9, ".4f")

    if paper is not None:
        p0, p1 = paper["vanilla"], paper["meranet"]
        row("paper", p0["params"], p1["params"], p0["gflops"], p1["gflops"], ".2f")
        measured, conv = van["flops"] / 1e9, van["by_operator"].get("conv", 0) / 1e9
        if abs(measured / p0["gflops"] - 1) > 0.1:
            note = (f"the paper's {p0['gflops']} / {p1['gflops']} GFLOPs (input size unstated) cannot come from "
                    f"a {shape} input: we measure {measured:.2f} G for {van['name']} there ({conv:.2f} G of it "
                    f"conv multiply-adds), {measured / p0['gflops']:.1f}x the paper's figure.")
        else:
            note = f"at {shape} the measured {measured:.2f} G is within 10% of the paper's {p0['gflops']} G."
        lines += ["", "note: " + note,
                  f"note: the attention formulas (CA 2*C*C/r + C/r + C, STA 2*k^3 + 1 per block) add "
                  f"{mer['params'] - van['params']:,} parameters here; the paper reports "
                  f"{p1['params'] - p0['params']:,}."]
    skipped = {**van["unsupported_ops"], **mer["unsupported_ops"]}
    lines.append("skipped operators (counted as 0): "
                 + (", ".join(f"{op} x{n}" for op, n in sorted(skipped.items())) if skipped else "none"))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Measure both models, print the table and optionally write the JSON report."""
    t, h, w = args.input
    report = compare_models(args.depth, (1, 3, t, h, w), args.num_classes, shortcut=args.shortcut,
                            backend=args.backend)
    paper = None
    if args.depth == 18:
        paper = {"vanilla": PAPER_RESNET3D18, "meranet": PAPER_MERANET18}
        report["paper"] = paper
    print(format_report(report, paper))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
