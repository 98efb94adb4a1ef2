// Declarations shared by the operator registrations and the CPU/CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include <string>

namespace meranet {

std::string build_info();

// t in `dtype`: t itself when it already is (no dispatch: these ops run per block, and their small
// tensors are usually in the right dtype already), else a converted copy.
inline at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// The accumulation type of every op, and the dtype of its saved small maps: float64 for float64
// tensors, float32 for every other floating type (docs/design.md §5).
inline at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The spatio-temporal attention's channel argmax maps are int32: `channels` of `name` must fit.
inline void check_argmax_channels(const char* op, const char* name, int64_t channels) {
  TORCH_CHECK(channels <= std::numeric_limits<int32_t>::max(), op, ": ", name, " has ", channels,
              " channels, more than the int32 channel argmax can index (at most 2147483647 = 2^31 - 1)");
}

#ifdef MERANET_WITH_CUDA
// CUDA runtime version the extension was compiled against (csrc/cuda/device_info.cu).
int cuda_runtime_version();
#endif

}  // namespace meranet
