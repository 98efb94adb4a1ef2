// Host-side stand-ins for the CUDA parts of ATen / c10 that the project's .cu files use: the emulated
// operators take CPU tensors where the real ones take CUDA tensors (rewrite.py turns `t.is_cuda()` into
// `cuda_emu::is_device(t)`).
#pragma once
#include "cuda_emu.h"
#if __has_include(<ATen/core/Tensor.h>)
#include <ATen/core/Tensor.h>
namespace cuda_emu {
inline bool is_device(const at::Tensor& t) { return t.is_cpu(); }
}  // namespace cuda_emu
#endif
