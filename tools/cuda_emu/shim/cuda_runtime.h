// cuda_emu stand-in for <cuda_runtime.h>.
#pragma once
#include "cuda_emu.h"
#define CUDART_VERSION 13000
