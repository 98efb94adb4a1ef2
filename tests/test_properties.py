"""Property-based tests (hypothesis) of the three fused ops on every backend that runs on this machine.

Each example draws a shape (size-1 dims, T = 1, H or W smaller than k, C from 1 to 2048, a bounded
number of elements), a layout per tensor input (contiguous, channels_last_3d, a strided view of a larger
tensor with a storage offset, steps and a permuted storage order, or an expanded size-1 dim), a dtype,
the kernel size, bias on or off and which inputs require gradients. The op's output, its map and every
requested gradient are compared with the eager reference (meranet_fast/ops/reference.py) evaluated in
float64 on the same values, under the one tolerance rule of tests/_tolerances.py (docs/design.md §6).

Ties in a maximum take the first index in the fused kernels and split evenly in eager ``amax``
(docs/design.md §5), so the drawn values get a unique maximum along every pooled dimension (an expanded
dim copies values on purpose: there the input's gradient sums the copies, equal under either convention).

Profiles (tests/conftest.py): "ci", the default, replays the same examples every run within a bounded
budget; HYPOTHESIS_PROFILE=long explores many more. Adding a backend (e.g. an emulated CUDA) is one
line of ``BACKENDS``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from _tolerances import PROBE, assert_close_normwise, sensitivity

from meranet_fast import _extension
from meranet_fast.ops import backends, channel_attention_with_map, ra_tail, st_attention_with_map
from meranet_fast.ops._layout import dense_format
from meranet_fast.ops.reference import channel_attention_reference, ra_tail_reference, st_attention_reference

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency (pip install -e '.[dev]')")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ALL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: Perturbed float64 reference runs per example that measure each result's scale (tests/_tolerances.py).
PROBES = 2


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A backend to fuzz: the ops' ``backend=`` name, where its tensors live, what it accepts."""

    name: str
    device: str
    dtypes: tuple
    max_numel: int  # elements of the largest activation drawn (the Triton interpreter is slow)
    share: float  # fraction of the profile's max_examples this backend gets
    marks: tuple = ()
    status: Callable[[], tuple[bool, str]] | None = None  # default: st_attention.backend_status

    def available(self) -> tuple[bool, str]:
        if self.status is not None:
            return self.status()
        ok, why = backends.backend_status(self.name, self.device)
        if ok and not _extension.is_loaded():  # channel_attention / ra_tail are composed in _C
            return False, f"meranet_fast._C is not available ({_extension.LOAD_ERROR})"
        return ok, why


BACKENDS = (
    Backend("cpp", "cpu", ALL_DTYPES, max_numel=4096, share=1.0),
    Backend("triton", "cpu", (torch.float32, torch.bfloat16, torch.float16), max_numel=160, share=0.15,
            marks=(pytest.mark.triton,)),
)


# --------------------------------------------------------------------------------------------------
# Layouts: a leaf tensor ("base") and the view of it the op receives
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    kind: str  # "contiguous", "channels_last_3d", "strided" or "expanded"
    perm: tuple = (0, 1, 2, 3, 4)  # strided: storage order of the logical dims, outermost first
    start: tuple = (0,) * 5  # strided: first index taken in each dim (a storage offset)
    step: tuple = (1,) * 5  # strided: step in each dim
    pad: tuple = (0,) * 5  # strided: elements left over past the last index taken
    expand: tuple = ()  # expanded: dims stored with size 1

    def base_shape(self, shape) -> tuple:
        if self.kind == "strided":
            logical = [self.start[d] + (shape[d] - 1) * self.step[d] + 1 + self.pad[d] for d in range(5)]
            return tuple(logical[d] for d in self.perm)
        if self.kind == "expanded":
            return tuple(1 if d in self.expand else s for d, s in enumerate(shape))
        return tuple(shape)

    def view(self, base: torch.Tensor, shape) -> torch.Tensor:
        if self.kind == "channels_last_3d":
            return base.contiguous(memory_format=torch.channels_last_3d)
        if self.kind == "strided":
            inverse = [self.perm.index(d) for d in range(5)]
            logical = base.permute(inverse)
            return logical[tuple(slice(self.start[d], self.start[d] + (shape[d] - 1) * self.step[d] + 1,
                                       self.step[d]) for d in range(5))]
        if self.kind == "expanded":
            return base.expand(shape)
        return base

    def copies(self, shape) -> int:
        """How many view elements read each base element (the expanded dims' sizes multiplied)."""
        n = 1
        for d in self.expand:
            n *= shape[d]
        return n


@st.composite
def layouts(draw):
    kind = draw(st.sampled_from(("contiguous", "channels_last_3d", "strided", "expanded")))
    if kind == "strided":
        five = lambda values: st.tuples(*[values] * 5)  # noqa: E731
        return Layout(kind, perm=tuple(draw(st.permutations(range(5)))), start=draw(five(st.integers(0, 2))),
                      step=draw(five(st.integers(1, 3))), pad=draw(five(st.integers(0, 2))))
    if kind == "expanded":
        return Layout(kind, expand=tuple(sorted(draw(st.sets(st.integers(0, 4), min_size=1, max_size=3)))))
    return Layout(kind)


@st.composite
def shapes(draw, max_numel: int):
    """[N, C, T, H, W] with C in 1..2048 (small, medium and large drawn alike) and N*C*T*H*W <= max_numel."""
    c_max = min(2048, max_numel)
    c = draw(st.one_of(st.integers(1, min(8, c_max)), st.integers(1, min(64, c_max)), st.integers(1, c_max)))
    budget = max_numel // c
    dims = []
    for limit in (3, 4, 9, 9):  # N, T, H, W: H and W reach past k = 7, and fall below it
        size = draw(st.integers(1, max(1, min(limit, budget))))
        dims.append(size)
        budget = max(1, budget // size)
    n, t, h, w = dims
    return (n, c, t, h, w)


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------
def unique_max(x: torch.Tensor, dims: tuple) -> torch.Tensor:
    """``x`` with its maximum over ``dims`` made unique (the first maximum is raised a little, in x's dtype)."""
    keep = [d for d in range(x.dim()) if d not in dims]
    perm = keep + list(dims)
    flat = x.permute(perm).reshape(-1, int(torch.tensor([x.shape[d] for d in dims]).prod()))
    if flat.shape[1] > 1:
        top = flat.double().topk(2, dim=1).values
        rows = (top[:, 0] == top[:, 1]).nonzero().flatten()
        if len(rows):
            cols = flat[rows].double().argmax(dim=1)
            peak = top[rows, 0]
            flat[rows, cols] = (peak + peak.abs() * 2.0 ** -5 + 2.0 ** -5).to(x.dtype)
    return flat.reshape([x.shape[d] for d in perm]).permute([perm.index(d) for d in range(x.dim())])


def make_activation(gen, shape, layout: Layout, dtype, pooled_dims: tuple) -> torch.Tensor:
    """A base tensor for ``layout`` in ``dtype`` whose view (the op's input) has a unique max over ``pooled_dims``."""
    base = torch.randn(layout.base_shape(shape), generator=gen, dtype=torch.float64).to(dtype)
    if layout.kind != "strided":  # the base holds the input's values in the same logical order
        return unique_max(base, pooled_dims).contiguous()
    view = layout.view(base, shape)
    view.copy_(unique_max(view.clone(), pooled_dims))
    return base


@st.composite
def requires_grad(draw, n: int) -> list:
    """Which of ``n`` inputs require gradients: all of them (shrinks to this), none, or a drawn subset."""
    mode = draw(st.sampled_from(("all", "subset", "none")))
    if mode == "subset":
        return [draw(st.booleans()) for _ in range(n)]
    return [mode == "all"] * n


def randn(gen, *shape, dtype, scale=1.0):
    """Normal values rounded to ``dtype``."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


@dataclass
class Case:
    """One drawn example of an op."""

    names: list  # of the tensor inputs, in the op's order
    leaves: list  # a base tensor per input in the case's dtype (None for an absent bias)
    layouts: list  # how each leaf is viewed as the op's input (Layout), or None to pass it as it is
    shape: tuple  # [N, C, T, H, W] of the activations
    requires_grad: list  # per input
    grad_outputs: list  # per output of the op: the upstream gradient in the case's dtype, or None
    dtype: torch.dtype


def _run(case: Case, fn, dtype, with_view_grads=False, jitter: torch.Generator | None = None):
    """``fn`` on the case's inputs (leaves widened to ``dtype`` and viewed): outputs, the gradients of the
    leaves that require them and, with ``with_view_grads``, of their expanded views. ``jitter``: multiply
    every input and upstream gradient by ``1 + PROBE * normal noise`` first (a sensitivity probe)."""
    def widen(t):
        t = t.detach().to(dtype)
        if jitter is not None:
            t = t * (1 + PROBE * torch.randn(t.shape, generator=jitter, dtype=dtype))
        return t

    leaves = [None if t is None else widen(t).requires_grad_(rg) for t, rg in zip(case.leaves, case.requires_grad)]
    views = [t if t is None or lay is None else lay.view(t, case.shape) for t, lay in zip(leaves, case.layouts)]
    outputs = fn(*views)
    wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
    expanded = [i for i in wanted if with_view_grads and case.layouts[i] is not None
                and case.layouts[i].kind == "expanded"]
    if not wanted:
        return outputs, {}, {}
    pairs = [(o, widen(g)) for o, g in zip(outputs, case.grad_outputs) if g is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted] + [views[i] for i in expanded],
                                [g for _, g in pairs])
    return outputs, dict(zip(wanted, grads)), dict(zip(expanded, grads[len(wanted):]))


def check(case: Case, fused, reference, out_names):
    """Compare ``fused`` (in the case's dtype) with ``reference`` (float64): outputs, layout, leaf gradients."""
    dtype = case.dtype
    outs, grads, _ = _run(case, fused, dtype)
    routs, rgrads, rview_grads = _run(case, reference, torch.float64, with_view_grads=True)
    n, c, t, h, w = case.shape
    terms = max(c, n * t * h * w)  # the longest sums: over channels, or over every position
    jitter = torch.Generator().manual_seed(0)
    probes = [_run(case, reference, torch.float64, jitter=jitter) for _ in range(PROBES)]
    for j, (name, o, r) in enumerate(zip(out_names, outs, routs)):
        assert o.dtype == dtype, f"{name}: dtype {o.dtype}, expected {dtype}"
        scale = max(r.abs().max().item() if r.numel() else 0.0, sensitivity(r, [p[0][j] for p in probes]))
        assert_close_normwise(o, r, dtype, name, scale=scale, terms=terms)
    x = case.leaves[0] if case.layouts[0] is None else case.layouts[0].view(case.leaves[0], case.shape)
    fmt = dense_format(x)
    assert outs[0].is_contiguous(memory_format=fmt), \
        f"output strides {outs[0].stride()} are not {fmt} like the input's (strides {x.stride()})"
    for i, g in grads.items():
        name = case.names[i]
        assert g.dtype == dtype, f"grad {name}: dtype {g.dtype}, expected {dtype}"
        scale = max(rgrads[i].abs().max().item(), sensitivity(rgrads[i], [p[1][i] for p in probes]))
        if i in rview_grads:  # an expanded input: each element of its gradient sums `copies` of the op's
            scale = max(scale, case.layouts[i].copies(case.shape) * rview_grads[i].abs().max().item())
        assert_close_normwise(g, rgrads[i], dtype, f"grad {name}", scale=scale, terms=terms)


def draw_grad_outputs(gen, dtype, *shapes_):
    """Upstream gradients rounded to ``dtype`` (None where an output gets none)."""
    return [None if s is None else randn(gen, *s, dtype=dtype) for s in shapes_]


# --------------------------------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------------------------------
@st.composite
def st_attention_cases(draw, backend: Backend) -> Case:
    shape = draw(shapes(backend.max_numel))
    dtype = draw(st.sampled_from(backend.dtypes))
    layout = draw(layouts())
    k = draw(st.sampled_from((3, 5, 7)))
    bias = draw(st.booleans())
    rg = draw(requires_grad(3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    x = make_activation(gen, shape, layout, dtype, pooled_dims=(1,))
    w = randn(gen, 1, 2, k, k, k, dtype=dtype, scale=2.0 / k ** 1.5)
    b = randn(gen, 1, dtype=dtype) if bias else None
    return Case(["x", "weight", "bias"], [x, w, b], [layout, None, None], shape, rg,
                draw_grad_outputs(gen, dtype, shape, None), dtype)


@st.composite
def channel_attention_cases(draw, backend: Backend) -> Case:
    shape = draw(shapes(backend.max_numel))
    c = shape[1]
    dtype = draw(st.sampled_from(backend.dtypes))
    layout = draw(layouts())
    hidden = draw(st.integers(1, min(c, 32)))
    b_reduce, b_expand, grad_of_map = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    rg = draw(requires_grad(5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    y = make_activation(gen, shape, layout, dtype, pooled_dims=(2, 3, 4))
    params = [randn(gen, hidden, c, dtype=dtype, scale=c ** -0.5),
              randn(gen, hidden, dtype=dtype, scale=0.1) if b_reduce else None,
              randn(gen, c, hidden, dtype=dtype, scale=hidden ** -0.5),
              randn(gen, c, dtype=dtype, scale=0.1) if b_expand else None]
    return Case(["y", "w_reduce", "b_reduce", "w_expand", "b_expand"], [y, *params], [layout] + [None] * 4, shape,
                rg, draw_grad_outputs(gen, dtype, shape, shape[:2] if grad_of_map else None), dtype)


@st.composite
def ra_tail_cases(draw, backend: Backend) -> Case:
    shape = draw(shapes(backend.max_numel))
    c = shape[1]
    dtype = draw(st.sampled_from(backend.dtypes))
    y_layout, s_layout = draw(layouts()), draw(layouts())
    hidden = draw(st.integers(1, min(c, 32)))
    k = draw(st.sampled_from((3, 5, 7)))
    ca_bias, st_bias = draw(st.booleans()), draw(st.booleans())
    rg = draw(requires_grad(8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    y = make_activation(gen, shape, y_layout, dtype, pooled_dims=(2, 3, 4))
    shortcut = randn(gen, *s_layout.base_shape(shape), dtype=dtype)
    params = [randn(gen, hidden, c, dtype=dtype, scale=c ** -0.5),
              randn(gen, hidden, dtype=dtype, scale=0.1) if ca_bias else None,
              randn(gen, c, hidden, dtype=dtype, scale=hidden ** -0.5),
              randn(gen, c, dtype=dtype, scale=0.1) if ca_bias else None,
              randn(gen, 1, 2, k, k, k, dtype=dtype, scale=2.0 / k ** 1.5),
              randn(gen, 1, dtype=dtype, scale=0.1) if st_bias else None]
    return Case(["y", "shortcut", "w_reduce", "b_reduce", "w_expand", "b_expand", "st_weight", "st_bias"],
                [y, shortcut, *params], [y_layout, s_layout] + [None] * 6, shape, rg,
                draw_grad_outputs(gen, dtype, shape), dtype)


def st_attention_property(backend: Backend, case: Case):
    check(case, lambda *a: st_attention_with_map(*a, backend=backend.name), st_attention_reference, ["out", "attn"])


def channel_attention_property(backend: Backend, case: Case):
    check(case, lambda *a: channel_attention_with_map(*a, backend=backend.name), channel_attention_reference,
          ["out", "a"])


def ra_tail_property(backend: Backend, case: Case):
    check(case, lambda *a: (ra_tail(*a, backend=backend.name),), lambda *a: (ra_tail_reference(*a),), ["out"])


OPS = {
    "st_attention": (st_attention_cases, st_attention_property),
    "channel_attention": (channel_attention_cases, channel_attention_property),
    "ra_tail": (ra_tail_cases, ra_tail_property),
}


def _make_test(op: str, backend: Backend):
    cases, prop = OPS[op]
    ok, why = backend.available()

    @pytest.mark.skipif(not ok, reason=f"backend {backend.name!r} on {backend.device}: {why}")
    @settings(max_examples=max(2, round(settings().max_examples * backend.share)))
    @given(case=cases(backend))
    def test(case):
        prop(backend, case)

    for mark in backend.marks:
        test = mark(test)
    test.__name__ = f"test_{op}_{backend.name}_{backend.device}"
    test.__doc__ = f"{op} on backend {backend.name!r} ({backend.device}) against the float64 eager reference."
    return test


for _op in OPS:
    for _backend in BACKENDS:
        _test = _make_test(_op, _backend)
        globals()[_test.__name__] = _test
