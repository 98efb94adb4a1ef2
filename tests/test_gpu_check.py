"""benchmarks/gpu_check.sh and its bookkeeping (benchmarks/gpu_check_report.py): the no-GPU exit, the
collection check, the summary and the output rules of the GPU machine."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check_report", ROOT / "benchmarks" / "gpu_check_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: the check would run")
def test_without_a_gpu_it_exits_at_once_with_one_line(tmp_path):
    start = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "GPU_CHECK_REHEARSAL": "0"})
    assert done.returncode == 3
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "no NVIDIA GPU" in done.stderr
    assert time.monotonic() - start < 5
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,count,errors", [
    ("425/1182 tests collected (757 deselected) in 36.70s", 425, 0),
    ("12 tests collected in 1.0s", 12, 0),
    ("no tests collected (30 deselected) in 0.5s", 0, 0),
    ("ERROR tests/test_data.py\n!!!! Interrupted: 2 errors during collection !!!!\n"
     "400/1100 tests collected (700 deselected), 2 errors in 30s", 400, 2),
])
def test_collected_count(text, count, errors):
    assert report.collected_count(text) == (count, errors)


def test_collection_check_wants_no_error_and_the_expected_count(tmp_path):
    log = tmp_path / "collect.log"
    log.write_text("a\n425/1182 tests collected (757 deselected) in 3s\n")
    assert report.cmd_collected(str(log), "425/1182 tests collected (757 deselected) in 9s") == 0
    assert report.cmd_collected(str(log), "426") == 1
    assert report.cmd_collected(str(log)) == 0
    log.write_text("400/1100 tests collected (700 deselected), 2 errors in 30s\n")
    assert report.cmd_collected(str(log), "400") == 1


def test_summary_counts_tests_and_fails_on_any_bad_step(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "tests_triton.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="10" failures="1" errors="0" '
        'skipped="2"/></testsuites>')
    steps = work / "steps.tsv"
    steps.write_text("build\t0\t50\ntests_triton\t1\t80\nbench_model\t124\t75\nbench_ra_tail_float32\tskipped\t0\n")
    assert report.cmd_summary(str(steps), str(work), str(out)) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"]
    assert [s["status"] for s in summary["steps"]] == ["ok", "failed", "timed out", "skipped"]
    assert summary["steps"][1]["tests"] == {"tests": 10, "failures": 1, "errors": 0, "skipped": 2, "passed": 7}
    assert "FAILED: tests_triton, bench_model, bench_ra_tail_float32" in capsys.readouterr().out
    steps.write_text("build\t0\t50\n")
    assert report.cmd_summary(str(steps), str(work), str(out)) == 0


def test_output_rules_of_the_gpu_machine(tmp_path):
    for name in ("results.tar.gz", "summary.json", "gpu_check.log"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "ok.json").write_bytes(b"{}")
    assert report.cmd_outputs(str(tmp_path)) == 0
    (tmp_path / "a" / "b" / "c").mkdir()
    (tmp_path / "a" / "b" / "c" / "deep.json").write_bytes(b"{}")
    assert report.cmd_outputs(str(tmp_path)) == 1
    shutil.rmtree(tmp_path / "a" / "b" / "c")
    for i in range(5):
        (tmp_path / f"extra{i}.txt").write_bytes(b"x")
    assert report.cmd_outputs(str(tmp_path)) == 1
    for i in range(5):
        (tmp_path / f"extra{i}.txt").unlink()
    (tmp_path / "summary.json").write_bytes(b"x" * (report.MAX_BYTES + 1))
    assert report.cmd_outputs(str(tmp_path)) == 1


def test_report_usage_is_explained():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check_report.py"), "nonsense"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "collected LOG" in done.stderr
