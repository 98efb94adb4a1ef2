// Compile-time facts of the CUDA build, so the build query can report them.
#include <cuda_runtime_api.h>

#include "ops/meranet_fast.h"

namespace meranet {

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace meranet
