"""Registry of operator benchmark specs: inputs, eager reference, fused backends and bytes model.

A later op plugs in by calling :func:`register` with an :class:`OpBenchSpec`; ``meranet-fast bench
--op NAME``, the pytest-benchmark module and the tests pick it up from :data:`REGISTRY`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from meranet_fast import ops
from meranet_fast.ops import backends
from meranet_fast.ops.reference import channel_attention_reference, ra_tail_reference, st_attention_reference

__all__ = [
    "PASSES",
    "FUSED_BACKENDS",
    "BackendUnavailable",
    "OpBenchSpec",
    "REGISTRY",
    "register",
    "get_spec",
    "parse_shape",
]

#: forward: no-grad forward; backward: only the backward call on a graph built once;
#: full: forward with autograd recording + backward.
PASSES = ("forward", "backward", "full")
#: Backends of the fused ops and the device each one runs on.
FUSED_BACKENDS = {"cpp": "cpu", "cuda": "cuda", "triton": "cuda"}


class BackendUnavailable(RuntimeError):
    """A fused backend cannot run here; the message says why (printed by the bench, then skipped)."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8x64x16x28x28"`` -> ``(8, 64, 16, 28, 28)``."""
    try:
        shape = tuple(int(v) for v in text.lower().strip().split("x"))
    except ValueError:
        raise ValueError(f"a shape looks like 8x64x16x28x28, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"shape sizes must be positive, got {text!r}")
    return shape


@dataclass(frozen=True)
class OpBenchSpec:
    """How to benchmark one fused operator against its eager reference.

    Attributes:
        name: the ``--op`` name.
        default_shapes: shapes benchmarked when ``--shapes`` is not given.
        make_inputs: ``(shape, dtype, device) -> tuple`` of the op's positional arguments
            (deterministic; tensors do not require grad, the harness decides that per pass).
        reference: eager PyTorch, returning the op's output tensor.
        fused: ``(backend, device) -> fn`` with the reference's signature, raising
            :class:`BackendUnavailable` (with the reason) when that backend cannot run on ``device``.
        bytes_moved: ``(shape, itemsize, pass) -> bytes`` of *useful* traffic (the roofline), the
            numerator of the effective GB/s.
        bytes_model: ``pass -> formula`` in words, for reports.
        copy_numel: ``shape -> numel`` of the tensor whose ``copy_`` gives the bandwidth roof.
        check_shape: raises ``ValueError`` saying what is wrong with a shape (called before any work).
    """

    name: str
    default_shapes: tuple[tuple[int, ...], ...]
    make_inputs: Callable[[tuple[int, ...], torch.dtype, torch.device], tuple]
    reference: Callable[..., torch.Tensor]
    fused: Callable[[str, torch.device], Callable[..., torch.Tensor]]
    bytes_moved: Callable[[tuple[int, ...], int, str], int]
    bytes_model: dict[str, str] = field(default_factory=dict)
    copy_numel: Callable[[tuple[int, ...]], int] = lambda shape: _numel(shape)
    check_shape: Callable[[tuple[int, ...]], None] = lambda shape: None
    description: str = ""


REGISTRY: dict[str, OpBenchSpec] = {}


def register(spec: OpBenchSpec) -> OpBenchSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"an op benchmark named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> OpBenchSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op benchmark named {name!r}; known: {sorted(REGISTRY)}") from None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _first(out):
    """Ops may return ``out`` or ``(out, extras...)``: the benchmarked output is the first tensor."""
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------------------------------
# st_attention: out = x * sigmoid(conv3d([mean_c x; max_c x], w, b, pad=k//2))
# ---------------------------------------------------------------------------------------------------
ST_KERNEL_SIZE = 5


def _st_attention_check_shape(shape) -> None:
    if len(shape) != 5:
        raise ValueError(f"st_attention takes x of shape NxCxTxHxW, got {'x'.join(map(str, shape))}")


def _st_attention_inputs(shape, dtype, device, kernel_size: int = ST_KERNEL_SIZE):
    _st_attention_check_shape(shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    fan_in = 2 * kernel_size ** 3
    w = torch.randn(1, 2, kernel_size, kernel_size, kernel_size, generator=gen) / fan_in ** 0.5
    b = torch.randn(1, generator=gen) * 0.1
    return tuple(t.to(device=device, dtype=dtype) for t in (x, w, b))


def _st_attention_reference(x, weight, bias=None):
    return st_attention_reference(x, weight, bias)[0]


def _fused_op(op: str, backend: str, device: torch.device):
    """The public fused op ``op`` (taking ``backend=``) if ``backend`` can run it on ``device``, as the
    backend registry says; raises :class:`BackendUnavailable` with the reason otherwise."""
    try:
        ok, why = backends.backend_status(backend, torch.device(device), op)
    except ValueError as exc:  # a backend name the registry does not know
        raise BackendUnavailable(str(exc)) from None
    if not ok:
        raise BackendUnavailable(why)
    return getattr(ops, op)


def _st_attention_fused(backend: str, device: torch.device):
    """``st_attention(x, w, b, backend=backend)`` from ``meranet_fast.ops.st_attention``, if it can run."""
    op = _fused_op("st_attention", backend, device)

    def fused(x, weight, bias=None):
        return _first(op(x, weight, bias, backend=backend))

    fused.__name__ = f"st_attention_{backend}"
    return fused


def _st_attention_bytes(shape, itemsize: int, pass_: str) -> int:
    # Useful traffic: forward reads x and writes out; backward reads g and x and writes gx; the pooled
    # maps, the attention map and the weights are C times smaller (or tiny) and left out.
    passes = {"forward": 2, "backward": 3, "full": 5}
    return passes[pass_] * _numel(shape) * itemsize


register(OpBenchSpec(
    name="st_attention",
    description="spatio-temporal attention x * sigmoid(conv3d([mean_c x; max_c x])), k=5",
    default_shapes=((8, 64, 16, 28, 28), (8, 128, 8, 14, 14)),
    make_inputs=_st_attention_inputs,
    reference=_st_attention_reference,
    fused=_st_attention_fused,
    bytes_moved=_st_attention_bytes,
    check_shape=_st_attention_check_shape,
    bytes_model={
        "forward": "2*numel(x)*itemsize (read x, write out)",
        "backward": "3*numel(x)*itemsize (read g and x, write gx)",
        "full": "5*numel(x)*itemsize (forward + backward)",
    },
))


# ---------------------------------------------------------------------------------------------------
# channel_attention: out = y * sigmoid(We relu(Ws avg_thw y) + We relu(Ws max_thw y)), per channel
# ra_tail: relu(STA(CA(y)) + shortcut), the whole residual-attention block tail in one op
# ---------------------------------------------------------------------------------------------------
CA_REDUCTION = 16


def _five_d_check_shape(op: str):
    def check(shape) -> None:
        if len(shape) != 5:
            raise ValueError(f"{op} takes y of shape NxCxTxHxW, got {'x'.join(map(str, shape))}")
    return check


_channel_attention_check_shape = _five_d_check_shape("channel_attention")
_ra_tail_check_shape = _five_d_check_shape("ra_tail")


def _ca_weights(channels: int, gen: torch.Generator, reduction: int = CA_REDUCTION):
    """``(w_reduce [C/r, C], b_reduce [C/r], w_expand [C, C/r], b_expand [C])``, hidden = max(1, C // r)."""
    hidden = max(1, channels // reduction)
    w_reduce = torch.randn(hidden, channels, generator=gen) / channels ** 0.5
    b_reduce = torch.randn(hidden, generator=gen) * 0.1
    w_expand = torch.randn(channels, hidden, generator=gen) / hidden ** 0.5
    b_expand = torch.randn(channels, generator=gen) * 0.1
    return w_reduce, b_reduce, w_expand, b_expand


def _channel_attention_inputs(shape, dtype, device):
    """``(y, w_reduce, b_reduce, w_expand, b_expand)``, C/r hidden with r = 16."""
    _channel_attention_check_shape(shape)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(shape, generator=gen)
    return tuple(t.to(device=device, dtype=dtype) for t in (y, *_ca_weights(shape[1], gen)))


def _channel_attention_reference(y, w_reduce, b_reduce, w_expand, b_expand):
    return channel_attention_reference(y, w_reduce, b_reduce, w_expand, b_expand)[0]


def _channel_attention_fused(backend: str, device: torch.device):
    """``channel_attention(y, ..., backend=backend)`` from ``meranet_fast.ops.channel_attention``."""
    op = _fused_op("channel_attention", backend, device)

    def fused(y, w_reduce, b_reduce, w_expand, b_expand):
        return _first(op(y, w_reduce, b_reduce, w_expand, b_expand, backend=backend))

    fused.__name__ = f"channel_attention_{backend}"
    return fused


def _channel_attention_bytes(shape, itemsize: int, pass_: str) -> int:
    # forward reads y and writes out; backward reads g and y and writes gy. The pooled [N, C] vectors,
    # the attention weights and the network weights are tiny and left out.
    passes = {"forward": 2, "backward": 3, "full": 5}
    return passes[pass_] * _numel(shape) * itemsize


register(OpBenchSpec(
    name="channel_attention",
    description="channel attention y * sigmoid(We relu(Ws avg y) + We relu(Ws max y)), C/r hidden, r=16",
    default_shapes=((8, 64, 16, 28, 28), (8, 128, 8, 14, 14)),
    make_inputs=_channel_attention_inputs,
    reference=_channel_attention_reference,
    fused=_channel_attention_fused,
    bytes_moved=_channel_attention_bytes,
    check_shape=_channel_attention_check_shape,
    bytes_model={
        "forward": "2*numel(y)*itemsize (read y, write out)",
        "backward": "3*numel(y)*itemsize (read g and y, write gy)",
        "full": "5*numel(y)*itemsize (forward + backward)",
    },
))


def _ra_tail_inputs(shape, dtype, device, kernel_size: int = ST_KERNEL_SIZE):
    """``(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)``: r = 16, k = 5."""
    _ra_tail_check_shape(shape)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(shape, generator=gen)
    shortcut = torch.randn(shape, generator=gen)
    ca = _ca_weights(shape[1], gen)
    fan_in = 2 * kernel_size ** 3
    st_weight = torch.randn(1, 2, kernel_size, kernel_size, kernel_size, generator=gen) / fan_in ** 0.5
    st_bias = torch.randn(1, generator=gen) * 0.1
    return tuple(t.to(device=device, dtype=dtype) for t in (y, shortcut, *ca, st_weight, st_bias))


def _ra_tail_reference(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias):
    return ra_tail_reference(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias)


def _ra_tail_fused(backend: str, device: torch.device):
    """``ra_tail(y, shortcut, ..., backend=backend)`` from ``meranet_fast.ops.ra_tail``."""
    op = _fused_op("ra_tail", backend, device)

    def fused(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias):
        return _first(op(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias,
                         backend=backend))

    fused.__name__ = f"ra_tail_{backend}"
    return fused


def _ra_tail_bytes(shape, itemsize: int, pass_: str) -> int:
    # forward reads y and shortcut and writes out (3); backward reads g and y and writes gy and
    # gshortcut (4; reading the saved out for the relu mask is not counted: an implementation could keep
    # a 1-bit mask instead). Pooled maps, attention maps and weights are C (or THW) times smaller.
    passes = {"forward": 3, "backward": 4, "full": 7}
    return passes[pass_] * _numel(shape) * itemsize


register(OpBenchSpec(
    name="ra_tail",
    description="residual-attention tail relu(STA(CA(y)) + shortcut), C/r hidden with r=16, STA k=5",
    default_shapes=((8, 64, 16, 28, 28), (8, 128, 8, 14, 14)),
    make_inputs=_ra_tail_inputs,
    reference=_ra_tail_reference,
    fused=_ra_tail_fused,
    bytes_moved=_ra_tail_bytes,
    check_shape=_ra_tail_check_shape,
    bytes_model={
        "forward": "3*numel(y)*itemsize (read y and shortcut, write out)",
        "backward": "4*numel(y)*itemsize (read g and y, write gy and gshortcut; the saved out is not counted)",
        "full": "7*numel(y)*itemsize (forward + backward)",
    },
))
