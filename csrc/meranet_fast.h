// Declarations shared by the operator registrations and the CPU/CUDA kernels.
#pragma once

#include <string>

namespace meranet {

std::string build_info();

#ifdef MERANET_WITH_CUDA
// CUDA runtime version the extension was compiled against (csrc/cuda/device_info.cu).
int cuda_runtime_version();
#endif

}  // namespace meranet
