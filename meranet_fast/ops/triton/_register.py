"""``triton_op``: torch.library.triton_op with an explicit schema that the type annotations must match.

torch 2.11 ignores ``schema=`` and infers the operator's schema from the function's annotations (later
releases use the given schema), so every Triton op function is annotated and its annotations are checked
against the schema here, on every torch: a mismatch fails at import in CI on the newest torch too, instead
of only on the oldest. See docs/design.md §4.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.library import infer_schema

__all__ = ["triton_op"]


def _signature(schema: torch._C.FunctionSchema) -> tuple:
    """Argument names and types and the return types of a parsed schema (return names are left out:
    an inferred schema has none)."""
    return ([(a.name, str(a.type)) for a in schema.arguments], [str(r.type) for r in schema.returns])


def triton_op(name: str, schema: str) -> Callable:
    """Decorator: register ``fn`` as the Triton op ``name`` (``"meranet::..."``) with ``schema``, after
    checking that the schema inferred from ``fn``'s annotations has the same arguments and return types."""

    def register(fn: Callable):
        inferred = infer_schema(fn, mutates_args=())
        if _signature(torch._C.parse_schema(name + inferred)) != _signature(torch._C.parse_schema(name + schema)):
            raise TypeError(f"{name}: the annotations of {fn.__name__} give the schema {inferred}, which does not "
                            f"match the declared schema {schema}")
        return torch.library.triton_op(name, fn, mutates_args=(), schema=schema)

    return register
