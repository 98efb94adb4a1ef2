// Declarations shared by the operator registrations and the CPU/CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace meranet {

std::string build_info();

// t in `dtype`: t itself when it already is (no dispatch: these ops run per block, and their small
// tensors are usually in the right dtype already), else a converted copy.
inline at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

#ifdef MERANET_WITH_CUDA
// CUDA runtime version the extension was compiled against (csrc/cuda/device_info.cu).
int cuda_runtime_version();
#endif

}  // namespace meranet
