"""Timing harness: warmup, interleaved repeated runs, robust statistics, bandwidth and machine info.

Method (why it looks like this):

* Every compared implementation runs in the *same* run, round-robin (``A B C, B C A, C A B, ...``), so
  that slow phases of a noisy, shared machine hit all of them alike; speedups are ratios taken from
  one run, and the paired ratio (median over rounds of ``t_ref[r] / t_impl[r]``) is reported too.
* Warmup calls (untimed) come first, for every implementation, also round-robin.
* CPU: ``time.perf_counter`` around one call. CUDA: ``torch.cuda.Event`` pairs on the current stream,
  after a ``synchronize`` so earlier queued work is not billed to the call, read after the end event
  has completed.
* Reported: the median and the spread (quartiles Q1/Q3 and min/max) of the per-call times; the Python
  garbage collector is off inside the timed loop.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Stats",
    "quantile",
    "summarize",
    "cpu_timer",
    "CudaTimer",
    "timer_for",
    "run_interleaved",
    "paired_ratio",
    "gbps",
    "copy_case",
    "machine_info",
    "synchronize",
]

Timer = Callable[[Callable[[], object]], float]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Per-call times (seconds) of one implementation and their summary."""

    times_s: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.times_s)

    @property
    def median(self) -> float:
        return statistics.median(self.times_s)

    @property
    def q1(self) -> float:
        return quantile(self.times_s, 0.25)

    @property
    def q3(self) -> float:
        return quantile(self.times_s, 0.75)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        return min(self.times_s)

    @property
    def max(self) -> float:
        return max(self.times_s)

    def to_dict(self) -> dict:
        """Milliseconds, for reports and JSON."""
        ms = 1e3
        return {
            "n": self.n,
            "median_ms": self.median * ms,
            "q1_ms": self.q1 * ms,
            "q3_ms": self.q3 * ms,
            "iqr_ms": self.iqr * ms,
            "min_ms": self.min * ms,
            "max_ms": self.max * ms,
            "times_ms": [t * ms for t in self.times_s],
        }


def summarize(times_s: Sequence[float]) -> Stats:
    if len(times_s) == 0:
        raise ValueError("no timings to summarize")
    if any(not math.isfinite(t) or t < 0 for t in times_s):
        raise ValueError(f"timings must be finite and non-negative, got {list(times_s)}")
    return Stats(tuple(float(t) for t in times_s))


def cpu_timer(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn``, by ``time.perf_counter``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class CudaTimer:
    """Seconds of one call of ``fn`` on a CUDA device, by a ``torch.cuda.Event`` pair.

    Synchronises first (queued work from before is not billed to ``fn``), records the events on the
    current stream around the call, and waits for the end event before reading the elapsed time.
    """

    def __init__(self, device: torch.device | str | int | None = None):
        self.device = torch.device(device if device is not None else "cuda")

    def __call__(self, fn: Callable[[], object]) -> float:
        with torch.cuda.device(self.device):
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3


def timer_for(device: torch.device | str) -> Timer:
    device = torch.device(device)
    if device.type == "cuda":
        return CudaTimer(device)
    if device.type == "cpu":
        return cpu_timer
    raise ValueError(f"no timer for device type {device.type!r} (cpu and cuda are supported)")


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_interleaved(
    cases: Mapping[str, Callable[[], object]],
    *,
    reps: int,
    warmup: int = 1,
    timer: Timer = cpu_timer,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Time every case ``reps`` times, round-robin, after ``warmup`` untimed calls of each.

    Round ``r`` starts at case ``r mod len(cases)`` so no case always runs first (right after the
    previous round's last case, or after a cold cache). Returns ``{name: Stats}``; ``times_s[r]`` of
    every case come from the same round ``r``, which :func:`paired_ratio` relies on.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(cases)
    if not names:
        raise ValueError("no cases to time")
    for w in range(warmup):
        for name in names:
            timer(cases[name])
        if progress:
            progress(f"warmup {w + 1}/{warmup}")
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(timer(cases[name]))
            if progress:
                progress(f"rep {r + 1}/{reps}")
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: summarize(ts) for name, ts in times.items()}


def paired_ratio(reference: Stats, other: Stats) -> float:
    """Median over rounds of ``reference[r] / other[r]`` (> 1: ``other`` is faster)."""
    if reference.n != other.n:
        raise ValueError(f"paired ratio needs equal repetitions, got {reference.n} and {other.n}")
    return statistics.median(a / b for a, b in zip(reference.times_s, other.times_s))


def gbps(bytes_moved: int, seconds: float) -> float:
    """Effective bandwidth in GB/s (1e9 bytes per second)."""
    if seconds <= 0:
        return float("nan")
    return bytes_moved / seconds / 1e9


def copy_case(numel: int, dtype: torch.dtype, device: torch.device | str) -> tuple[Callable[[], object], int]:
    """``(fn, bytes)``: ``dst.copy_(src)`` of ``numel`` elements, the device's practical bandwidth roof.

    It moves ``2 * numel * itemsize`` bytes (read ``src``, write ``dst``).
    """
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * numel * src.element_size()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What the numbers were measured on: versions, device, CPUs, threads, date and load average."""
    device = torch.device(device)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "loadavg_1_5_15": _loadavg(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        cap = torch.cuda.get_device_capability(device)
        info["capability"] = f"{cap[0]}.{cap[1]}"
    else:
        info["device_name"] = info["cpu"]
    try:
        from meranet_fast import _extension

        info["extension"] = _extension.build_info() if _extension.is_loaded() else _extension.LOAD_ERROR
    except Exception as exc:  # the report must not fail on this
        info["extension"] = f"unavailable: {exc}"
    return info
