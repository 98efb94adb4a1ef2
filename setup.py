"""Build meranet_fast._C: a C++ extension always, CUDA sources added when they can be compiled.

Build knobs (environment variables):
  MERANET_SKIP_CUDA=1   never compile CUDA sources.
  MERANET_FORCE_CUDA=1  compile CUDA sources or fail (error if torch has no CUDA or nvcc is missing).
  TORCH_CUDA_ARCH_LIST  GPU architectures (default here: "9.0", the H100/H200 the library targets).
  MAX_JOBS              parallel compile jobs (ninja).
  MERANET_PRINT_NVCC_FLAGS=1  print the nvcc flags as JSON and exit (tools/cuda_resources.py).
  MERANET_NO_EXTENSION=1  install the Python package only (the Makefile uses it for `pip install -e`,
                          then compiles once in place with `setup.py build_ext --inplace`).
  MERANET_SANITIZE=address,undefined  compile the C++ CPU kernels with these sanitizers (-O1 -g, no
                          recovery; CUDA sources never). `make test-sanitize` builds so into build/sanitize
                          and loads the result through $MERANET_EXTENSION_PATH (README "Sanitizers").
CUDA is decided from the build toolchain (torch built with CUDA + nvcc found), never from
torch.cuda.is_available(): build machines usually have no GPU.
"""
from __future__ import annotations

import glob
import json
import os
import site
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _locate_cuda_home() -> None:
    """Point torch at a full toolkit: CUDA_HOME/CUDA_PATH if set, else /usr/local/cuda.

    torch falls back to the folder above the first `nvcc` on PATH, which is wrong when that nvcc is
    a wrapper script (e.g. /usr/local/bin/nvcc): its lib64 has no libcudart to link against.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_locate_cuda_home()

import torch  # noqa: E402  (after CUDA_HOME is settled: cpp_extension reads it at import)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    if _flag("MERANET_SKIP_CUDA") or _sanitizers():
        return False
    toolchain_ok = torch.version.cuda is not None and CUDA_HOME is not None and os.path.exists(
        os.path.join(CUDA_HOME, "bin", "nvcc"))
    if _flag("MERANET_FORCE_CUDA") and not toolchain_ok:
        sys.exit(f"MERANET_FORCE_CUDA=1 but CUDA cannot be compiled: torch.version.cuda={torch.version.cuda}, "
                 f"CUDA_HOME={CUDA_HOME} (set CUDA_HOME to a toolkit with bin/nvcc)")
    return toolchain_ok


def _sanitizers() -> str:
    """The ``MERANET_SANITIZE`` list (e.g. ``"address,undefined"``), or ``""`` for a normal build."""
    value = os.environ.get("MERANET_SANITIZE", "").strip()
    if value and not all(part in ("address", "undefined") for part in value.split(",")):
        sys.exit(f"MERANET_SANITIZE must list address and/or undefined, got {value!r}")
    return value


def _pip_cuda_include_dirs() -> list[str]:
    """Headers of pip-installed CUDA packages (nvidia/cu13/include and the like), when present."""
    dirs = []
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_runtime", "include")))
    return [d for d in dirs if os.path.isdir(d)]


# ptxas gate (docs/design.md §3): a register spill or any local-memory use fails the build.
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas", "-warn-spills,-warn-lmem-usage,-Werror"]


def _extension():
    sources = sorted(glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/composition/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    version_define = f'-DMERANET_TORCH_VERSION="{torch.__version__.split("+")[0]}"'
    sanitize = _sanitizers()
    cxx_flags = ["-O1", "-g"] if sanitize else ["-O3"]
    cxx_flags.append(version_define)
    link_flags = ["-fopenmp"]
    if sys.platform != "win32":
        cxx_flags.append("-fopenmp")
    if sanitize:
        # Every report is fatal (-fno-sanitize-recover); frame pointers and -g give usable stacks.
        sanitize_flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cxx_flags += [f'-DMERANET_SANITIZE="{sanitize}"', *sanitize_flags]
        link_flags += sanitize_flags
        print(f"meranet_fast: building the C++ CPU kernels with -fsanitize={sanitize}")
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], py_limited_api=True)
    if _want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc_flags = list(NVCC_FLAGS)
        kwargs["include_dirs"] += _pip_cuda_include_dirs()
        print(f"meranet_fast: building with CUDA (arch list {os.environ['TORCH_CUDA_ARCH_LIST']})")
        return CUDAExtension("meranet_fast._C", sources,
                             extra_compile_args={"cxx": cxx_flags + ["-DMERANET_WITH_CUDA"],
                                                 "nvcc": nvcc_flags + ["-DMERANET_WITH_CUDA"]},
                             extra_link_args=link_flags, **kwargs)
    print("meranet_fast: building the CPU extension only (no CUDA toolchain, MERANET_SKIP_CUDA=1 or MERANET_SANITIZE)")
    return CppExtension("meranet_fast._C", sources, extra_compile_args={"cxx": cxx_flags},
                        extra_link_args=link_flags, **kwargs)


if _flag("MERANET_PRINT_NVCC_FLAGS"):  # tools/cuda_resources.py compiles the .cu files with the build's flags
    print(json.dumps({"nvcc_flags": NVCC_FLAGS + ["-DMERANET_WITH_CUDA"],
                      "include_dirs": [os.path.join(ROOT, "csrc")] + _pip_cuda_include_dirs()}))
    sys.exit(0)

setup(
    ext_modules=[] if _flag("MERANET_NO_EXTENSION") else [_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
