"""Fused spatio-temporal attention (docs/design.md §2.1): the public functions.

``out = x * sigmoid(conv3d([mean_c x; max_c x], weight, bias, padding=k//2))``

with ``x`` of shape ``[N, C, T, H, W]``, ``weight`` ``[1, 2, k, k, k]`` (k = 3, 5 or 7) and ``bias``
``[1]`` or ``None``.

Backends (``backend=``, the vocabulary and ``"auto"`` rule of :mod:`meranet_fast.ops.backends`):
``"eager"`` (:func:`~meranet_fast.ops.reference.st_attention_reference`), ``"cpp"`` and ``"cuda"``
(``torch.ops.meranet.st_attention_fwd/_bwd``, csrc/cpu and csrc/cuda), ``"triton"``
(``torch.ops.meranet.st_attention_fwd_triton/_bwd_triton``, meranet_fast/ops/triton).

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

import torch

from meranet_fast.ops._checks import check_st_attention_inputs
from meranet_fast.ops.backends import resolve_backend
from meranet_fast.ops.reference import st_attention_reference

__all__ = ["st_attention", "st_attention_with_map", "autocast_enabled"]


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
    backend = resolve_backend(backend, x.device, x.dtype, "st_attention")
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
    backend = resolve_backend(backend, x.device, x.dtype, "st_attention")
    if backend == "eager":
        out, attn = _eager(x, weight, bias)
        return out, attn.to(x.dtype)
    out, attn, _, _ = _fused(x, weight, bias, backend)
    return out, attn.to(x.dtype)
