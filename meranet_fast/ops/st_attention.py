"""Fused spatio-temporal attention (docs/design.md §2.1): public functions, autograd, fake kernels, backends.

``out = x * sigmoid(conv3d([mean_c x; max_c x], weight, bias, padding=k//2))``

with ``x`` of shape ``[N, C, T, H, W]``, ``weight`` ``[1, 2, k, k, k]`` (k = 3, 5 or 7) and ``bias``
``[1]`` or ``None``.

Backends (``backend=``):

``"eager"``   :func:`~meranet_fast.ops.reference.st_attention_reference` (plain PyTorch ops).
``"cpp"``     ``torch.ops.meranet.st_attention_fwd/_bwd`` on CPU tensors (csrc/cpu).
``"cuda"``    the same operators on CUDA tensors (csrc/cuda), when the extension was built with CUDA.
``"triton"``  ``torch.ops.meranet.st_attention_fwd_triton/_bwd_triton`` (meranet_fast/ops/triton):
              a CUDA device, or CPU tensors under the interpreter (``TRITON_INTERPRET=1``).
``"auto"``    ``$MERANET_ST_ATTENTION_BACKEND`` when set; otherwise the first of ``AUTO_ORDER`` that can
              run: ``"cpp"`` on CPU; on CUDA ``"triton"``, then ``"cuda"``; ``"eager"`` when none can.

An explicitly requested backend that cannot run raises ``RuntimeError`` saying why.

Semantics shared by the fused backends:

* Ties in the channel max: the gradient of the max map goes to the FIRST channel holding the
  maximum (``argmax``). Eager ``amax`` splits it evenly among the tied channels instead, so the two
  differ on exact ties (the forward values are identical). NaN propagates like ``amax``.
* Autocast-neutral: the result has ``x``'s dtype whatever autocast says. Under autocast the public
  functions cast ``weight`` / ``bias`` to ``x.dtype`` (so float32 parameters work with bfloat16
  activations, and their gradients flow back to float32); outside autocast the dtypes must match.
* Accumulation in float32 (float64 for float64 inputs, whose saved maps are float64 too; the
  ``"cuda"`` and ``"triton"`` kernels refuse float64, and ``"auto"`` skips them for it: see
  ``_checks.NO_FLOAT64``); the output keeps ``x``'s memory format
  (channels_last_3d stays channels_last_3d; other layouts give a contiguous result).
* The backward is deterministic (fixed-order reductions): two runs are bit-identical.
* Meta tensors: every backend but ``"eager"`` runs its fake kernels (shapes and dtypes only), and
  ``"auto"`` picks ``"cpp"`` for them (``"eager"`` without the extension).
* ``st_attention_with_map`` returns the attention map detached from the graph for the fused
  backends (it is a by-product, e.g. for saliency); the eager backend's map is differentiable.
"""
from __future__ import annotations

import os

import torch

from meranet_fast import _extension
from meranet_fast.ops._checks import KERNEL_SIZES, acc_dtype, backend_dtype_status, check_st_attention_inputs
from meranet_fast.ops.reference import st_attention_reference

__all__ = [
    "BACKENDS",
    "AUTO_ORDER",
    "KERNEL_SIZES",
    "ENV_BACKEND",
    "st_attention",
    "st_attention_with_map",
    "available_backends",
    "backend_status",
    "resolve_backend",
    "auto_backend",
    "check_st_attention_inputs",
]

BACKENDS = ("auto", "eager", "cpp", "cuda", "triton")
ENV_BACKEND = "MERANET_ST_ATTENTION_BACKEND"

#: What "auto" tries, in order, per device type (every fused op follows it). On CUDA, Triton comes
#: first because its kernels are verified in CI (under the interpreter) while the CUDA C++ kernels have
#: only been compiled so far; revisit with the measurements of benchmarks/gpu_check.sh.
#: Meta tensors (shapes and dtypes only) go to the C++ operators' fake kernels.
AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("triton", "cuda"), "meta": ("cpp",)}

# Decided once at import: the public functions are traced by torch.compile, which must not call
# into the extension (build_info returns a string) while tracing.
_CPP_LOADED = _extension.is_loaded()
_CUDA_COMPILED = _CPP_LOADED and _extension.cuda_compiled()

_FWD_OP = "meranet::st_attention_fwd"
_BWD_OP = "meranet::st_attention_bwd"


# --------------------------------------------------------------------------------------------------
# Autograd (one definition for every (forward, backward) operator pair) and fake kernels
# --------------------------------------------------------------------------------------------------
def _empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """Like x: channels_last_3d if x is (and is not also contiguous), contiguous otherwise."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.empty_like(x, memory_format=torch.channels_last_3d)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def register_st_attention_autograd(fwd_name: str, bwd_op) -> None:
    """Register the autograd formula of a fused forward operator ``fwd_name`` with its ``bwd_op``.

    Both operators follow the ``meranet::st_attention_fwd`` / ``_bwd`` schemas. The forward saves
    ``x``, ``weight`` and its by-products (attn, pooled, argmax), which are marked non-differentiable.
    """

    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        _, attn, pooled, argmax = output
        ctx.save_for_backward(x, weight, attn, pooled, argmax)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(attn, pooled, argmax)

    def backward(ctx, grad_out, _grad_attn, _grad_pooled, _grad_argmax):
        x, weight, attn, pooled, argmax = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = bwd_op(grad_out, x, weight, attn, pooled, argmax)
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight if ctx.needs_input_grad[1] else None,
            grad_bias if ctx.has_bias and ctx.needs_input_grad[2] else None,
        )

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)


if _CPP_LOADED:

    @torch.library.register_fake(_FWD_OP)
    def _st_attention_fwd_fake(x, weight, bias):
        check_st_attention_inputs(x, weight, bias)
        n, _, t, h, w = x.shape
        return (
            _empty_like_layout(x),
            x.new_empty((n, 1, t, h, w), dtype=acc_dtype(x.dtype)),
            x.new_empty((n, 2, t, h, w), dtype=acc_dtype(x.dtype)),
            x.new_empty((n, t, h, w), dtype=torch.int32),
        )

    @torch.library.register_fake(_BWD_OP)
    def _st_attention_bwd_fake(grad_out, x, weight, attn, pooled, argmax):
        check_st_attention_inputs(x, weight, None)
        return _empty_like_layout(x), weight.new_empty(weight.shape), weight.new_empty((1,))

    register_st_attention_autograd(_FWD_OP, torch.ops.meranet.st_attention_bwd)

# Triton pair: registered when the package imports (that never raises; when the kernels cannot
# register, the ops do not exist and backend_status("triton", ...) says why).
from meranet_fast.ops import triton as _triton_pkg  # noqa: E402

if _triton_pkg.st_attention_error() is None:
    register_st_attention_autograd("meranet::st_attention_fwd_triton",
                                   torch.ops.meranet.st_attention_bwd_triton)


# --------------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------------
def _triton_status(device: torch.device) -> tuple[bool, str]:
    error = _triton_pkg.load_error()  # registers every Triton kernel module once
    if error is not None:
        return False, f"the Triton kernels are unavailable: {error}"
    if device.type == "cuda":
        if torch.cuda.is_available():
            return True, "triton on a CUDA device"
        return False, "x is on CUDA but no CUDA device is available"
    if device.type == "meta":
        return True, "the Triton operators' fake kernels (meta tensors: shapes and dtypes only)"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "triton CPU interpreter (TRITON_INTERPRET=1)"
        return False, "x is on CPU and TRITON_INTERPRET=1 is not set (Triton runs CPU tensors only in its interpreter)"
    return False, f"backend 'triton' does not run on {device.type} tensors"


def backend_status(backend: str, device: torch.device | str) -> tuple[bool, str]:
    """``(can run, why)`` for a concrete backend and a device."""
    device = torch.device(device)
    if backend == "eager":
        return True, "plain PyTorch ops"
    if backend in ("cpp", "cuda") and device.type == "meta":
        if not _CPP_LOADED:
            return False, f"meranet_fast._C is not available ({_extension.LOAD_ERROR}); {_extension.BUILD_HINT}"
        return True, "the C++ operators' fake kernels (meta tensors: shapes and dtypes only)"
    if backend == "cpp":
        if not _CPP_LOADED:
            return False, f"meranet_fast._C is not available ({_extension.LOAD_ERROR}); {_extension.BUILD_HINT}"
        if device.type != "cpu":
            return False, f"backend 'cpp' runs on CPU tensors but x is on {device}; use 'cuda' or 'triton'"
        return True, "C++ CPU kernel"
    if backend == "cuda":
        if device.type != "cuda":
            return False, f"backend 'cuda' needs CUDA tensors but x is on {device}; use 'cpp' on CPU"
        if not _CPP_LOADED:
            return False, f"meranet_fast._C is not available ({_extension.LOAD_ERROR}); {_extension.BUILD_HINT}"
        if not torch.cuda.is_available():
            return False, "x is on CUDA but no CUDA device is available"
        if not _CUDA_COMPILED:
            return False, ("meranet_fast._C was built without CUDA (no nvcc or a CPU-only torch at build time; "
                           "rebuild with MERANET_FORCE_CUDA=1 to see why)")
        return True, "CUDA C++ kernel"
    if backend == "triton":
        return _triton_status(device)
    raise ValueError(f"st_attention: backend must be one of {BACKENDS}, got {backend!r}")


def available_backends(device: torch.device | str) -> list[str]:
    """The concrete backends that can run on ``device``."""
    return [b for b in BACKENDS[1:] if backend_status(b, device)[0]]


def auto_backend(device: torch.device, dtype: torch.dtype | None = None, op: str = "st_attention") -> str:
    """What ``"auto"`` means for ``op`` on ``device`` (without the environment override): the first of
    ``AUTO_ORDER`` that can run there and takes ``dtype``; ``"eager"`` when none can."""
    for candidate in AUTO_ORDER.get(device.type, ()):
        if backend_status(candidate, device)[0] and backend_dtype_status(op, candidate, dtype)[0]:
            return candidate
    return "eager"


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None,
                    op: str = "st_attention") -> str:
    """The concrete backend ``backend`` means for ``op`` on tensors of ``dtype`` on ``device``.

    ``"auto"`` skips the backends that cannot run there or refuse the dtype; an explicit backend that
    cannot run raises ``RuntimeError`` saying why, one that refuses the dtype ``TypeError``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "")
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"st_attention: ${ENV_BACKEND} must be one of {BACKENDS}, got {env!r}")
            backend = env
        else:
            return auto_backend(device, dtype, op)
    ok, why = backend_status(backend, device)
    if not ok:
        raise RuntimeError(f"{op}: backend {backend!r} is not available: {why}")
    ok, why = backend_dtype_status(op, backend, dtype)
    if not ok:
        raise TypeError(f"{op}: backend {backend!r} does not take {dtype} inputs: {why}")
    return backend


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------
# The device types this library's kernels run on. A fixed tuple, not torch.amp.is_autocast_available:
# torch 2.11's dynamo cannot trace that (fullgraph compile breaks), and is_autocast_enabled raises for
# device types autocast does not know (meta).
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def autocast_enabled(x) -> bool:
    """Whether autocast is on for x's device type (False for other devices, e.g. meta)."""
    device_type = x.device.type
    return device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type)


def _prepare(x, weight, bias):
    if isinstance(x, torch.Tensor) and x.is_floating_point() and autocast_enabled(x):
        # Autocast-neutral op: compute in x's dtype; parameters follow x (gradients flow back through the cast).
        if isinstance(weight, torch.Tensor) and weight.is_floating_point():
            weight = weight.to(x.dtype)
        if isinstance(bias, torch.Tensor) and bias.is_floating_point():
            bias = bias.to(x.dtype)
    check_st_attention_inputs(x, weight, bias)
    return weight, bias


def _eager(x, weight, bias):
    if x.numel() == 0:
        # conv3d rejects zero-sized T/H/W; an empty result still connects weight and bias (zero grads).
        n, _, t, h, w = x.shape
        scale = weight.sum() if bias is None else weight.sum() + bias.sum()
        return x * scale, x.new_zeros((n, 1, t, h, w))
    return st_attention_reference(x, weight, bias)


def _fused(x, weight, bias, backend):
    if backend == "triton":
        return torch.ops.meranet.st_attention_fwd_triton(x, weight, bias)
    return torch.ops.meranet.st_attention_fwd(x, weight, bias)


def st_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 backend: str = "auto") -> torch.Tensor:
    """``x * sigmoid(conv3d([mean_c x; max_c x], weight, bias, padding=k//2))`` (see module docs).

    Args:
        x: ``[N, C, T, H, W]`` floating tensor (float32, float64, bfloat16, float16).
        weight: ``[1, 2, k, k, k]``, k in (3, 5, 7); channel 0 sees the mean map, channel 1 the max.
        bias: ``[1]`` or ``None``.
        backend: ``"auto"``, ``"eager"``, ``"cpp"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``out`` with x's shape, dtype and (contiguous / channels_last_3d) memory format.
    """
    weight, bias = _prepare(x, weight, bias)
    backend = resolve_backend(backend, x.device, x.dtype)
    if backend == "eager":
        return _eager(x, weight, bias)[0]
    return _fused(x, weight, bias, backend)[0]


def st_attention_with_map(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                          backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`st_attention`, also returning the attention map ``attn`` ``[N, 1, T, H, W]`` in x's dtype.

    For the fused backends ``attn`` is detached (no gradient flows through it); for ``"eager"`` it is
    the reference's differentiable map.
    """
    weight, bias = _prepare(x, weight, bias)
    backend = resolve_backend(backend, x.device, x.dtype)
    if backend == "eager":
        out, attn = _eager(x, weight, bias)
        return out, attn.to(x.dtype)
    out, attn, _, _ = _fused(x, weight, bias, backend)
    return out, attn.to(x.dtype)
