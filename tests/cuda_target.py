"""Where the CUDA C++ kernel tests run: a real GPU, or the CUDA emulator on the CPU (docs/design.md §6).

The same test code serves both. With ``MERANET_CUDA_EMU=path/to/libmeranet_emu.so`` (set by
``make test-cuda-emu`` / tools/cuda_emu/run_tests.py) the CUDA kernels are the emulated build of csrc/cuda
(``torch.ops.meranet_emu.*``, taking CPU tensors) and the "device" is the CPU; otherwise they are the
CUDA implementations of ``torch.ops.meranet.*`` on the GPU.

    kernel(op)      the CUDA implementation of a meranet kernel op
    to_device(*t)   tensors moved to the device the CUDA kernels read (CUDA, or the CPU when emulated)
    DEVICE          "cuda" or "cpu"
    synchronize()   waits for the device (nothing to wait for when emulated)
    SKIP_REASON     why the CUDA kernels cannot run here, or None
"""
from __future__ import annotations

import os

import torch

import meranet_fast._extension as ext

EMU_LIBRARY = os.environ.get("MERANET_CUDA_EMU") or None
EMULATED = EMU_LIBRARY is not None

if EMULATED:
    ext.require()  # the emulated library links against meranet_fast._C
    torch.ops.load_library(EMU_LIBRARY)
    DEVICE = "cpu"
    SKIP_REASON = None
else:
    DEVICE = "cuda"
    if not torch.cuda.is_available():
        SKIP_REASON = "needs an NVIDIA GPU (none visible to torch) or the CUDA emulator (make test-cuda-emu)"
    elif not ext.cuda_compiled():
        SKIP_REASON = "meranet_fast._C was built without CUDA sources"
    else:
        SKIP_REASON = None


def kernel(op):
    """The CUDA implementation of the meranet op `op` (an OpOverloadPacket such as torch.ops.meranet.ca_pool)."""
    if not EMULATED:
        return op
    namespace, name = op._qualified_op_name.split("::")
    return getattr(getattr(torch.ops, namespace + "_emu"), name)


def to_device(*tensors):
    return [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in tensors]


def synchronize() -> None:
    if not EMULATED:
        torch.cuda.synchronize()
