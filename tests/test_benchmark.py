"""Smoke tests of the benchmark harness and of ``meranet-fast bench`` (fast: tiny shapes, eager only)."""
from __future__ import annotations

import json
import statistics

import pytest
import torch
from fixtures.optional import need

from meranet_fast import _extension
from meranet_fast.benchmark import harness, report
from meranet_fast.benchmark.op_bench import make_pass_fn, run_op_benchmark
from meranet_fast.benchmark.specs import REGISTRY, BackendUnavailable, get_spec, parse_shape
from meranet_fast.cli import main as cli_main


class FakeTimer:
    """Returns scripted durations per case and records the call order."""

    def __init__(self, durations: dict):
        self.durations = {k: list(v) for k, v in durations.items()}
        self.order: list[str] = []

    def __call__(self, fn):
        name = fn()
        self.order.append(name)
        return self.durations[name].pop(0)


def test_quantile_and_stats_match_numpy_linear_interpolation():
    np = pytest.importorskip("numpy")
    vals = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert harness.quantile(vals, q) == pytest.approx(float(np.quantile(vals, q)))
    st = harness.summarize(vals)
    assert st.median == 3.5 and st.min == 1.0 and st.max == 10.0 and st.n == 6
    assert st.q1 == pytest.approx(2.25) and st.q3 == pytest.approx(4.75) and st.iqr == pytest.approx(2.5)
    d = st.to_dict()
    assert d["median_ms"] == pytest.approx(3500.0) and d["times_ms"][0] == pytest.approx(5000.0)
    with pytest.raises(ValueError):
        harness.summarize([])
    with pytest.raises(ValueError):
        harness.summarize([1.0, float("nan")])


def test_run_interleaved_round_robin_warmup_and_pairing():
    # warmup 1 call each (discarded) + 3 timed rounds, rotating the starting case each round
    timer = FakeTimer({"a": [99, 1, 2, 3], "b": [99, 10, 20, 30], "c": [99, 5, 5, 5]})
    cases = {n: (lambda n=n: n) for n in "abc"}
    stats = harness.run_interleaved(cases, reps=3, warmup=1, timer=timer)
    assert timer.order == list("abc") + list("abc") + list("bca") + list("cab")
    assert stats["a"].times_s == (1, 2, 3) and stats["b"].median == 20 and stats["c"].iqr == 0
    assert harness.paired_ratio(stats["b"], stats["a"]) == 10.0
    with pytest.raises(ValueError):
        harness.run_interleaved(cases, reps=0, timer=timer)


def test_cpu_timer_measures_a_sleep():
    import time

    t = harness.cpu_timer(lambda: time.sleep(0.02))
    assert 0.018 <= t < 0.5


def test_gbps_and_copy_case_bytes():
    assert harness.gbps(2_000_000_000, 0.5) == pytest.approx(4.0)
    fn, nbytes = harness.copy_case(1000, torch.float32, "cpu")
    assert nbytes == 2 * 1000 * 4
    assert fn().shape == (1000,)


def test_st_attention_spec_bytes_model_and_inputs():
    spec = get_spec("st_attention")
    shape = parse_shape("2x3x4x5x6")
    assert shape == (2, 3, 4, 5, 6)
    numel = 2 * 3 * 4 * 5 * 6
    assert spec.bytes_moved(shape, 4, "forward") == 2 * numel * 4
    assert spec.bytes_moved(shape, 4, "backward") == 3 * numel * 4
    assert spec.bytes_moved(shape, 2, "full") == 5 * numel * 2
    x, w, b = spec.make_inputs(shape, torch.float64, torch.device("cpu"))
    assert x.shape == shape and w.shape == (1, 2, 5, 5, 5) and b.shape == (1,) and x.dtype == torch.float64
    x2, _, _ = spec.make_inputs(shape, torch.float64, torch.device("cpu"))
    assert torch.equal(x, x2)  # deterministic inputs
    with pytest.raises(ValueError):
        parse_shape("2x0x3")
    with pytest.raises(KeyError):
        get_spec("nope")


def test_fused_spec_reports_unavailable_or_matches_reference():
    spec = REGISTRY["st_attention"]
    x, w, b = spec.make_inputs((1, 3, 2, 4, 4), torch.float32, torch.device("cpu"))
    try:
        fused = spec.fused("cpp", torch.device("cpu"))
    except BackendUnavailable as exc:
        assert str(exc)  # the reason is printed by the bench
        return
    try:
        got = fused(x, w, b)
    except Exception as exc:  # the op exists but the C++ backend cannot run here
        pytest.skip(f"cpp backend present but not runnable: {exc}")
    torch.testing.assert_close(got, spec.reference(x, w, b), rtol=1e-4, atol=1e-5)


def test_backward_pass_times_only_the_backward_on_a_graph_built_once():
    calls = {"forward": 0}
    spec = get_spec("st_attention")
    inputs = spec.make_inputs((1, 2, 2, 3, 3), torch.float64, torch.device("cpu"))

    def counted(*args):
        calls["forward"] += 1
        return spec.reference(*args)

    g = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64)
    bwd = make_pass_fn(counted, inputs, "backward", g)
    assert calls["forward"] == 1  # graph built outside the timed callable
    grads1, grads2 = bwd(), bwd()  # retain_graph: the same graph runs again
    assert calls["forward"] == 1 and len(grads1) == 3  # x, weight, bias
    for a, c in zip(grads1, grads2):
        torch.testing.assert_close(a, c)
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref = torch.autograd.grad(spec.reference(*leaves), leaves, g)
    for a, r in zip(grads1, ref):
        torch.testing.assert_close(a, r)
    full = make_pass_fn(counted, inputs, "full", g)
    full()
    full()
    assert calls["forward"] == 3  # full pass runs the forward inside
    fwd = make_pass_fn(counted, inputs, "forward")
    assert not fwd().requires_grad


def _check_op_results(res: dict, passes):
    assert res["kind"] == "op" and res["op"] == "st_attention"
    m = res["machine"]
    for key in ("torch", "device_name", "cpu_count", "torch_threads", "date", "loadavg_1_5_15"):
        assert key in m
    assert m["torch"] == torch.__version__
    rows = res["measurements"]
    assert {(r["pass"], r["impl"]) for r in rows} == {(p, i) for p in passes for i in ("eager", "copy")}
    numel = 1 * 4 * 3 * 6 * 6
    for r in rows:
        assert r["n"] == len(r["times_ms"]) == 2
        assert r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"]
        assert r["median_ms"] == pytest.approx(statistics.median(r["times_ms"]))
        if r["impl"] == "copy":
            assert r["bytes"] == 2 * numel * 4 and r["copy_fraction"] == 1.0
        else:
            factor = {"forward": 2, "backward": 3, "full": 5}[r["pass"]]
            assert r["bytes"] == factor * numel * 4
            assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9)
            assert r["speedup_vs_eager"] == pytest.approx(1.0) and r["max_abs_err_vs_eager"] == 0.0
    assert "cuda" in res["skipped"] and "triton" in res["skipped"]


def test_run_op_benchmark_eager_only():
    res = run_op_benchmark(get_spec("st_attention"), shapes=[(1, 4, 3, 6, 6)], backends=["eager", "cuda", "triton"],
                           passes=["forward", "backward"], reps=2, warmup=0, log=lambda s: None)
    _check_op_results(res, ["forward", "backward"])
    text = report.format_op_table(res)
    assert "1x4x3x6x6" in text and "not measured: cuda" in text


def test_cli_bench_writes_json_and_png(tmp_path, capsys):
    need("matplotlib")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = cli_main(["bench", "--op", "st_attention", "--shapes", "1x4x3x6x6", "--backends", "eager,cuda,triton",
                   "--pass", "forward,backward,full", "--reps", "2", "--warmup", "0",
                   "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    res = json.loads(out_json.read_text())
    _check_op_results(res, ["forward", "backward", "full"])
    assert res["config"]["reps"] == 2 and res["bytes_model"]["backward"].startswith("3*numel")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "median ms" in printed and "% copy" in printed


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        cli_main(["bench", "--op", "no_such_op", "--reps", "1"])
    with pytest.raises(SystemExit):
        cli_main(["bench", "--shapes", "1x2xfoo"])
    with pytest.raises(SystemExit):
        cli_main(["bench", "--pass", "sideways", "--shapes", "1x1x1x1x1"])
    with pytest.raises(SystemExit, match="NxCxTxHxW"):
        cli_main(["bench", "--op", "st_attention", "--shapes", "1x2x3x4"])


# --- channel_attention and ra_tail specs ------------------------------------------------------------
_NEW_OPS = {
    # name: (number of y-sized tensor inputs, bytes factors forward/backward/full)
    "channel_attention": (1, {"forward": 2, "backward": 3, "full": 5}),
    "ra_tail": (2, {"forward": 3, "backward": 4, "full": 7}),
}


@pytest.mark.parametrize("name", sorted(_NEW_OPS))
def test_new_spec_inputs_bytes_model_and_reference(name):
    spec = get_spec(name)
    n_big, factors = _NEW_OPS[name]
    shape = (2, 40, 3, 4, 5)  # C = 40 -> hidden = 40 // 16 = 2
    numel = 2 * 40 * 3 * 4 * 5
    for pass_, factor in factors.items():
        assert spec.bytes_moved(shape, 4, pass_) == factor * numel * 4
        assert spec.bytes_model[pass_].startswith(f"{factor}*numel(y)")
    inputs = spec.make_inputs(shape, torch.float64, torch.device("cpu"))
    assert all(t.shape == shape for t in inputs[:n_big])
    w_reduce, b_reduce, w_expand, b_expand = inputs[n_big:n_big + 4]
    assert w_reduce.shape == (2, 40) and b_reduce.shape == (2,)
    assert w_expand.shape == (40, 2) and b_expand.shape == (40,)
    if name == "ra_tail":
        assert inputs[6].shape == (1, 2, 5, 5, 5) and inputs[7].shape == (1,)
        assert not torch.equal(inputs[0], inputs[1])  # y and shortcut differ
    assert all(t.dtype == torch.float64 for t in inputs)
    assert all(torch.equal(a, b) for a, b in zip(inputs, spec.make_inputs(shape, torch.float64, "cpu")))
    tiny = spec.make_inputs((1, 3, 2, 2, 2), torch.float32, "cpu")
    assert tiny[n_big].shape == (1, 3)  # hidden = max(1, C // 16)
    with pytest.raises(ValueError, match="NxCxTxHxW"):
        spec.check_shape((1, 2, 3, 4))
    expected = spec.reference(*inputs)
    assert isinstance(expected, torch.Tensor) and expected.shape == shape  # out, not (out, a)


@pytest.mark.parametrize("name", sorted(_NEW_OPS))
def test_new_spec_cli_runs_and_checks_every_impl_against_eager(name, tmp_path):
    """The CLI on a tiny shape, 2 reps: every timed implementation passed the forward check vs eager."""
    out_json = tmp_path / f"{name}.json"
    rc = cli_main(["bench", "--op", name, "--shapes", "1x32x2x5x6", "--backends", "eager,cpp,cuda,triton",
                   "--pass", "forward,backward,full", "--reps", "2", "--warmup", "0", "--json", str(out_json)])
    assert rc == 0
    res = json.loads(out_json.read_text())
    assert res["op"] == name and res["config"]["reps"] == 2
    rows = res["measurements"]
    impls = {r["impl"] for r in rows}
    assert {"eager", "copy"} <= impls
    # cpp is timed when the extension is built, else skipped with the reason; cuda/triton need a GPU
    assert ("cpp" in impls) != ("cpp" in res["skipped"])
    assert res["skipped"].get("cuda") and res["skipped"].get("triton")
    numel = 32 * 2 * 5 * 6
    for r in rows:
        assert r["n"] == 2
        if r["impl"] == "copy":
            continue
        # the correctness gate ran: the forward error vs eager is recorded and within tolerance
        assert r["max_abs_err_vs_eager"] is not None and r["max_abs_err_vs_eager"] <= 1e-4
        assert r["bytes"] == _NEW_OPS[name][1][r["pass"]] * numel * 4
    assert {(r["pass"]) for r in rows if r["impl"] == "eager"} == {"forward", "backward", "full"}


@pytest.mark.parametrize("name", sorted(_NEW_OPS))
def test_new_spec_wrong_fused_output_is_not_timed(name):
    """A fused backend whose forward differs from eager is reported and left out, not timed."""
    import dataclasses

    spec = get_spec(name)

    def wrong_fused(backend, device):
        return lambda *args: spec.reference(*args) * 1.01 + 0.01

    bad = dataclasses.replace(spec, fused=wrong_fused)
    res = run_op_benchmark(bad, shapes=[(1, 16, 2, 3, 3)], backends=["eager", "cpp"], passes=["forward"],
                           reps=2, warmup=0, log=lambda s: None)
    assert "forward differs from eager" in res["skipped"]["cpp"]
    assert {r["impl"] for r in res["measurements"]} == {"eager", "copy"}


class _Sleepy(torch.autograd.Function):
    """Identity whose forward and backward sleep a known time: a probe for the profiler attribution."""

    @staticmethod
    def forward(ctx, x, fwd_s, bwd_s):
        import time

        ctx.bwd_s = bwd_s
        time.sleep(fwd_s)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        import time

        time.sleep(ctx.bwd_s)
        return g.clone(), None, None


class SpatioTemporalAttention3d(torch.nn.Module):  # the class name the attribution hooks look for
    def forward(self, x):
        return _Sleepy.apply(x, 0.02, 0.03) * 2


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sta = SpatioTemporalAttention3d()

    def forward(self, x):
        return self.sta(_Sleepy.apply(x, 0.05, 0.06))


def test_profiler_attributes_attention_forward_and_backward_by_sequence_number():
    from meranet_fast.benchmark.model_bench import profile_attention

    model = _Toy()
    x = torch.randn(3, 4, requires_grad=True)
    res = profile_attention(model, lambda: model(x).sum().backward(), torch.device("cpu"))
    sta = res["sta"]
    assert sta["calls"] == 1 and res["ca"]["calls"] == 0 and res["attention_modules"] == 1
    # inside the module: 20 ms forward, 30 ms backward; outside: 50 ms / 60 ms must not be counted
    assert 0.019 * 1e3 <= sta["forward_ms"] < 0.045 * 1e3
    assert 0.029 * 1e3 <= sta["backward_ms"] < 0.055 * 1e3
    assert res["total"]["attention_ms"] == pytest.approx(sta["forward_ms"] + sta["backward_ms"])
    assert 0.16 * 1e3 <= res["profiled_call_ms"] and 0.25 < res["attention_fraction"] < 0.5
    assert not model.sta._forward_hooks and not model.sta._forward_pre_hooks  # hooks removed


class _ToyBlock(torch.nn.Module):
    """A residual block with an attention tail: the 'residual' part sleeps outside the attention module."""

    attention = True

    def __init__(self):
        super().__init__()
        self.ca, self.sta = torch.nn.Identity(), SpatioTemporalAttention3d()

    def forward(self, x):
        return self._attention_tail(_Sleepy.apply(x, 0.05, 0.06), x)

    def _attention_tail(self, y, identity):
        return _Sleepy.apply(self.sta(self.ca(y)), 0.01, 0.015) + identity


def test_profiler_attributes_the_whole_attention_tail():
    from meranet_fast.benchmark.model_bench import profile_attention

    model = _ToyBlock()
    x = torch.randn(3, 4, requires_grad=True)
    res = profile_attention(model, lambda: model(x).sum().backward(), torch.device("cpu"))
    sta, tail = res["sta"], res["tail"]
    assert sta["calls"] == 1 and tail["calls"] == 1
    # the module: 20 ms forward, 30 ms backward; the tail adds 10 ms / 15 ms outside it; the 50 / 60 ms
    # before the tail are not counted
    assert 0.019 * 1e3 <= sta["forward_ms"] < 0.045 * 1e3 and 0.029 * 1e3 <= sta["backward_ms"] < 0.055 * 1e3
    assert 0.029 * 1e3 <= tail["forward_ms"] < 0.055 * 1e3 and 0.044 * 1e3 <= tail["backward_ms"] < 0.07 * 1e3
    assert "_attention_tail" not in vars(model)  # the scope wrapper is removed again


@pytest.mark.slow
def test_model_benchmark_tiny_clip(tmp_path):
    from meranet_fast.benchmark.model_bench import run_model_benchmark

    res = run_model_benchmark(variants=["resnet3d18", "meranet18-eager"], batches=[2], clip=(2, 16, 16),
                              modes=["inference"], reps=1, warmup=0, profile_reps=2, log=lambda s: None)
    rows = {r["model"]: r for r in res["measurements"]}
    assert set(rows) == {"resnet3d18", "meranet18-eager"}
    over = rows["meranet18-eager"]["attention_overhead"]
    assert over == pytest.approx((rows["meranet18-eager"]["median_ms"] - rows["resnet3d18"]["median_ms"])
                                 / rows["resnet3d18"]["median_ms"])
    (prof,) = res["attention_profile"]
    assert prof["model"] == "meranet18-eager" and prof["attention_modules"] == 16
    assert prof["sta"]["calls"] == 8 and prof["ca"]["calls"] == 8 and prof["sta"]["forward_ms"] > 0
    assert prof["sta"]["backward_ms"] == 0.0  # inference: no backward
    assert prof["tail"]["calls"] == 8 and prof["tail"]["forward_ms"] >= prof["sta"]["forward_ms"]
    assert len(prof["runs_attention_ms"]) == 2 and prof["total"]["attention_ms"] == min(prof["runs_attention_ms"])
    assert "attention time" in report.format_model_table(res)
    need("matplotlib")  # the chart, after every other check has run
    assert report.plot_model_times(res, tmp_path / "m.png").stat().st_size > 0


@pytest.mark.skipif(not _extension.is_loaded(), reason="the fused tail operator needs meranet_fast._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_model_probe_runs_the_model_as_the_benchmark_does(dtype):
    """The probe that decides whether the fused variants are measured runs fused MERANet under the
    benchmark's autocast: float32 parameters with bfloat16 activations must pass (an earlier probe
    called the STA op with bfloat16 activations and float32 weights and skipped bf16 runs)."""
    from meranet_fast.benchmark.model_bench import fused_model_available

    assert fused_model_available(torch.device("cpu"), dtype) == (True, "ok")


@pytest.mark.slow
def test_fused_model_profile_sees_the_fused_tail_without_changing_the_path():
    from meranet_fast.benchmark.model_bench import fused_model_available, profile_attention
    from meranet_fast.models import meranet18

    ok, why = fused_model_available(torch.device("cpu"), torch.float32)
    if not ok:
        pytest.skip(why)
    model = meranet18(num_classes=3).train()
    x = torch.randn(2, 3, 2, 16, 16)
    res = profile_attention(model, lambda: model(x).sum().backward(), torch.device("cpu"))
    # 8 blocks, each one meranet:: tail op; the modules were not hooked, so no fallback to them
    assert res["ca"]["calls"] == 0 and res["sta"]["calls"] == 0 and res["fused"]["calls"] == 8
    assert res["fused"]["forward_ms"] > 0 and res["fused"]["backward_ms"] > 0
    # the whole-tail scopes hold the fused ops (plus the views of the CA weights they are given)
    assert res["tail"]["calls"] == 8 and res["tail"]["forward_ms"] >= res["fused"]["forward_ms"]
    assert res["tail"]["backward_ms"] >= res["fused"]["backward_ms"]


def test_op_benchmark_reports_its_results_after_every_shape():
    """What `--json` rewrites after every shape, so a run cut off by a time limit keeps what it measured."""
    seen = []
    res = run_op_benchmark(get_spec("st_attention"), shapes=[(1, 4, 3, 6, 6), (1, 2, 2, 4, 4)], backends=("eager",),
                           passes=("forward",), reps=1, warmup=0, log=lambda s: None,
                           on_progress=lambda r: seen.append(sorted({m["shape"] for m in r["measurements"]})))
    assert seen == [["1x4x3x6x6"], ["1x2x2x4x4", "1x4x3x6x6"]]
    assert sorted({m["shape"] for m in res["measurements"]}) == seen[-1]


@pytest.mark.triton
def test_the_kernel_level_st_attention_script_runs(tmp_path, triton_device):
    """benchmarks/bench_gpu_st_attention.py (kernel-level timings, no autograd layer): its CPU smoke command
    times eager, Triton and the copy baseline and writes them."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_gpu_st_attention.py")
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, script, "--device", triton_device.type, "--shapes", "1x4x3x5x6", "--dtypes", "float32",
           "--passes", "forward", "--reps", "2", "--warmup", "1", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    timed = {m["impl"]: m for m in results["measurements"]}
    assert {"eager", "triton", "copy"} <= set(timed), results
    assert all(m["median_ms"] > 0 for m in timed.values())
    assert timed["triton"]["max_rel_err_vs_eager"] < 1e-3


@pytest.mark.skipif(not _extension.is_loaded(), reason="the compiled composition needs meranet_fast._C")
def test_the_composition_overhead_script_compares_equal_computations(tmp_path):
    """benchmarks/composition_overhead.py (docs/design.md §4.2): its Python composition gives ra_tail's values
    and gradients (the script checks them before timing), and it writes both timings."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "composition_overhead.py")
    out = tmp_path / "composition.json"
    run = subprocess.run([sys.executable, script, "--shapes", "2x32x2x3x4,1x16x1x2x2", "--reps", "2",
                          "--warmup", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [m["shape"] for m in results["measurements"]] == ["2x32x2x3x4", "1x16x1x2x2"]
    assert all(m["cpp_ms"] > 0 and m["python_ms"] > 0 for m in results["measurements"])
    assert results["backend"] == "cpp"
