"""Triton kernels of the fused operators, registered as ``torch.ops.meranet.*_triton``.

Importing this package never fails. The spatio-temporal attention kernels register here, the
channel-attention and ra_tail kernels on the first :func:`load_error` call (which
:func:`meranet_fast.ops.backends.backend_status` makes). When any of them cannot be imported or registered
(triton missing, or a torch that rejects the registration), the Triton backend is unavailable as a whole
and ``backends.backend_status("triton", ...)`` gives the reason; a failure other than a missing triton
is also reported once as a warning.
"""
from __future__ import annotations

import importlib
import warnings

#: The kernel modules, in registration order.
KERNEL_MODULES = ("st_attention", "channel_attention", "ra_tail")

_ERROR: str | None = None  # why the Triton backend cannot be used; None while every module registered
_LOADED: set[str] = set()


def _load(module: str) -> None:
    """Import one kernel module (which registers its ops), recording the first failure."""
    global _ERROR
    if _ERROR is not None or module in _LOADED:
        return
    try:
        importlib.import_module(f"{__name__}.{module}")
    except Exception as exc:  # noqa: BLE001  (the package must import whatever goes wrong here)
        _ERROR = f"meranet_fast.ops.triton.{module} failed to register: {type(exc).__name__}: {exc}"
        missing = isinstance(exc, ImportError) and getattr(exc, "name", None) in ("triton", "triton.language")
        if missing:
            _ERROR = f"triton cannot be imported ({exc})"
        else:
            warnings.warn(f"the Triton backend is unavailable: {_ERROR}", RuntimeWarning, stacklevel=2)
    else:
        _LOADED.add(module)


def load_error() -> str | None:
    """Register every Triton kernel module (once); None when all registered, else why the backend is unavailable."""
    for module in KERNEL_MODULES:
        _load(module)
    return _ERROR


_load("st_attention")
