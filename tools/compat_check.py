"""Checks of the compat environment (`make test-compat`): the GPU machine's versions, and a build against them.

  python tools/compat_check.py absent     prints the packages the GPU machine lacks (the Makefile uninstalls them)
  python tools/compat_check.py versions   torch 2.11.0 / Triton 3.6.0 / numpy < 2.4 installed, and the
                                          packages the GPU machine lacks (fvcore, openpyxl, expecttest) absent
  python tools/compat_check.py imports    (from the compat tree) every module of meranet_fast imports from
                                          this tree, the extension was built against this torch, and every
                                          Triton op registers

Exits non-zero with one line per problem.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys

#: The oldest supported versions, which the GPU machine runs (README, "Supported versions").
TORCH = "2.11.0"
TRITON = "3.6.0"
NUMPY_BELOW = (2, 4)  # Triton 3.6's interpreter fails with numpy >= 2.4
#: Packages the GPU machine does not have: the compat venv must not have them either, so that a test or a
#: module that needs one without saying so fails here.
ABSENT = ("fvcore", "openpyxl", "expecttest")


def check_versions() -> list[str]:
    import numpy
    import torch
    import triton

    problems = []
    if torch.__version__.split("+")[0] != TORCH:
        problems.append(f"torch is {torch.__version__}, expected {TORCH}")
    if triton.__version__ != TRITON:
        problems.append(f"triton is {triton.__version__}, expected {TRITON}")
    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= NUMPY_BELOW:
        problems.append(f"numpy is {numpy.__version__}, expected < {'.'.join(map(str, NUMPY_BELOW))}")
    problems += [f"{name} is installed, but the GPU machine lacks it" for name in ABSENT
                 if importlib.util.find_spec(name) is not None]
    print(f"compat: python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, "
          f"numpy {numpy.__version__}; absent: {', '.join(ABSENT)}")
    return problems


def check_imports() -> list[str]:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    import meranet_fast
    from meranet_fast import _extension
    from meranet_fast.ops import triton as triton_backend

    problems = []
    here = os.path.realpath(os.getcwd())
    if not os.path.realpath(meranet_fast.__file__).startswith(here + os.sep):
        problems.append(f"meranet_fast was imported from {meranet_fast.__file__}, not from {here}")
    names = [m.name for m in pkgutil.walk_packages(meranet_fast.__path__, "meranet_fast.")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  (report every module that fails, then fail)
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
    if not _extension.is_loaded():
        problems.append(f"meranet_fast._C did not load: {_extension.LOAD_ERROR}")
    else:
        info = _extension.build_info()
        if f"torch={torch.__version__.split('+')[0]}" not in info:
            problems.append(f"meranet_fast._C was built for another torch: {info}")
        print(f"compat: meranet_fast._C: {info}")
    error = triton_backend.load_error()
    if error is not None:
        problems.append(f"the Triton ops did not register: {error}")
    print(f"compat: {len(names)} modules imported from {os.path.dirname(meranet_fast.__file__)}")
    return problems


def main(argv: list[str]) -> int:
    checks = {"versions": check_versions, "imports": check_imports}
    if argv == ["absent"]:  # for the Makefile: what to uninstall after the install
        print(" ".join(ABSENT))
        return 0
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: python tools/compat_check.py {{absent|{'|'.join(checks)}}}", file=sys.stderr)
        return 2
    problems = checks[argv[0]]()
    for problem in problems:
        print(f"compat check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
