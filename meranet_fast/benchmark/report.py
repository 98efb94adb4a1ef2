"""Printed tables, JSON files and speedup charts of benchmark results."""
from __future__ import annotations

import json
import math
from pathlib import Path

from meranet_fast._optional import pyplot

__all__ = ["format_op_table", "write_json", "plot_op_speedups"]


def _f(v, fmt: str, missing: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    return format(v, fmt)


def format_op_table(results: dict) -> str:
    """One line per (shape, pass, impl): median, spread, speedups, GB/s and % of copy bandwidth."""
    cfg, m = results["config"], results["machine"]
    head = (f"{results['op']}  dtype={cfg['dtype']} device={cfg['device']} ({m.get('device_name')})  "
            f"reps={cfg['reps']} warmup={cfg['warmup']}  threads={m.get('torch_threads')}  "
            f"load={m.get('loadavg_1_5_15')} -> {m.get('loadavg_end_1_5_15')}")
    cols = ("shape", "pass", "impl", "median ms", "IQR ms", "min..max ms", "x eager", "x compile",
            "GB/s", "% copy")
    rows = []
    for r in results["measurements"]:
        rows.append((
            r["shape"], r["pass"], r["impl"], _f(r["median_ms"], ".3f"),
            f"{r['q1_ms']:.3f}-{r['q3_ms']:.3f}", f"{r['min_ms']:.3f}..{r['max_ms']:.3f}",
            _f(r.get("speedup_vs_eager"), ".2f"), _f(r.get("speedup_vs_compile"), ".2f"),
            _f(r["gbps"], ".2f"), _f(100 * r["copy_fraction"], ".0f"),
        ))
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    prev = None
    for row in rows:
        key = row[:2]
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    if results.get("skipped"):
        lines.append("")
        for name, why in results["skipped"].items():
            lines.append(f"not measured: {name}: {why}")
    lines.append("")
    lines.append("bytes model (useful traffic): " + "; ".join(f"{k}: {v}" for k, v in results["bytes_model"].items()))
    lines.append("x eager / x compile: median(baseline) / median(impl) from the same interleaved run (> 1 is faster); "
                 "% copy: GB/s over a dst.copy_(src) of x's size timed in the same run")
    return "\n".join(lines)


def write_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    return path


def plot_op_speedups(results: dict, path: str | Path) -> Path:
    """Grouped bars: speedup over eager of each implementation, per (shape, pass); log scale."""
    plt = pyplot()

    rows = [r for r in results["measurements"] if r["impl"] not in ("eager", "copy")]
    groups = list(dict.fromkeys((r["shape"], r["pass"]) for r in results["measurements"]))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(impls))), 4.2))
    width = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for g, (shape, pass_) in enumerate(groups):
            for r in rows:
                if r["impl"] == impl and r["shape"] == shape and r["pass"] == pass_:
                    xs.append(g + (k - (len(impls) - 1) / 2) * width)
                    ys.append(r["speedup_vs_eager"])
        # bars grow from 1 (no change): up for faster than eager, down for slower
        bars = ax.bar(xs, [y - 1.0 for y in ys], width, bottom=1.0, label=impl)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{s}\n{p}" for s, p in groups], fontsize=8)
    ax.set_yscale("log")
    vals = [r["speedup_vs_eager"] for r in rows if r["speedup_vs_eager"]] or [1.0]
    ax.set_ylim(min(0.5, min(vals) / 1.4), max(2.0, max(vals) * 1.4))
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=2.0))
    ax.yaxis.set_minor_locator(LogLocator(base=2.0, subs=()))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_ylabel("speedup over eager (median, same run)")
    cfg, m = results["config"], results["machine"]
    ax.set_title(f"{results['op']} {cfg['dtype']} on {cfg['device']} ({m.get('device_name')}, "
                 f"{m.get('torch_threads')} threads, load {m.get('loadavg_1_5_15')})", fontsize=8)
    if impls:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_model_table(results: dict) -> str:
    """Model timings, attention overhead over vanilla, attention time (profiler) and the CPU targets."""
    cfg, m = results["config"], results["machine"]
    lines = [f"models  clip=3x{'x'.join(map(str, cfg['clip']))} device={cfg['device']} ({m.get('device_name')})  "
             f"reps={cfg['reps']} warmup={cfg['warmup']}  threads={m.get('torch_threads')}  "
             f"load={m.get('loadavg_1_5_15')} -> {m.get('loadavg_end_1_5_15')}"]
    cols = ("mode", "batch", "dtype", "model", "median ms", "IQR ms", "clips/s", "attn overhead", "x eager MERANet")
    rows = [(r["mode"], str(r["batch"]), r["dtype"], r["model"], f"{r['median_ms']:.1f}",
             f"{r['q1_ms']:.1f}-{r['q3_ms']:.1f}", f"{r['clips_per_s']:.2f}",
             _f(None if r.get("attention_overhead") is None else 100 * r["attention_overhead"], "+.1f") +
             ("%" if r.get("attention_overhead") is not None else ""),
             _f(r.get("speedup_vs_eager_meranet"), ".2f")) for r in results["measurements"]]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    if results.get("attention_profile"):
        lines += ["", "attention time (profiler: median of the interleaved profiled calls; CPU totals; "
                  "method in the JSON):"]
        for p in results["attention_profile"]:
            t = p["total"]
            lines.append(f"  {p['mode']:<9} batch={p['batch']} {p['dtype']:<8} {p['model']:<16} "
                         f"attention {t['attention_ms']:8.1f} ms "
                         f"(fwd {t['forward_ms']:.1f}, bwd {t['backward_ms']:.1f}; "
                         f"CA {p['ca']['attention_ms']:.1f}, STA {p['sta']['attention_ms']:.1f}, "
                         f"fused ops {p.get('fused', {}).get('attention_ms', 0.0):.1f}) = "
                         f"{100 * p['attention_fraction']:.1f}% of the profiled {p['profiled_call_ms']:.0f} ms"
                         + (f"; whole tails {p['tail']['attention_ms']:.1f} ms" if "tail" in p else "")
                         + (f"; all runs {', '.join(f'{v:.0f}' for v in p['runs_attention_ms'])} ms"
                            if len(p.get("runs_attention_ms", [])) > 1 else ""))
    checks = cpu_target_checks(results)
    if checks:
        lines += ["", "CPU targets (fused MERANet never slower than eager; its attention <= 1/4 of eager's):"]
        lines += [f"  {c}" for c in checks]
    if results.get("skipped"):
        lines.append("")
        lines += [f"not measured: {k}: {v}" for k, v in results["skipped"].items()]
    return "\n".join(lines)


def cpu_target_checks(results: dict) -> list[str]:
    out = []
    meas = {(r["mode"], r["batch"], r["dtype"], r["model"]): r for r in results["measurements"]}
    for (mode, batch, dt, model), r in meas.items():
        if model != "meranet18-fused":
            continue
        e = meas.get((mode, batch, dt, "meranet18-eager"))
        if e is None:
            continue
        ok = r["median_ms"] <= e["median_ms"]
        out.append(f"{'PASS' if ok else 'FAIL'} {mode} batch={batch} {dt}: fused {r['median_ms']:.1f} ms vs eager "
                   f"{e['median_ms']:.1f} ms")
    prof = {(p["mode"], p["batch"], p["dtype"], p["model"]): p for p in results.get("attention_profile", [])}
    for (mode, batch, dt, model), p in prof.items():
        if model != "meranet18-fused":
            continue
        e = prof.get((mode, batch, dt, "meranet18-eager"))
        if e is None or e["total"]["attention_ms"] <= 0:
            continue
        ratio = p["total"]["attention_ms"] / e["total"]["attention_ms"]
        out.append(f"{'PASS' if ratio <= 0.25 else 'FAIL'} {mode} batch={batch} {dt}: fused attention / eager "
                   f"attention = {ratio:.2f}")
        if p.get("tail", {}).get("attention_ms") and e.get("tail", {}).get("attention_ms"):
            ratio = p["tail"]["attention_ms"] / e["tail"]["attention_ms"]
            out.append(f"{'PASS' if ratio <= 0.25 else 'FAIL'} {mode} batch={batch} {dt}: fused tail / eager tail "
                       f"(both CA + STA + residual add + ReLU) = {ratio:.2f}")
    return out


def plot_model_times(results: dict, path: str | Path) -> Path:
    """Bars of the median time of each model variant, one panel per mode, grouped by batch (and dtype)."""
    plt = pyplot()

    rows = results["measurements"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(5.5 * max(1, len(modes)), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        groups = list(dict.fromkeys((r["batch"], r["dtype"]) for r in rows if r["mode"] == mode))
        width = 0.8 / max(1, len(models))
        for k, model in enumerate(models):
            xs, ys = [], []
            for g, (batch, dt) in enumerate(groups):
                for r in rows:
                    if (r["mode"], r["batch"], r["dtype"], r["model"]) == (mode, batch, dt, model):
                        xs.append(g + (k - (len(models) - 1) / 2) * width)
                        ys.append(r["median_ms"])
            bars = ax.bar(xs, ys, width, label=model)
            ax.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=7, padding=2)
        ax.set_xticks(range(len(groups)), [f"batch {b}\n{d}" for b, d in groups], fontsize=8)
        ax.set_ylabel("median ms per call")
        ax.set_title(mode, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
