"""Per-kernel resource table of the CUDA kernels (ptxas), with theoretical occupancy on an H200 (sm_90),
and the ptxas gate's check: exits 1 if a kernel spills registers or uses local memory (docs/design.md §3).

    python tools/cuda_resources.py [--out benchmarks/results/cuda_resources.md] [--logs F.json [--reuse]]

It compiles the device code of every csrc/cuda/*.cu with the build's own nvcc flags (setup.py prints them)
for every arch of TORCH_CUDA_ARCH_LIST, adding ptxas -v, and reads ptxas's report.
Occupancy needs each kernel's block size, which the host code picks at run time: it is computed for the
launch configurations recorded by the CUDA emulator while it ran tests/test_cuda_kernels.py
(build/cuda_emu/launches.tsv, written by `make test-cuda-emu`); kernels it never saw get none.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# sm_90 (H100 / H200) limits, from the CUDA C++ Programming Guide's compute-capability table and the
# occupancy calculator's allocation rules.
SM90 = dict(regs_per_sm=65536, reg_unit=256, max_regs_per_thread=255, smem_per_sm=228 * 1024,
            smem_unit=128, smem_reserved_per_block=1024, threads_per_sm=2048, blocks_per_sm=32, warp=32)


def occupancy(regs: int, threads: int, smem_bytes: int, lim: dict = SM90) -> tuple[float, int, str]:
    """(theoretical occupancy, resident blocks per SM, limiting factor) of a kernel on one SM."""
    warps = -(-threads // lim["warp"])
    max_warps = lim["threads_per_sm"] // lim["warp"]
    by = {"blocks": lim["blocks_per_sm"], "threads": max_warps // warps}
    regs_per_warp = -(-max(regs, 1) * lim["warp"] // lim["reg_unit"]) * lim["reg_unit"]
    by["registers"] = (lim["regs_per_sm"] // regs_per_warp) // warps
    smem = -(-(smem_bytes + lim["smem_reserved_per_block"]) // lim["smem_unit"]) * lim["smem_unit"]
    by["shared memory"] = lim["smem_per_sm"] // smem
    blocks = min(by.values())
    limiter = min(by, key=lambda k: (by[k], k != "threads"))
    return blocks * warps / max_warps, blocks, limiter


def arch_flags() -> list[str]:
    """-gencode flags for each arch of TORCH_CUDA_ARCH_LIST (default 9.0, as setup.py)."""
    flags = []
    for arch in os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0").replace(";", " ").split():
        num = arch.split("+")[0].replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def ptxas_logs() -> dict[str, str]:
    """ptxas -v output of every csrc/cuda/*.cu, compiled (device code only) with the build's nvcc flags."""
    from torch.utils import cpp_extension
    r = subprocess.run([sys.executable, "setup.py"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, MERANET_PRINT_NVCC_FLAGS="1"))
    cfg = json.loads(r.stdout.strip().splitlines()[-1])
    includes = [f"-I{d}" for d in cfg["include_dirs"] + cpp_extension.include_paths()]
    nvcc = os.path.join(cpp_extension.CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
    logs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
            cmd = ([nvcc, "-cubin", "-std=c++20"] + arch_flags() + cpp_extension.COMMON_NVCC_FLAGS +
                   cfg["nvcc_flags"] + ["-Xptxas", "-v"] + includes + [src, "-o", os.path.join(tmp, "k.cubin")])
            r = subprocess.run(cmd, capture_output=True, text=True)
            logs[os.path.basename(src)] = r.stdout + r.stderr
            if r.returncode:
                print(r.stderr[-6000:], file=sys.stderr)
                print(f"cuda_resources: {os.path.basename(src)} failed to compile (the ptxas gate fails a spill or "
                      "local-memory use: see above)", file=sys.stderr)
    return logs


def parse(logs: dict[str, str]) -> list[dict]:
    rows, cur = [], None
    lines = [(src, line) for src, log in logs.items() for line in log.splitlines()]
    for src, line in lines:
        m = re.search(r"Compiling entry function '(\S+)' for '(\w+)'", line)
        if m:
            cur = dict(file=src, mangled=m[1], arch=m[2], regs=0, spill_st=0, spill_ld=0, stack=0, smem=0)
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m[1])
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s[1]) if s else 0
    names = subprocess.run(["c++filt"], input="\n".join(r["mangled"] for r in rows), capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for r, name in zip(rows, names):
        name = re.sub(r"^(void )?(meranet::)?(\(anonymous namespace\)::)?", "", name)
        depth, end = 0, len(name)
        for i, ch in enumerate(name):  # cut the parameter list (the first '(' outside template brackets)
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                end = i
                break
        r["name"] = name[:end]
    return rows


STD_TYPEDEFS = {"int64_t", "int32_t", "int16_t", "int8_t", "uint64_t", "uint32_t", "uint16_t", "uint8_t", "size_t",
                "ptrdiff_t", "intptr_t", "uintptr_t"}


def emulator_key(signature: str) -> str:
    """'attend_kernel<c10::Half, 7, 4, false>' from g++'s __PRETTY_FUNCTION__ of the kernel."""
    head = signature.split("(")[0].split(" ")[-1].split("::")[-1]
    m = re.search(r"\[with (.*)\]$", signature)
    if not m:
        return head
    # g++ appends the typedefs the signature uses ("int64_t = long int") after the template arguments
    values = [item.split(" = ", 1)[1] for item in m[1].split("; ") if item.split(" = ")[0] not in STD_TYPEDEFS]
    return f"{head}<{', '.join(values)}>"


def launches(path: str) -> dict[str, set[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = defaultdict(set)
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                sig, threads, smem = line.rstrip("\n").split("\t")
                out[emulator_key(sig)].add((int(threads), int(smem)))
    return out


def table(rows: list[dict], seen: dict[str, set[tuple[int, int]]], header: str) -> str:
    lines = [header, "",
             "| file | kernel | arch | registers | spill st/ld B | stack B | static smem B | launched as "
             "(threads, dynamic smem B) | theoretical occupancy (blocks/SM, limiter) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["file"], r["name"], r["arch"])):
        configs = sorted(seen.get(r["name"], ()))
        occ = []
        for threads, dyn in configs:
            o, blocks, lim = occupancy(r["regs"], threads, r["smem"] + dyn)
            occ.append(f"{o:.0%} ({blocks}, {lim})")
        lines.append(f"| {r['file'].replace('_cuda.cu', '')} | `{r['name']}` | {r['arch']} | {r['regs']} | "
                     f"{r['spill_st']}/{r['spill_ld']} | {r['stack']} | {r['smem']} | "
                     f"{'; '.join(f'{t}, {d}' for t, d in configs) or 'not launched by the tests'} | "
                     f"{'; '.join(occ) or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="markdown table to write (default: print)")
    ap.add_argument("--logs", help="read / write the ptxas output of every file as JSON here (with --reuse: read)")
    ap.add_argument("--reuse", action="store_true", help="reuse --logs instead of recompiling")
    ap.add_argument("--launches", default=os.path.join(ROOT, "build", "cuda_emu", "launches.tsv"))
    args = ap.parse_args(argv)
    if args.reuse:
        with open(args.logs) as f:
            logs = json.load(f)
    else:
        logs = ptxas_logs()
        if args.logs:
            with open(args.logs, "w") as f:
                json.dump(logs, f)
    rows = parse(logs)
    if not rows:
        print("cuda_resources: no ptxas report in the build output (is nvcc installed?)", file=sys.stderr)
        return 1
    seen = launches(args.launches)
    if not seen:
        print(f"cuda_resources: no launch log at {args.launches}: occupancy needs block sizes, run "
              "`make test-cuda-emu` first", file=sys.stderr)
    bad = [r for r in rows if r["spill_st"] or r["spill_ld"] or r["stack"]]
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    per_file = defaultdict(list)
    for r in rows:
        per_file[r["file"]].append(r)
    header = "\n".join([
        "# CUDA kernel resources (ptxas), theoretical occupancy on an H200 (sm_90)", "",
        f"Generated by `make cuda-resources` (tools/cuda_resources.py) at commit {commit}, "
        f"{datetime.date.today()}, {next((ln for ln in nvcc if 'release' in ln), 'nvcc ?')}; the build's own flags "
        "(`-O3 -Xptxas -warn-spills,-warn-lmem-usage,-Werror`).",
        "Occupancy: resident warps / 64 per SM from the sm_90 limits (65536 registers in 256-register warp "
        "units, 228 KiB shared memory in 128 B units plus 1 KiB reserved per block, 2048 threads, 32 blocks), "
        "at the block sizes and dynamic shared memory the host code launched while the CUDA emulator ran "
        "tests/test_cuda_kernels.py (shapes of the tests, not of a model). Not a measurement: no kernel here "
        "has run on a GPU.", "",
        "| file | kernels | max registers | kernels with spills / stack | max static smem B |",
        "|---|---|---|---|---|"] + [
        f"| {f} | {len(rs)} | {max(r['regs'] for r in rs)} | "
        f"{sum(1 for r in rs if r['spill_st'] or r['spill_ld'] or r['stack'])} | {max(r['smem'] for r in rs)} |"
        for f, rs in sorted(per_file.items())])
    text = table(rows, seen, header)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"cuda_resources: {len(rows)} kernels, {len(bad)} with spills / stack -> {args.out}")
    else:
        print(text)
    for r in bad:
        print(f"SPILL: {r['file']}: {r['name']} ({r['arch']}): {r['spill_st']} B spill stores, "
              f"{r['stack']} B stack", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
