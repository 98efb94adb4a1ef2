"""Triton kernels of the fused operators, registered as ``torch.ops.meranet.*_triton``.

Importing this package never fails: without triton the ops are simply not registered, and
``is_available()`` says why.
"""
from __future__ import annotations

import os

import torch

try:
    from meranet_fast.ops.triton.st_attention import (  # noqa: F401  (registers the ops)
        check_st_attention_inputs,
        st_attention_bwd_triton,
        st_attention_fwd_triton,
    )

    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # triton is not installed
    _IMPORT_ERROR = exc


def is_available() -> tuple[bool, str]:
    """(whether the Triton ops can run here, why): a CUDA device with triton, or the CPU interpreter."""
    if _IMPORT_ERROR is not None:
        return False, f"triton cannot be imported: {_IMPORT_ERROR}"
    if torch.cuda.is_available():
        return True, "triton with a CUDA device"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "triton CPU interpreter (TRITON_INTERPRET=1)"
    return False, "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"
