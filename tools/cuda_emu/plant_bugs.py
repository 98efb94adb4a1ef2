"""Proof that the emulated CUDA suite can fail: plants known bugs into a copy of csrc/cuda, one at a time,
and checks that the CUDA tests fail on each with the expected message (docs/design.md §6).

    python tools/cuda_emu/plant_bugs.py [--out build/cuda_emu] [--only NAME ...]

For each bug only the .cu file it is planted in (or, for a .cuh, the .cu files including it) is
recompiled; the other files' objects come from the emulated build in --out (built first if needed). A
small subset of tests/test_cuda_kernels.py runs against the result, in the forward thread order. Exits 1
if a planted bug is not caught (or is caught without its expected message), or if a bug's text is no
longer found in the sources (then update it here).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import build as emu_build  # noqa: E402
from run_tests import run_tests  # noqa: E402

# ca_pool / ra_pool / ra_attend on a channels_last_3d and a contiguous float32 input reach every kernel below.
_TEST = "tests/test_cuda_kernels.py::test_channel_attention_and_ra_tail_cuda_match_cpu"
SUBSET = [f"{_TEST}[shape0-dtype0-channels_last_3d-3]", f"{_TEST}[shape0-dtype0-contiguous-3]", "-x", "-q",
          "--tb=short"]


@dataclass
class Bug:
    name: str
    file: str      # under csrc/cuda (.cu, or a .cuh: the .cu files including it are recompiled)
    find: str      # text replaced (must occur exactly once)
    replace: str
    expect: str    # regex the failing run's output must contain


BUGS = [
    Bug("missing-barrier", "channel_attention_cuda.cu",
        "    sh_idx[tid] = best_i;\n  }\n  __syncthreads();\n",
        "    sh_idx[tid] = best_i;\n  }\n",
        # no emulator message: the reads of unwritten (poisoned) shared memory make the results NaN
        r"ca_pool output \d: .*(Tensor-likes are not close|Mismatched elements)"),
    Bug("shuffle-in-partial-warp", "ra_tail_cuda.cu",
        "      sum += __shfl_down_sync(0xffffffffu, sum, off);\n",
        "      if (lane < 16) sum += __shfl_down_sync(0xffffffffu, sum, off);\n",
        r"cuda_emu: kernel channel_reduce_cl_kernel<scalar_t = [\w:]+, acc_t = float, BWD = false> .*"
        r"__shfl_down_sync with mask 0xffffffff at block \(\d+,0,0\) thread \(\d+,0,0\): lane 16"),
    Bug("global-off-by-one", "pooled_attention.cuh",
        "gh >= 0 && gh < H && gw >= 0 && gw < W) {",
        "gh >= 0 && gh < H && gw >= 0 && gw <= W) {",
        r"cuda_emu: kernel attn_kernel<acc_t = float, K = \d> .*invalid memory access \(AddressSanitizer\) in "
        r"block \(\d+,0,0\) thread \(\d+,0,0\):.*heap-buffer-overflow"),
    Bug("shared-off-by-one", "channel_attention_cuda.cu",
        "const int other = tid + half * member_stride;",
        "const int other = tid + half * member_stride + 1;",
        r"cuda_emu: kernel reduce_positions_kernel<scalar_t = float, acc_t = float, CL = (true|false), MODE = 0> .*"
        r"invalid memory access \(AddressSanitizer\) in block \(\d+,\d+,0\) thread \(\d+,\d+,0\):.*use-after-poison"),
]


def including(cuda_dir: str, header: str) -> list[str]:
    """The .cu files of cuda_dir that include `header` (a file name there), directly or through other .cuh."""
    texts = {os.path.basename(p): open(p).read() for p in glob.glob(os.path.join(cuda_dir, "*.cu*"))}
    found, grew = {header}, True
    while grew:
        new = {f for f, t in texts.items() if f not in found and any(f'"cuda/{h}"' in t for h in found)}
        found |= new
        grew = bool(new)
    return sorted(f for f in found if f.endswith(".cu"))


def plant(bug: Bug, main_out: str, work: str) -> tuple[bool, str]:
    """Builds the emulated library with `bug` planted and runs the subset; (caught as expected, summary)."""
    src = os.path.join(work, bug.name, "csrc")
    shutil.copytree(os.path.join(ROOT, "csrc"), src)
    path = os.path.join(src, "cuda", bug.file)
    with open(path) as f:
        text = f.read()
    if text.count(bug.find) != 1:
        return False, f"the text to replace occurs {text.count(bug.find)} times in {bug.file} (expected once)"
    with open(path, "w") as f:
        f.write(text.replace(bug.find, bug.replace))
    planted = [bug.file] if bug.file.endswith(".cu") else including(os.path.join(src, "cuda"), bug.file)
    others = [os.path.join(main_out, os.path.splitext(f)[0] + ".o")
              for f in emu_build.default_files(os.path.join(ROOT, "csrc")) if f not in planted]
    lib = emu_build.build(os.path.join(work, bug.name, "out"), src, planted, jobs=1, link_objects=others,
                          quiet=True)
    r = run_tests(lib, None, "forward", SUBSET, tests=[], capture=True)
    output = r.stdout + r.stderr
    if r.returncode == 0:
        return False, "the tests PASSED with the bug planted"
    m = re.search(bug.expect, output, re.S)
    if not m:
        return False, "the tests failed, but without the expected message:\n" + output[-3000:]
    line = next((ln for ln in output.splitlines() if re.search(r"^E\s+(RuntimeError|AssertionError)", ln)), "")
    return True, line.strip()[:400]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "cuda_emu"))
    ap.add_argument("--only", nargs="*", help="names of the bugs to plant (default: all)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    args = ap.parse_args(argv)
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    t0 = time.time()
    src = os.path.join(ROOT, "csrc")
    emu_build.build(args.out, src, emu_build.default_files(src), jobs=args.jobs)  # objects of the unmodified files
    with tempfile.TemporaryDirectory(prefix="cuda_emu_bugs_") as work:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda b: plant(b, args.out, work), bugs))
    ok = True
    for bug, (caught, summary) in zip(bugs, results):
        ok &= caught
        print(f"{'caught' if caught else 'NOT CAUGHT':10s} {bug.name:24s} ({bug.file}): {summary}")
    print(f"cuda_emu: {sum(c for c, _ in results)}/{len(bugs)} planted bugs caught in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
