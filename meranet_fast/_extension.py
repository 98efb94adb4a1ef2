"""Loads the compiled extension ``meranet_fast._C`` and answers what it was built with.

Importing ``_C`` runs its ``TORCH_LIBRARY`` registrations, which creates ``torch.ops.meranet.*``.
The package stays importable without it (the eager and Triton paths need no compiled code); the
C++/CUDA backends ask :func:`require` and get an error that says how to build it.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

#: Path of a ``_C`` shared library to load instead of the in-place one (``make test-sanitize`` points it
#: at the sanitizer build in build/sanitize; README "Sanitizers").
ENV_EXTENSION_PATH = "MERANET_EXTENSION_PATH"


def _load_from(path: str):
    """Import the extension module at ``path`` as ``meranet_fast._C``; any failure raises ImportError."""
    if not os.path.isfile(path):
        raise ImportError(f"${ENV_EXTENSION_PATH}={path} is not a file")
    spec = importlib.util.spec_from_file_location("meranet_fast._C", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"${ENV_EXTENSION_PATH}={path} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["meranet_fast._C"] = module
    return module


if os.environ.get(ENV_EXTENSION_PATH):
    # Asked for explicitly: a failure must not quietly fall back to the eager paths.
    _C = _load_from(os.environ[ENV_EXTENSION_PATH])
    LOAD_ERROR: str | None = None
else:
    try:
        from meranet_fast import _C  # noqa: F401
        LOAD_ERROR = None
    except ImportError as exc:  # not built, or built against another torch
        _C = None
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"

BUILD_HINT = ("build it with `make build` (or `pip install --no-build-isolation -e .`) "
              "using the same torch you run with")


def is_loaded() -> bool:
    return _C is not None


def require() -> None:
    """Raise a RuntimeError naming the cause when the compiled extension is missing."""
    if _C is None:
        raise RuntimeError(f"meranet_fast._C is not available ({LOAD_ERROR}); {BUILD_HINT}")


def build_info() -> str:
    """What the extension was compiled with, e.g. ``"torch=2.14.1 openmp=1 cuda=1 cuda_runtime=13000"``."""
    require()
    return torch.ops.meranet.build_info()


def cuda_compiled() -> bool:
    return is_loaded() and " cuda=1" in build_info()
