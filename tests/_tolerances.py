"""The tolerance rule of the kernel tests, written once (docs/design.md §5 accumulation, §6 testing).

A fused result is compared with the eager reference (meranet_fast/ops/reference.py) evaluated in float64
on the very same input values (inputs are rounded to the tested dtype first, then widened), so the
difference is the fused computation's own rounding. The bound is normwise:

    max |actual - expected| <= rtol(dtype) * scale

rtol(dtype, terms) = OUTPUT_ULPS units of roundoff of the dtype the result is written in, plus
ACCUMULATION_ULPS * sqrt(terms) units of the accumulation dtype (float32 for float32 / bfloat16 / float16
inputs: docs/design.md §5), where terms is the length of the op's longest sum (rounding errors of a sum
grow like a random walk).

scale is the magnitude that rounding errors act on: the largest |expected|, or more where the result
amplifies them. A gradient of a weight is a sum over every position whose terms cancel, so its value
can be far below its terms; the tests measure that by evaluating the float64 reference again on inputs
perturbed at random by PROBE (relative) and take max |perturbed - expected| / PROBE when it is larger
(:func:`sensitivity`). Where an input was expanded before the op, each element of its gradient sums
several of the op's gradients, and the caller passes that sum's scale.
"""
from __future__ import annotations

import math

import torch

#: Unit roundoff (half an ulp of 1.0) of the dtypes the ops accept.
UNIT_ROUNDOFF = {
    torch.float64: 2.0 ** -53,
    torch.float32: 2.0 ** -24,
    torch.bfloat16: 2.0 ** -8,
    torch.float16: 2.0 ** -11,
}
#: Roundings of the result in its own dtype that the bound allows (the final store, and one rounded
#: intermediate such as a bfloat16 gradient that feeds a later sum).
OUTPUT_ULPS = 4
#: Units of roundoff of the accumulation dtype allowed on the scale, per square root of the terms summed.
ACCUMULATION_ULPS = 16
#: Relative size of the random perturbation of the inputs that measures the scale (see the module doc).
PROBE = 2.0 ** -30


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for the others (docs/design.md §5)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rtol(dtype: torch.dtype, terms: int = 1) -> float:
    """The normwise relative tolerance of a result in ``dtype`` computed with sums of up to ``terms`` terms.

    float64: the accumulation unit is float32's for now, because the float64 backward of st_attention's
    C++ kernel starts from float32-rounded saved maps (csrc/cpu/st_attention_cpu.cpp); the float64-exact
    gradient check is a separate test.
    """
    acc = torch.float32 if dtype == torch.float64 else accumulation_dtype(dtype)
    return OUTPUT_ULPS * UNIT_ROUNDOFF[dtype] + ACCUMULATION_ULPS * math.sqrt(terms) * UNIT_ROUNDOFF[acc]


def sensitivity(expected: torch.Tensor, perturbed: list) -> float:
    """max |p - expected| / PROBE over the references ``perturbed`` evaluated on inputs perturbed by PROBE."""
    e = expected.detach().double()
    return max(((p.detach().double() - e).abs().max().item() for p in perturbed if p.numel()), default=0.0) / PROBE


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str,
                          scale: float | None = None, terms: int = 1) -> None:
    """Assert ``actual`` (any dtype) matches the float64 ``expected`` within ``rtol(dtype, terms) * scale``.

    ``scale`` defaults to ``max |expected|`` (the caller passes a larger one from :func:`sensitivity` or for
    the gradient of an expanded input).
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    a, e = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(a).all(), f"{name}: non-finite values where the reference is finite"
    err = (a - e).abs().max().item()
    if scale is None:
        scale = e.abs().max().item()
    tol = rtol(dtype, terms)
    assert err <= tol * scale, (f"{name} ({dtype}): max abs error {err:.3g} > {tol * scale:.3g} "
                                f"(rtol {tol:.3g} for sums of {terms} terms, x scale {scale:.3g})")
