"""Build the emulated CUDA extension: csrc/cuda/*.cu rewritten by rewrite.py, compiled by the host C++
compiler against cuda_emu.h, with AddressSanitizer, as a shared library registering the CUDA operators
under the namespace ``meranet_emu`` for CPU tensors (docs/design.md §6).

    python tools/cuda_emu/build.py [--out build/cuda_emu] [--src csrc] [--files st_attention_cuda.cu ...]
                                   [--no-asan] [--jobs 2]

Prints the library's path on the last line. Incremental: an object is recompiled when its generated
source, a header it includes or the flags changed. The library links against the project's
``meranet_fast/_C`` (the shared argument checks and CPU helpers), which must be built first.

Loading the library needs the ASan runtime first in the process (LD_PRELOAD); ``emu_env()`` gives the
environment, and tools/cuda_emu/run_tests.py uses it to run the tests.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from rewrite import RewriteError, rewrite  # noqa: E402

CXX = os.environ.get("CXX", "g++")
ASAN_FLAGS = ["-fsanitize=address", "-fsanitize-recover=address", "-fno-omit-frame-pointer"]
# halt_on_error=0: a report becomes the kernel's Python exception (cuda_emu.h) instead of an abort.
ASAN_OPTIONS = ("detect_leaks=0:halt_on_error=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:"
                "new_delete_type_mismatch=0:print_summary=0")


def _runtime_library(name: str) -> str:
    path = subprocess.run([CXX, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SystemExit(f"cuda_emu: {CXX} has no {name}; install it (or build with --no-asan)")
    return os.path.realpath(path)


def asan_preload() -> list[str]:
    """The ASan runtime, and libstdc++ so that ASan's C++ exception interceptor finds __cxa_throw (Python
    itself does not load libstdc++ before the runtime initialises)."""
    return [_runtime_library("libasan.so"), _runtime_library("libstdc++.so.6")]


def emu_env(library: str, asan: bool = True, base: dict | None = None) -> dict:
    """Environment for a process that loads the emulated library (MERANET_CUDA_EMU points the tests at it)."""
    env = dict(os.environ if base is None else base)
    env["MERANET_CUDA_EMU"] = os.path.abspath(library)
    if asan:
        env["LD_PRELOAD"] = " ".join(p for p in asan_preload() + [env.get("LD_PRELOAD", "")] if p)
        env["ASAN_OPTIONS"] = ASAN_OPTIONS + (":" + env["ASAN_OPTIONS"] if env.get("ASAN_OPTIONS") else "")
    return env


def _torch_flags() -> tuple[list[str], list[str]]:
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # as setup.py: cpp_extension guesses at import otherwise
    import torch
    from torch.utils import cpp_extension
    inc = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch", "-ltorch_cpu"]
    return inc + [abi], libs


def _extension_library() -> str:
    found = sorted(glob.glob(os.path.join(ROOT, "meranet_fast", "_C*.so")))
    if not found:
        raise SystemExit("cuda_emu: meranet_fast/_C is not built; run `make build` first")
    return found[0]


def _up_to_date(obj: str, dep: str, stamp: str, key: str) -> bool:
    if not (os.path.exists(obj) and os.path.exists(dep) and os.path.exists(stamp)):
        return False
    with open(stamp) as f:
        if f.read() != key:
            return False
    with open(dep) as f:
        deps = f.read().replace("\\\n", " ").split(":", 1)[1].split()
    t = os.path.getmtime(obj)
    return all(os.path.exists(d) and os.path.getmtime(d) <= t for d in deps)


def build(out: str, src_root: str, files: list[str], asan: bool = True, jobs: int = 2,
          extra_flags: list[str] | None = None, quiet: bool = False, cuda_dir: str | None = None,
          link_objects: list[str] | None = None) -> str:
    """Rewrite and compile `files` (in cuda_dir, default src_root/cuda) into out/libmeranet_emu.so.

    src_root is on the include path (the project's csrc); link_objects (objects of an earlier build) are
    linked in too. Returns the library's path."""
    cuda_dir = cuda_dir or os.path.join(src_root, "cuda")
    t0 = time.time()
    gen = os.path.join(out, "gen")
    os.makedirs(os.path.join(gen, "cuda"), exist_ok=True)
    # Every .cuh is rewritten too, so that "cuda/common.cuh" resolves to its emulated copy first.
    for path in sorted(glob.glob(os.path.join(cuda_dir, "*.cuh"))) + [os.path.join(cuda_dir, f) for f in files]:
        with open(path) as f:
            text = f.read()
        try:
            new = rewrite(text, os.path.abspath(path))
        except RewriteError as e:
            raise SystemExit(f"cuda_emu: {e}") from None
        name = os.path.basename(path)
        dst = os.path.join(gen, "cuda", name[:-3] + ".cpp" if name.endswith(".cu") else name)
        old = open(dst).read() if os.path.exists(dst) else None
        if old != new:  # keep mtimes of unchanged files (incremental builds)
            with open(dst, "w") as f:
                f.write(new)
    inc, libs = _torch_flags()
    flags = (["-std=c++20", "-O1", "-g1", "-fPIC", "-fno-strict-aliasing", "-fopenmp", "-Wno-unknown-pragmas",
              "-DMERANET_WITH_CUDA", f"-I{os.path.join(HERE, 'shim')}", f"-I{HERE}", f"-I{gen}",
              f"-I{os.path.abspath(src_root)}"] + inc +
             (ASAN_FLAGS if asan else []) + list(extra_flags or []))
    key = hashlib.sha256(" ".join([CXX] + flags).encode()).hexdigest()

    def compile_one(f: str) -> str:
        stem = os.path.splitext(f)[0]
        src = os.path.join(gen, "cuda", stem + ".cpp")
        obj, dep, stamp = (os.path.join(out, stem + ext) for ext in (".o", ".d", ".flags"))
        if _up_to_date(obj, dep, stamp, key):
            return obj
        cmd = [CXX] + flags + ["-MMD", "-MF", dep, "-c", src, "-o", obj]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"cuda_emu: compiling {f} failed:\n{shlex.join(cmd)}\n{r.stderr[-20000:]}")
        with open(stamp, "w") as s:
            s.write(key)
        return obj

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        objs = list(pool.map(compile_one, files))
    ext = _extension_library()
    lib = os.path.join(out, "libmeranet_emu.so")
    inputs = objs + list(link_objects or []) + [ext]
    if os.path.exists(lib) and os.path.getmtime(lib) >= max(os.path.getmtime(p) for p in inputs):
        return lib  # up to date (and possibly loaded by a running test: not rewritten)
    cmd = ([CXX, "-shared", "-o", lib] + objs + list(link_objects or []) + (ASAN_FLAGS if asan else []) +
           ["-fopenmp", ext, f"-Wl,-rpath,{os.path.dirname(ext)}"] + libs +
           [f"-Wl,-rpath,{p[2:]}" for p in libs if p.startswith("-L")])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"cuda_emu: linking failed:\n{shlex.join(cmd)}\n{r.stderr[-20000:]}")
    if not quiet:
        print(f"cuda_emu: built {lib} from {len(files)} file(s) in {time.time() - t0:.1f} s", file=sys.stderr)
    return lib


def default_files(src_root: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(src_root, "cuda", "*.cu")))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "cuda_emu"))
    ap.add_argument("--src", default=os.path.join(ROOT, "csrc"), help="the csrc folder (with cuda/*.cu)")
    ap.add_argument("--files", nargs="*", help="files under SRC/cuda (default: every .cu)")
    ap.add_argument("--selftest", action="store_true", help="also build tools/cuda_emu/selftest_kernels.cu")
    ap.add_argument("--no-asan", action="store_true", help="without AddressSanitizer (no memory checks)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    args = ap.parse_args(argv)
    files = args.files or default_files(args.src)
    lib = build(args.out, args.src, files, asan=not args.no_asan, jobs=args.jobs)
    if args.selftest:
        build_selftest(args.out, asan=not args.no_asan)
    print(lib)


def build_selftest(out: str, asan: bool = True) -> str:
    """The emulator's own test kernels (tools/cuda_emu/selftest_kernels.cu) as a second library."""
    return build(os.path.join(out, "selftest"), os.path.join(ROOT, "csrc"), ["selftest_kernels.cu"], asan=asan,
                 jobs=1, cuda_dir=HERE)


if __name__ == "__main__":
    main()
