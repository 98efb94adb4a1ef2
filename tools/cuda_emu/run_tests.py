"""`make test-cuda-emu`: build the emulated CUDA extension from csrc/cuda and run the CUDA tests on it, once
per thread order (docs/design.md §6).

    python tools/cuda_emu/run_tests.py [--orders forward,reverse] [--out build/cuda_emu] [-- PYTEST_ARGS...]

The tests are the GPU tests themselves (tests/test_cuda_kernels.py, pointed at the emulated build by
tests/cuda_target.py) and the emulator's own tests (tests/test_cuda_emu.py). Exits non-zero when a
run fails. Orders: forward, reverse, random[:SEED] (see cuda_emu.h).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import build as emu_build  # noqa: E402

TESTS = ["tests/test_cuda_kernels.py", "tests/test_cuda_emu.py"]


def run_tests(library: str, selftest: str | None, order: str, pytest_args: list[str], tests: list[str] = TESTS,
              capture: bool = False) -> subprocess.CompletedProcess:
    env = emu_build.emu_env(library)
    env["CUDA_EMU_ORDER"] = order
    env["CUDA_EMU_LAUNCH_LOG"] = os.path.join(os.path.dirname(os.path.abspath(library)), "launches.tsv")
    if selftest:
        env["MERANET_CUDA_EMU_SELFTEST"] = os.path.abspath(selftest)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *tests, *pytest_args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=capture, text=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", default=os.environ.get("CUDA_EMU_ORDERS", "forward,reverse"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "cuda_emu"))
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    t0 = time.time()
    src = os.path.join(ROOT, "csrc")
    library = emu_build.build(args.out, src, emu_build.default_files(src), jobs=args.jobs)
    selftest = emu_build.build_selftest(args.out)
    timings = [f"build {time.time() - t0:.0f} s"]
    failed = []
    for order in args.orders.split(","):
        t = time.time()
        print(f"\n=== cuda_emu: CUDA tests, thread order {order} ===", flush=True)
        if run_tests(library, selftest, order, args.pytest_args or ["-q"]).returncode:
            failed.append(order)
        timings.append(f"{order} {time.time() - t:.0f} s")
    print(f"cuda_emu: {', '.join(timings)}" + (f"; FAILED in order(s) {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
