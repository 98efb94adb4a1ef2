"""Benchmark whole models: one training step and one inference pass of 3D ResNet-18 and MERANet-18.

Variants (``--models``): ``resnet3d18`` (vanilla), ``meranet18-eager`` (attention by the eager reference),
``meranet18-fused`` (spatio-temporal attention by the fused op) and ``meranet18-fused-compile`` (the
fused model under ``torch.compile``). All are built from seed 0, 3 classes, the default shortcut.

* train step: ``zero_grad``, forward, cross-entropy on fixed random labels, backward, SGD(momentum) step,
  in ``train()`` mode. inference: ``eval()`` mode under ``torch.inference_mode()``.
* The variants are interleaved round-robin for each (batch, mode), and medians are reported.
  ``torch.compile`` runs in the untimed warmup (``dynamic=False``: one graph per batch size and mode).
* bf16 means ``torch.autocast`` to bfloat16 (parameters stay fp32); float32 is plain.

Attention time (profiler). After timing, ``profile_reps`` extra calls of each non-compiled MERANet variant
run under ``torch.profiler``, interleaved (eager, fused, eager, fused, ...); the run whose attention time is
the median is reported (all runs' attention times are kept), since one profiled call on a loaded machine can
be off by a factor of two. Forward hooks on every ``ChannelAttention3d`` / ``SpatioTemporalAttention3d`` open a
``record_function`` scope around the module's forward, so the forward attention time is the summed
``cpu_time_total`` of those scopes (on CUDA also their device time). The backward of those modules runs in
the autograd engine, outside any scope: it is attributed through the autograd sequence number, which the
profiler records both on each forward op and on the ``autograd::engine::evaluate_function: ...`` event
that runs its backward node. Every backward node whose sequence number belongs to an op recorded inside
an attention scope is counted (its full time, including gradient accumulation into its inputs). Not
counted: ``AccumulateGrad`` of the attention parameters (no sequence number; tiny tensors) and the
optimizer's update of them. The compiled variant is not profiled (hooks and scopes do not survive
compilation as module boundaries).

Whole tails. The fused operator also does the block's residual add and ReLU, which the eager block runs
outside its attention modules. So the profile also reports ``tail``: the time of every block's
``relu(sta(ca(y)) + shortcut)`` (the block's ``_attention_tail`` runs inside a ``record_function`` scope
during profiling; attributed like the modules), the same computation for both variants.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from meranet_fast.benchmark import harness

__all__ = ["MODEL_VARIANTS", "ATTENTION_SCOPES", "attention_scopes", "profile_attention", "run_model_benchmark"]

MODEL_VARIANTS = ("resnet3d18", "meranet18-eager", "meranet18-fused", "meranet18-fused-compile")
#: record_function scope name per attention module class.
ATTENTION_SCOPES = {"ChannelAttention3d": "meranet.bench.ca", "SpatioTemporalAttention3d": "meranet.bench.sta"}
#: record_function scope around each residual block's whole attention tail (attention + residual + ReLU).
TAIL_SCOPE = "meranet.bench.tail"
_EVAL_PREFIX = "autograd::engine::evaluate_function: "


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Operators of this namespace are attention by definition: their events are scopes of their own.
FUSED_OP_PREFIX = "meranet::"


def _fused_attention_modules(model: torch.nn.Module) -> set[int]:
    """ids of attention modules whose owner runs them as one fused op (``meranet::ra_tail``).

    Such a block calls the modules only when they carry forward hooks, so hooking them would profile
    a different computation than the one timed: they are left unhooked and the fused op's own event
    is the scope (see :data:`FUSED_OP_PREFIX`).
    """
    skip = set()
    for m in model.modules():
        ca, sta = getattr(m, "ca", None), getattr(m, "sta", None)
        if ca is not None and sta is not None and getattr(sta, "backend", "eager") != "eager":
            skip.update((id(ca), id(sta)))
    return skip


def _scoped(fn: Callable, scope: str) -> Callable:
    def run(*args, **kwargs):
        with torch.profiler.record_function(scope):
            return fn(*args, **kwargs)
    return run


@contextlib.contextmanager
def attention_scopes(model: torch.nn.Module):
    """Wrap the forward of every (unfused) attention module of ``model`` in a ``record_function`` scope,
    and every attention block's tail (its ``_attention_tail``, for blocks whose ``attention`` is set) in
    :data:`TAIL_SCOPE`."""
    handles = []
    tails = [m for m in model.modules() if getattr(m, "attention", False) and hasattr(m, "_attention_tail")]
    for block in tails:
        block._attention_tail = _scoped(block._attention_tail, TAIL_SCOPE)  # instance attribute, removed below
    fused = _fused_attention_modules(model)
    for module in model.modules():
        scope = ATTENTION_SCOPES.get(type(module).__name__)
        if scope is None or id(module) in fused:
            continue
        stack: list = []

        def pre(mod, args, _scope=scope, _stack=stack):
            rf = torch.profiler.record_function(_scope)
            rf.__enter__()
            _stack.append(rf)

        def post(mod, args, output, _stack=stack):
            _stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield len(handles) // 2
    finally:
        for h in handles:
            h.remove()
        for block in tails:
            del block._attention_tail


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def attribute_attention(events) -> dict:
    """Attention time in ms from profiler ``events`` (see the module docstring for the method).

    Returns ``{"ca"|"sta"|"fused": {"forward_ms", "backward_ms", "forward_device_ms", "backward_device_ms",
    "calls", ...}}`` plus ``"total"`` summed over them, and ``"tail"`` (whole attention tails, residual add
    and ReLU included). ``fused`` holds ``meranet::*`` operator calls that are not inside a module scope
    (the fused RA tail: CA + STA + residual add + ReLU in one op).
    """
    scopes = set(ATTENTION_SCOPES.values())

    def module_key(name: str) -> str | None:
        if name in scopes:
            return name
        return "fused" if name.startswith(FUSED_OP_PREFIX) else None

    out = _attribute(events, module_key, (*scopes, "fused"))
    total = {k: sum(v[k] for v in out.values()) for k in ("forward_ms", "backward_ms", "forward_device_ms",
                                                         "backward_device_ms", "calls")}
    res = {{"meranet.bench.ca": "ca", "meranet.bench.sta": "sta"}.get(s, s): v for s, v in out.items()}
    res["total"] = total
    res["tail"] = _attribute(events, lambda name: name if name == TAIL_SCOPE else None, (TAIL_SCOPE,))[TAIL_SCOPE]
    for v in res.values():
        v["attention_ms"] = v["forward_ms"] + v["backward_ms"]
        v["attention_device_ms"] = v["forward_device_ms"] + v["backward_device_ms"]
    return res


def _attribute(events, key: Callable[[str], str | None], keys: Sequence[str]) -> dict:
    """Forward and backward time per key of the outermost events that ``key`` names (module docstring)."""
    out = {s: {"forward_ms": 0.0, "backward_ms": 0.0, "forward_device_ms": 0.0, "backward_device_ms": 0.0,
               "calls": 0} for s in keys}
    seq_owner: dict[tuple[int, int], str] = {}
    for ev in events:
        k = key(ev.name)
        if k is None:
            continue
        # a scope inside another scope (e.g. the fused STA op inside the STA module) is counted once;
        # ops run by a backward node are the backward's, attributed below by sequence number
        parent, nested = ev.cpu_parent, False
        while parent is not None:
            if key(parent.name) is not None or parent.name.startswith(_EVAL_PREFIX):
                nested = True
                break
            parent = parent.cpu_parent
        if nested:
            continue
        out[k]["forward_ms"] += ev.cpu_time_total / 1e3
        out[k]["forward_device_ms"] += getattr(ev, "device_time_total", 0.0) / 1e3
        out[k]["calls"] += 1
        if ev.sequence_nr is not None and ev.sequence_nr >= 0:
            seq_owner[(ev.thread, ev.sequence_nr)] = k
        for child in _descendants(ev):
            if child.sequence_nr is not None and child.sequence_nr >= 0:
                seq_owner[(child.thread, child.sequence_nr)] = k
    for ev in events:
        if not ev.name.startswith(_EVAL_PREFIX) or ev.sequence_nr is None or ev.sequence_nr < 0:
            continue
        owner = seq_owner.get((ev.fwd_thread, ev.sequence_nr))
        if owner is None:
            continue
        out[owner]["backward_ms"] += ev.cpu_time_total / 1e3
        out[owner]["backward_device_ms"] += getattr(ev, "device_time_total", 0.0) / 1e3
    return out


def profile_attention(model: torch.nn.Module, fn: Callable[[], object], device: torch.device) -> dict:
    """Run ``fn`` once under the profiler with attention scopes; attention and step time in ms."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with attention_scopes(model) as n_modules:
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            fn()
            harness.synchronize(device)
            wall = time.perf_counter() - t0
    res = attribute_attention(prof.events())
    res["profiled_call_ms"] = wall * 1e3
    res["attention_modules"] = n_modules
    res["attention_fraction"] = res["total"]["attention_ms"] / res["profiled_call_ms"]
    return res


def _build(variant: str) -> torch.nn.Module:
    from meranet_fast import models

    torch.manual_seed(0)
    if variant == "resnet3d18":
        return models.resnet3d18(num_classes=3)
    if variant in ("meranet18-eager", "meranet18-fused", "meranet18-fused-compile"):
        return models.meranet18(num_classes=3, backend="eager" if variant == "meranet18-eager" else "auto")
    raise ValueError(f"unknown model variant {variant!r}; known: {MODEL_VARIANTS}")


def mixed_precision(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    """The context the benchmark runs a model in: autocast to ``dtype`` (float32 parameters, low-precision
    activations, as a mixed-precision training step does), or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def fused_model_available(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether fused MERANet runs here as the benchmark runs it: a tiny MERANet-10 forward and backward
    under :func:`mixed_precision` (its blocks call the fused tail operator)."""
    try:
        from meranet_fast import models

        model = models.meranet10(num_classes=3).to(device).eval()  # eval: batch-1 BN on 1x1x1 maps
        x = torch.randn(1, 3, 2, 16, 16, device=device)
        with mixed_precision(device, dtype)():
            out = model(x)
        out.float().sum().backward()
        return True, "ok"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def run_model_benchmark(
    *,
    variants: Sequence[str] = MODEL_VARIANTS,
    batches: Sequence[int] = (2, 8),
    clip: tuple[int, int, int] = (16, 112, 112),
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    device: torch.device | str = "cpu",
    modes: Sequence[str] = ("train", "inference"),
    reps: int = 3,
    warmup: int = 1,
    profile: bool = True,
    profile_reps: int = 3,
    timer: harness.Timer | None = None,
    log: Callable[[str], None] = _log,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Run the model benchmark and return the results; ``on_progress(results so far)`` after every
    (batch, mode), so that a run cut off keeps what it measured."""
    device = torch.device(device)
    timer = timer or harness.timer_for(device)
    machine = harness.machine_info(device)
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    for v in variants:
        if v not in MODEL_VARIANTS:
            raise ValueError(f"unknown model variant {v!r}; known: {MODEL_VARIANTS}")
    want_fused = [v for v in variants if "fused" in v]
    measurements, profiles = [], []
    for dtype in dtypes:
        active = list(variants)
        if want_fused:
            ok, why = fused_model_available(device, dtype)
            if not ok:
                for v in want_fused:
                    skipped[v] = f"the fused op cannot run ({why})"
                    log(f"[bench] skipping {v}: {skipped[v]}")
                active = [v for v in active if v not in want_fused]
        amp = mixed_precision(device, dtype)
        base = {}
        for v in active:
            m = _build(v).to(device)
            base[v] = torch.compile(m, dynamic=False) if v.endswith("-compile") else m
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 3, *clip, generator=gen).to(device)
            y = torch.randint(0, 3, (batch,), generator=gen).to(device)
            for mode in modes:
                cases, fns = {}, {}
                for v, m in base.items():
                    if mode == "train":
                        m.train()
                        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

                        def step(m=m, opt=opt, x=x, y=y, amp=amp):
                            opt.zero_grad(set_to_none=True)
                            with amp():
                                loss = F.cross_entropy(m(x), y)
                            loss.backward()
                            opt.step()
                            return loss
                        fns[v] = step
                    else:
                        m.eval()

                        def infer(m=m, x=x, amp=amp):
                            with torch.inference_mode(), amp():
                                return m(x)
                        fns[v] = infer
                    cases[v] = fns[v]
                dt = str(dtype).replace("torch.", "")
                log(f"[bench] model {mode} batch={batch} {dt}: {', '.join(cases)} "
                    f"({warmup} warmup + {reps} reps, interleaved; compile happens in warmup)")
                t0 = time.perf_counter()
                stats = harness.run_interleaved(
                    cases, reps=reps, warmup=warmup, timer=timer,
                    progress=lambda s, t0=t0: log(f"[bench]   {s} ({time.perf_counter() - t0:.0f}s)"))
                vanilla = stats.get("resnet3d18")
                eager = stats.get("meranet18-eager")
                for v, st in stats.items():
                    row = {"model": v, "mode": mode, "batch": batch, "clip": "x".join(map(str, clip)),
                           "dtype": dt, "device": str(device), **st.to_dict(),
                           "clips_per_s": batch / st.median}
                    if vanilla is not None and v.startswith("meranet18"):
                        row["attention_overhead"] = (st.median - vanilla.median) / vanilla.median
                    if eager is not None and v != "meranet18-eager":
                        row["speedup_vs_eager_meranet"] = eager.median / st.median
                        row["paired_speedup_vs_eager_meranet"] = harness.paired_ratio(eager, st)
                    measurements.append(row)
                if profile:
                    runs: dict[str, list[dict]] = {}
                    for k in range(profile_reps):
                        for v in ("meranet18-eager", "meranet18-fused"):
                            if v in fns:
                                log(f"[bench]   profiling {v} {mode} batch={batch} ({k + 1}/{profile_reps})")
                                runs.setdefault(v, []).append(profile_attention(base[v], fns[v], device))
                    for v, rs in runs.items():
                        ordered = sorted(rs, key=lambda r: r["total"]["attention_ms"])
                        p = dict(ordered[(len(ordered) - 1) // 2])  # the median run (lower median if even)
                        p["runs_attention_ms"] = [r["total"]["attention_ms"] for r in rs]
                        p["runs_profiled_call_ms"] = [r["profiled_call_ms"] for r in rs]
                        profiles.append({"model": v, "mode": mode, "batch": batch, "dtype": dt, **p})
                if on_progress is not None:
                    on_progress(_results(machine, variants, batches, clip, dtypes, device, modes, reps, warmup,
                                         profile_reps, skipped, started, measurements, profiles))
            del x, y
    machine["loadavg_end_1_5_15"] = harness._loadavg()
    return _results(machine, variants, batches, clip, dtypes, device, modes, reps, warmup, profile_reps, skipped,
                    started, measurements, profiles)


def _results(machine, variants, batches, clip, dtypes, device, modes, reps, warmup, profile_reps, skipped, started,
             measurements, profiles) -> dict:
    return {
        "kind": "model",
        "machine": machine,
        "config": {"variants": list(variants), "batches": list(batches), "clip": list(clip),
                   "dtypes": [str(d).replace("torch.", "") for d in dtypes], "device": str(device),
                   "modes": list(modes), "reps": reps, "warmup": warmup, "profile_reps": profile_reps,
                   "timer": "cuda events" if device.type == "cuda" else "perf_counter",
                   "optimizer": "SGD(lr=1e-3, momentum=0.9)"},
        "skipped": skipped,
        "elapsed_s": time.perf_counter() - started,
        "measurements": measurements,
        "attention_profile": profiles,
        "attention_method": ("forward: record_function scopes opened by forward hooks on the attention modules; "
                             "backward: autograd evaluate_function events whose sequence number belongs to an "
                             "op recorded inside a scope; times are profiler CPU totals (device totals on CUDA); "
                             "tail: the same for a scope around each block's whole attention tail "
                             "relu(sta(ca(y)) + shortcut)"),
    }
