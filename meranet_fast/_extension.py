"""Loads the compiled extension ``meranet_fast._C`` and answers what it was built with.

Importing ``_C`` runs its ``TORCH_LIBRARY`` registrations, which creates ``torch.ops.meranet.*``.
The package stays importable without it (the eager and Triton paths need no compiled code); the
C++/CUDA backends ask :func:`require` and get an error that says how to build it.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

try:
    from meranet_fast import _C  # noqa: F401
    LOAD_ERROR: str | None = None
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
