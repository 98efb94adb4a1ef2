"""Parameter and FLOP counts of 3D ResNet vs MERANet with fvcore's ``FlopCountAnalysis``.

Counting convention (fvcore's, extended to the ops fvcore leaves out):

* **One multiply-add is one flop.** Convolutions and linear layers count their multiply-adds (bias
  additions are ignored), exactly as fvcore's default handles do; batch norm keeps fvcore's default
  (2 flops an element in eval mode).
* **Element-wise ops** (``add``, ``mul``, ``sigmoid``, ``relu`` and their in-place forms) count one flop
  per output element, wherever they occur: the backbone's ReLUs and residual adds as well as the
  attention's, so both models are measured by the same rule.
* **Reductions** (``mean`` and ``amax`` over some dims, ``adaptive_avg_pool3d``) count one flop per
  input element; ``max_pool3d`` counts one comparison per window element per output element.
* Pure data movement (``cat``, views, slicing, zero padding) is free: fvcore ignores most of it and
  :data:`FLOP_HANDLES` marks ``aten::pad`` free.

Handles live in one public registry, :data:`FLOP_HANDLES` (extend it with
:func:`register_flop_handle`). Fused ``torch.ops.meranet.*`` operators get handles that report the same
per-operator counts as the eager code they replace, built from the same counting functions, so a
model's total does not change when it is switched to fused kernels. Any operator still without a handle
is listed by :attr:`ModelStats.unsupported_ops`: it was skipped and counts zero.

The model is traced once on CPU (``torch.no_grad``, eval mode): MERANet-18 at 1×3×16×112×112 takes a
few seconds.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from meranet_fast._optional import require
from meranet_fast.models import resnet3d

__all__ = [
    "FLOP_HANDLES",
    "STAGES",
    "PAPER_RESNET3D18",
    "PAPER_MERANET18",
    "ModelStats",
    "register_flop_handle",
    "elementwise_flops",
    "reduction_flops",
    "linear_flops",
    "st_attention_flops",
    "channel_attention_flops",
    "ra_tail_flops",
    "flop_count_analysis",
    "model_stats",
    "compare_models",
    "overhead",
]

#: fvcore handle: ``(inputs, outputs)`` (lists of ``torch._C.Value``) -> a number or a ``Counter``.
Handle = Callable[[list, list], Any]

#: Report stages -> the top-level modules of :class:`~meranet_fast.models.ResNet3d` they cover.
STAGES: dict[str, tuple[str, ...]] = {
    "stem": ("stem",),
    "layer1": ("layer1",),
    "layer2": ("layer2",),
    "layer3": ("layer3",),
    "layer4": ("layer4",),
    "head": ("avgpool", "fc"),
}

#: The paper's Table (params, GFLOPs) for its "3D ResNet" and MERANet-18, input size unstated.
PAPER_RESNET3D18 = {"params": 33_167_811, "gflops": 1.61}
PAPER_MERANET18 = {"params": 33_547_552, "gflops": 1.72}


# --- counting functions shared by the eager (aten) handles and the fused-op handles -------------------

def elementwise_flops(out_shape: Sequence[int]) -> int:
    """One flop per output element (add, mul, sigmoid, relu, ...)."""
    return math.prod(out_shape)


def reduction_flops(in_shape: Sequence[int]) -> int:
    """One flop per input element (mean or max over some dims)."""
    return math.prod(in_shape)


def st_attention_flops(x_shape: Sequence[int], weight_shape: Sequence[int]) -> Counter:
    """Per-operator flops of spatio-temporal attention on ``x`` ``[N, C, T, H, W]``, weight ``[1, 2, k, k, k]``.

    Equals what the eager reference (``mean``, ``amax``, ``conv``, ``sigmoid``, ``mul``) is counted at:
    ``N·T·H·W · (C + C + 2·k³ + 1) + N·C·T·H·W``.
    """
    n, _, *thw = x_shape
    pooled_shape = [n, 2, *thw]
    map_shape = [n, 1, *thw]
    return Counter({
        "mean": reduction_flops(x_shape),
        "amax": reduction_flops(x_shape),
        "conv": conv_flop_count(pooled_shape, list(weight_shape), map_shape),
        "sigmoid": elementwise_flops(map_shape),
        "mul": elementwise_flops(x_shape),
    })


def linear_flops(in_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """Multiply-adds of ``F.linear`` on ``in_shape`` ``[..., in]`` with weight ``[out, in]`` (fvcore's
    ``linear_flop_jit`` count; the ``aten::linear`` handle of :data:`FLOP_HANDLES` uses this function)."""
    if in_shape[-1] != weight_shape[-1]:
        raise ValueError(f"linear: input features {in_shape[-1]} do not match weight {list(weight_shape)}")
    return math.prod(in_shape) * weight_shape[0]


def channel_attention_flops(y_shape: Sequence[int], hidden: int) -> Counter:
    """Per-operator flops of channel attention on ``y`` ``[N, C, T, H, W]`` with hidden width ``hidden``.

    Equals what the eager reference is counted at: ``mean`` and ``amax`` over T·H·W, the shared network
    on both pooled vectors (two ``linear`` a path, ``relu`` in between), the ``add`` of both paths,
    ``sigmoid`` and the per-channel ``mul``.
    """
    n, c = y_shape[:2]
    vec, hid = [n, c], [n, hidden]
    path = linear_flops(vec, [hidden, c]) + linear_flops(hid, [c, hidden])
    return Counter({
        "mean": reduction_flops(y_shape),
        "amax": reduction_flops(y_shape),
        "linear": 2 * path,
        "relu": 2 * elementwise_flops(hid),
        "add": elementwise_flops(vec),
        "sigmoid": elementwise_flops(vec),
        "mul": elementwise_flops(y_shape),
    })


def ra_tail_flops(y_shape: Sequence[int], hidden: int, st_weight_shape: Sequence[int]) -> Counter:
    """Per-operator flops of the residual-attention tail ``relu(STA(CA(y)) + shortcut)``: channel
    attention, spatio-temporal attention on its output, the residual ``add`` and the ``relu``."""
    return (channel_attention_flops(y_shape, hidden) + st_attention_flops(y_shape, st_weight_shape)
            + Counter({"add": elementwise_flops(y_shape), "relu": elementwise_flops(y_shape)}))


# --- fvcore (optional: imported on first use) --------------------------------------------------------

def _fvcore_nn():
    """``fvcore.nn``, or an ImportError that says how to install it."""
    with warnings.catch_warnings():
        # fvcore 0.1.5 scripts its losses with torch.jit.script at import, which torch now deprecates.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        require("fvcore")
        import fvcore.nn
        import fvcore.nn.jit_handles
    return fvcore.nn


def conv_flop_count(x_shape: list, w_shape: list, out_shape: list) -> int:
    """fvcore's multiply-add count of a convolution."""
    return _fvcore_nn().jit_handles.conv_flop_count(x_shape, w_shape, out_shape)


def get_shape(value) -> list | None:
    """fvcore's shape of a traced value (None for a non-tensor)."""
    return _fvcore_nn().jit_handles.get_shape(value)


# --- fvcore handles --------------------------------------------------------------------------------

def _elementwise_handle(inputs: list, outputs: list) -> int:
    shape = get_shape(outputs[0])  # None for arithmetic on traced Python scalars: no tensor flops
    return 0 if shape is None else elementwise_flops(shape)


def _reduction_handle(inputs: list, outputs: list) -> int:
    return reduction_flops(get_shape(inputs[0]))


def _max_pool3d_handle(inputs: list, outputs: list) -> int:
    # aten::max_pool3d(self, kernel_size, stride, padding, dilation, ceil_mode)
    kernel = inputs[1].toIValue()
    if kernel is None:  # traced as a prim::ListConstruct of constants
        kernel = [v.toIValue() for v in inputs[1].node().inputs()]
    kernel = kernel if len(kernel) == 3 else kernel * 3
    return math.prod(kernel) * math.prod(get_shape(outputs[0]))


def _linear_handle(inputs: list, outputs: list) -> int:
    # aten::linear(input, weight, bias)
    return linear_flops(get_shape(inputs[0]), get_shape(inputs[1]))


def _channel_attention_handle(inputs: list, outputs: list) -> Counter:
    # meranet::channel_attention(y, w_reduce, b_reduce, w_expand, b_expand, backend) -> (out, a, ...)
    return channel_attention_flops(get_shape(inputs[0]), get_shape(inputs[1])[0])


def _ra_tail_handle(inputs: list, outputs: list) -> Counter:
    # meranet::ra_tail(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias, backend)
    return ra_tail_flops(get_shape(inputs[0]), get_shape(inputs[2])[0], get_shape(inputs[6]))


def _st_attention_fwd_handle(inputs: list, outputs: list) -> Counter:
    # meranet::st_attention_fwd[_triton](x, weight, bias) -> (out, attn, pooled, argmax):
    # counted as its eager equivalent.
    return st_attention_flops(get_shape(inputs[0]), get_shape(inputs[1]))


#: Extra fvcore op handles, applied on top of fvcore's defaults by :func:`flop_count_analysis`;
#: ``None`` marks an operator as free (counted zero on purpose, not reported as skipped).
FLOP_HANDLES: dict[str, Handle | None] = {
    **{f"aten::{op}": _elementwise_handle
       for op in ("add", "add_", "mul", "mul_", "sigmoid", "sigmoid_", "relu", "relu_")},
    **{f"aten::{op}": _reduction_handle for op in ("mean", "amax", "adaptive_avg_pool3d")},
    "aten::linear": _linear_handle,  # fvcore's count, through the function the fused handles use
    "aten::max_pool3d": _max_pool3d_handle,
    "aten::pad": None,  # shortcut 'A' zero channels: data movement, free
    "meranet::st_attention_fwd": _st_attention_fwd_handle,
    "meranet::st_attention_fwd_triton": _st_attention_fwd_handle,
    # One operator whatever the backend (C++, Triton, CUDA): the backend is an argument.
    "meranet::channel_attention": _channel_attention_handle,
    "meranet::ra_tail": _ra_tail_handle,
}


def register_flop_handle(op_name: str, handle: Handle | None) -> None:
    """Register (or replace) the fvcore handle of ``op_name`` (e.g. ``"meranet::ra_tail_fwd"``).

    ``handle=None`` declares the operator free (pure data movement).

    A fused operator's handle should return the same count as the eager code it replaces; build it from
    :func:`elementwise_flops`, :func:`reduction_flops`, :func:`linear_flops`, :func:`st_attention_flops`,
    :func:`channel_attention_flops`, :func:`ra_tail_flops` and fvcore's ``conv_flop_count`` as
    :func:`st_attention_flops` does.
    """
    if "::" not in op_name:
        raise ValueError(f"op_name must be a qualified operator name like 'meranet::op', got {op_name!r}")
    if handle is not None and not callable(handle):
        raise ValueError(f"handle for {op_name!r} must be callable or None, got {type(handle).__name__}")
    FLOP_HANDLES[op_name] = handle


def flop_count_analysis(model: nn.Module, inputs: torch.Tensor | tuple):
    """fvcore ``FlopCountAnalysis`` of ``model`` with :data:`FLOP_HANDLES` set and warnings off.

    Skipped operators are read from ``.unsupported_ops()`` instead of being logged.
    """
    analysis = _fvcore_nn().FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)
    analysis.unsupported_ops_warnings(False)
    # Attention modules use their submodules' weights without calling them; fvcore would warn.
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@dataclass
class ModelStats:
    """Parameter and flop counts of one model on one input."""

    name: str
    input_shape: list[int]
    params: int
    flops: int
    stage_params: dict[str, int]
    stage_flops: dict[str, int]
    by_operator: dict[str, int]
    unsupported_ops: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def model_stats(model: nn.Module, input_shape: Sequence[int], name: str = "") -> ModelStats:
    """Count parameters and flops of a :class:`~meranet_fast.models.ResNet3d` per stage (:data:`STAGES`).

    The model is put in eval mode and traced once, on its own device, with a random input of
    ``input_shape``.
    """
    modules = dict(model.named_children())
    missing = [m for mods in STAGES.values() for m in mods if m not in modules]
    if missing:
        raise ValueError(f"model lacks the top-level modules {missing} that the stage report needs")
    model = model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        analysis = flop_count_analysis(model, (torch.randn(*input_shape, device=device),))
        flops_by_module = analysis.by_module()
        by_operator = analysis.by_operator()
        unsupported = analysis.unsupported_ops()
    stage_params = {stage: sum(p.numel() for m in mods for p in modules[m].parameters())
                    for stage, mods in STAGES.items()}
    stage_flops = {stage: int(sum(flops_by_module[m] for m in mods)) for stage, mods in STAGES.items()}
    return ModelStats(
        name=name or type(model).__name__,
        input_shape=list(input_shape),
        params=sum(p.numel() for p in model.parameters()),
        flops=int(analysis.total()),
        stage_params=stage_params,
        stage_flops=stage_flops,
        by_operator={k: int(v) for k, v in by_operator.items()},
        unsupported_ops=dict(unsupported),
    )


def overhead(base: float, other: float) -> dict[str, float]:
    """``{"abs": other - base, "pct": 100 · (other - base) / base}``."""
    return {"abs": other - base, "pct": 100.0 * (other - base) / base if base else float("nan")}


def compare_models(
    depth: int = 18,
    input_shape: Sequence[int] = (1, 3, 16, 112, 112),
    num_classes: int = 3,
    **model_kwargs,
) -> dict:
    """3D ResNet vs MERANet of ``depth`` on ``input_shape``: both models' stats and MERANet's overhead.

    ``model_kwargs`` go to :func:`~meranet_fast.models.resnet3d` for both models (e.g. ``shortcut``;
    ``backend``, default ``"auto"``: MERANet's attention tail, traced as ``meranet::ra_tail`` and counted
    like its eager code, so ``"auto"`` and ``"eager"`` give the same numbers).
    The result is JSON-serialisable: ``{"input_shape", "meranet_backend", "convention", "vanilla", "meranet",
    "overhead"}``
    with ``overhead[kind]`` = ``{"total": {"abs", "pct"}, "stages": {stage: {"abs", "pct"}}}`` for
    ``kind`` in ``params``, ``flops``.
    """
    if len(input_shape) != 5:
        raise ValueError(f"input_shape must be [N, C, T, H, W], got {list(input_shape)}")
    in_channels = input_shape[1]
    vanilla = model_stats(resnet3d(depth, num_classes, attention=False, in_channels=in_channels, **model_kwargs),
                          input_shape, f"resnet3d{depth}")
    meranet_model = resnet3d(depth, num_classes, attention=True, in_channels=in_channels, **model_kwargs)
    meranet = model_stats(meranet_model, input_shape, f"meranet{depth}")
    overheads = {
        kind: {
            "total": overhead(getattr(vanilla, kind), getattr(meranet, kind)),
            "stages": {s: overhead(getattr(vanilla, f"stage_{kind}")[s], getattr(meranet, f"stage_{kind}")[s])
                       for s in STAGES},
        }
        for kind in ("params", "flops")
    }
    return {
        "input_shape": list(input_shape),
        "meranet_backend": meranet_model.backend,
        "convention": "one multiply-add = one flop; element-wise ops 1/element; reductions 1/input element",
        "vanilla": vanilla.to_dict(),
        "meranet": meranet.to_dict(),
        "overhead": overheads,
    }
