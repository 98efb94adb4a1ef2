// cuda_emu stand-in: the current stream and the properties of the emulated device (an H100 / H200 SXM).
#pragma once
#include <cstdlib>
#include "cuda_emu_host.h"
#include <c10/cuda/CUDAGuard.h>
struct cudaDeviceProp {
  int multiProcessorCount = 132;  // CUDA_EMU_SM_COUNT overrides
  int warpSize = 32;
  int maxThreadsPerBlock = 1024;
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 227 * 1024;
  int major = 9, minor = 0;
};
namespace at {
namespace cuda {
struct EmuStream {
  operator cudaStream_t() const { return nullptr; }
};
inline EmuStream getCurrentCUDAStream(int = -1) { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp p = [] {
    cudaDeviceProp q;
    if (const char* e = std::getenv("CUDA_EMU_SM_COUNT")) q.multiProcessorCount = std::atoi(e);
    return q;
  }();
  return &p;
}
}  // namespace cuda
}  // namespace at
