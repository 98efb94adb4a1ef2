"""The backend registry of every fused op (docs/design.md §4): one vocabulary, one availability rule,
one ``"auto"`` order per device and one environment override.

Backends (the ``backend=`` argument of ``st_attention``, ``channel_attention`` and ``ra_tail``):

``"eager"``   the plain-PyTorch reference (``meranet_fast.ops.reference``).
``"cpp"``     the compiled C++ kernels (csrc/cpu) on CPU tensors.
``"cuda"``    the compiled CUDA kernels (csrc/cuda) on CUDA tensors, when ``meranet_fast._C`` was built
              with CUDA.
``"triton"``  the Triton kernels (meranet_fast/ops/triton): a CUDA device, or CPU tensors under the
              interpreter (``TRITON_INTERPRET=1``).
``"auto"``    ``$MERANET_BACKEND`` when it is set (then exactly like passing that name); otherwise the
              first of :data:`AUTO_ORDER` that can run on the device and takes the dtype, ``"eager"`` when
              none can.

An explicit backend (argument or ``$MERANET_BACKEND``) that cannot run raises ``RuntimeError`` saying
why, one whose kernels refuse the dtype ``TypeError``; the message has the same form for every op.
``channel_attention`` and ``ra_tail`` are composed in ``meranet_fast._C`` (csrc/composition/composition.cpp), so
every backend of theirs but ``"eager"`` needs the extension, ``"triton"`` included.
"""
from __future__ import annotations

import os

import torch

from meranet_fast import _extension
from meranet_fast.ops import _cpp  # noqa: F401  (registers the C++ operators' fake kernels and autograd)
from meranet_fast.ops import triton as _triton_pkg
from meranet_fast.ops._checks import backend_dtype_status

__all__ = [
    "OPS",
    "BACKENDS",
    "AUTO_ORDER",
    "ENV_BACKEND",
    "backend_status",
    "available_backends",
    "auto_backend",
    "resolve_backend",
]

#: The fused ops.
OPS = ("st_attention", "channel_attention", "ra_tail")
#: ``"auto"`` and the concrete backends.
BACKENDS = ("auto", "eager", "cpp", "cuda", "triton")
#: The environment override of ``backend="auto"``, for every op.
ENV_BACKEND = "MERANET_BACKEND"
_OLD_ENV_BACKEND = "MERANET_ST_ATTENTION_BACKEND"

#: What ``"auto"`` tries, in order, per device type. On CUDA, Triton comes first because its kernels are
#: verified in CI under the interpreter and the CUDA C++ kernels only under the CUDA emulator; the GPU
#: check's CUDA-vs-Triton numbers decide it once they exist. Meta tensors (shapes and dtypes only) go to
#: the C++ operators' fake kernels.
AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("triton", "cuda"), "meta": ("cpp",)}

#: Ops whose composition and autograd are C++ (csrc/composition/composition.cpp): they need meranet_fast._C for
#: every backend but "eager".
_COMPOSED_IN_CPP = ("channel_attention", "ra_tail")

# Decided once at import: the public functions are traced by torch.compile, which must not call into the
# extension while tracing.
_CPP_LOADED = _extension.is_loaded()
_CUDA_COMPILED = _CPP_LOADED and _extension.cuda_compiled()


def _no_extension() -> str:
    return f"meranet_fast._C is not available ({_extension.LOAD_ERROR}); {_extension.BUILD_HINT}"


def _triton_status(device: torch.device) -> tuple[bool, str]:
    error = _triton_pkg.load_error()  # registers every Triton kernel module once
    if error is not None:
        return False, f"the Triton kernels are unavailable: {error}"
    if device.type == "cuda":
        if torch.cuda.is_available():
            return True, "triton on a CUDA device"
        return False, "the tensors are on CUDA but no CUDA device is available"
    if device.type == "meta":
        return True, "the Triton operators' fake kernels (meta tensors: shapes and dtypes only)"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "triton CPU interpreter (TRITON_INTERPRET=1)"
        return False, ("the tensors are on CPU and TRITON_INTERPRET=1 is not set (Triton runs CPU tensors "
                       "only in its interpreter)")
    return False, f"backend 'triton' does not run on {device.type} tensors"


def _device_status(backend: str, device: torch.device) -> tuple[bool, str]:
    if backend in ("cpp", "cuda") and device.type == "meta":
        if not _CPP_LOADED:
            return False, _no_extension()
        return True, "the C++ operators' fake kernels (meta tensors: shapes and dtypes only)"
    if backend == "cpp":
        if not _CPP_LOADED:
            return False, _no_extension()
        if device.type != "cpu":
            return False, f"backend 'cpp' runs on CPU tensors but the tensors are on {device}; use 'cuda' or 'triton'"
        return True, "C++ CPU kernels"
    if backend == "cuda":
        if device.type != "cuda":
            return False, f"backend 'cuda' needs CUDA tensors but the tensors are on {device}; use 'cpp' on CPU"
        if not _CPP_LOADED:
            return False, _no_extension()
        if not torch.cuda.is_available():
            return False, "the tensors are on CUDA but no CUDA device is available"
        if not _CUDA_COMPILED:
            return False, ("meranet_fast._C was built without CUDA (no nvcc or a CPU-only torch at build time; "
                           "rebuild with MERANET_FORCE_CUDA=1 to see why)")
        return True, "CUDA C++ kernels"
    return _triton_status(device)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")


def backend_status(backend: str, device: torch.device | str, op: str = "st_attention") -> tuple[bool, str]:
    """``(can run, why)``: whether the concrete ``backend`` of ``op`` can run on ``device``."""
    _check_op(op)
    if backend not in BACKENDS[1:]:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "eager":
        return True, "plain PyTorch ops"
    ok, why = _device_status(backend, torch.device(device))
    if ok and op in _COMPOSED_IN_CPP and not _CPP_LOADED:
        return False, f"{op} is composed in meranet_fast._C, which is not available ({_extension.LOAD_ERROR})"
    return ok, why


def available_backends(device: torch.device | str, op: str = "st_attention") -> list[str]:
    """The concrete backends of ``op`` that can run on ``device``."""
    return [b for b in BACKENDS[1:] if backend_status(b, device, op)[0]]


def auto_backend(device: torch.device | str, dtype: torch.dtype | None = None, op: str = "st_attention") -> str:
    """What ``"auto"`` means for ``op`` without the environment override: the first of :data:`AUTO_ORDER`
    that can run on ``device`` and takes ``dtype``; ``"eager"`` when none can."""
    device = torch.device(device)
    for candidate in AUTO_ORDER.get(device.type, ()):
        if backend_status(candidate, device, op)[0] and backend_dtype_status(op, candidate, dtype)[0]:
            return candidate
    return "eager"


def _env_backend() -> str | None:
    """The backend ``$MERANET_BACKEND`` asks for, None when unset or ``"auto"``."""
    if os.environ.get(_OLD_ENV_BACKEND) and not os.environ.get(ENV_BACKEND):
        raise ValueError(f"${_OLD_ENV_BACKEND} was renamed ${ENV_BACKEND} (it applies to every fused op); "
                         f"set that instead")
    env = os.environ.get(ENV_BACKEND, "")
    if not env or env == "auto":
        return None
    if env not in BACKENDS:
        raise ValueError(f"${ENV_BACKEND} must be one of {BACKENDS}, got {env!r}")
    return env


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None,
                    op: str = "st_attention") -> str:
    """The concrete backend that ``backend`` means for ``op`` on tensors of ``dtype`` on ``device``.

    ``"auto"`` follows ``$MERANET_BACKEND`` when set, else skips the backends that cannot run or refuse
    the dtype. An explicit backend that cannot run raises ``RuntimeError`` saying why; one whose kernels
    refuse ``dtype`` raises ``TypeError``.
    """
    _check_op(op)
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    source = ""
    if backend == "auto":
        env = _env_backend()
        if env is None:
            return auto_backend(device, dtype, op)
        backend, source = env, f" (asked for by ${ENV_BACKEND})"
    ok, why = backend_status(backend, device, op)
    if not ok:
        raise RuntimeError(f"{op}: backend {backend!r}{source} is not available: {why}")
    ok, why = backend_dtype_status(op, backend, dtype)
    if not ok:
        raise TypeError(f"{op}: backend {backend!r}{source} does not take {dtype} inputs: {why}")
    return backend
