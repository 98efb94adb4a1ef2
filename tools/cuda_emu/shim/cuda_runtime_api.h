// cuda_emu stand-in for <cuda_runtime_api.h>.
#pragma once
#include "cuda_runtime.h"
