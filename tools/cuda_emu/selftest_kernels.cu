// Test kernels for the emulator itself (tests/test_cuda_emu.py): each exercises one rule of cuda_emu.h,
// correct use (results checked in Python) or misuse (the Python exception checked). Written as CUDA,
// built only by tools/cuda_emu/build.py (the emulator reads it like csrc/cuda/*.cu).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstdint>

namespace {

// out[i] of lane i: the four shuffles with a segment width; out is int32 [4, threads].
__global__ void shuffles_kernel(int* out, int width, int delta) {
  const int t = threadIdx.x;
  const int n = blockDim.x;
  out[0 * n + t] = __shfl_sync(0xffffffffu, t * 10, delta, width);
  out[1 * n + t] = __shfl_up_sync(0xffffffffu, t * 10, delta, width);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, t * 10, delta, width);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, t * 10, delta, width);
}

// Two half-warps exchange values through shared memory, each synchronised by its own __syncwarp mask;
// out[t] = the value of lane t ^ 1. Also a ballot / any / all over the whole warp: out[32..34].
__global__ void syncwarp_kernel(int* out) {
  __shared__ int sh[32];
  const int t = threadIdx.x;
  const unsigned half = t < 16 ? 0x0000ffffu : 0xffff0000u;
  sh[t] = 100 + t;
  if (t < 16) {
    __syncwarp(half);
  } else {
    __syncwarp(half);
  }
  out[t] = sh[t ^ 1];
  const unsigned ballot = __ballot_sync(0xffffffffu, t % 3 == 0);
  const int any = __any_sync(0xffffffffu, t == 31);
  const int all = __all_sync(0xffffffffu, t < 31);
  if (t == 0) {
    out[32] = static_cast<int>(ballot);
    out[33] = any;
    out[34] = all;
  }
}

// A block-wide reduction through shared memory with barriers (correct), for the thread-order tests.
__global__ void __launch_bounds__(256) block_sum_kernel(const float* in, float* out) {
  __shared__ float sh[256];
  const int t = threadIdx.x;
  sh[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off >>= 1) {
    if (t < off) sh[t] += sh[t + off];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = sh[0];
}

// Records the order in which the threads of block 0 pass two points (a counter in shared memory; a
// race on a GPU, sequential in the emulator): out[0..n) before the barrier, out[n..2n) after it.
__global__ void order_kernel(int* out) {
  __shared__ int counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads();
  out[counter++] = threadIdx.x;
  __syncthreads();
  out[counter++] = threadIdx.x;
}

// Reads shared memory nobody wrote: the poison (0xFF bytes).
__global__ void poison_kernel(int* out) {
  __shared__ int sh[64];
  out[threadIdx.x] = sh[threadIdx.x];
}

// ---- misuse: each launch must fail with the emulator's message --------------------------------------
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void partial_barrier_kernel(float* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void shuffle_in_partial_warp_kernel(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v += __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void lane_outside_mask_kernel(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.f, 1);
}

__global__ void read_outside_mask_kernel(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, 1.f, 8);
}

__global__ void syncwarp_lane_at_barrier_kernel(float* out) {
  if (threadIdx.x == 5) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void global_off_by_one_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i + 1];
}

__global__ void shared_off_by_one_kernel(float* out) {
  __shared__ float a[32];
  __shared__ float b[32];
  a[threadIdx.x] = 1.f;
  b[threadIdx.x] = 2.f;
  __syncthreads();
  out[threadIdx.x] = a[threadIdx.x + 1];
}

__global__ void dynamic_smem_off_by_one_kernel(float* out) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x + 1] = 1.f;
  out[threadIdx.x] = 1.f;
}

__global__ void __launch_bounds__(128) bounded_kernel(float* out) { out[threadIdx.x] = 1.f; }

__global__ void big_static_smem_kernel(float* out) {
  __shared__ float sh[13 * 1024];  // 52 KiB > 48 KiB
  sh[threadIdx.x] = 1.f;
  out[threadIdx.x] = sh[threadIdx.x];
}

}  // namespace

namespace selftest {

at::Tensor shuffles(const at::Tensor& out, int64_t width, int64_t delta) {
  shuffles_kernel<<<1, static_cast<unsigned>(out.size(1))>>>(out.data_ptr<int>(), static_cast<int>(width),
                                                              static_cast<int>(delta));
  return out;
}

at::Tensor syncwarp(const at::Tensor& out) {
  syncwarp_kernel<<<1, 32>>>(out.data_ptr<int>());
  return out;
}

at::Tensor block_sum(const at::Tensor& in, int64_t threads) {
  at::Tensor out = at::empty({in.numel() / threads}, in.options());
  block_sum_kernel<<<static_cast<unsigned>(out.numel()), static_cast<unsigned>(threads)>>>(in.data_ptr<float>(),
                                                                                         out.data_ptr<float>());
  return out;
}

at::Tensor order(const at::Tensor& out) {
  order_kernel<<<1, static_cast<unsigned>(out.numel() / 2)>>>(out.data_ptr<int>());
  return out;
}

at::Tensor poison(const at::Tensor& out) {
  poison_kernel<<<1, 64>>>(out.data_ptr<int>());
  return out;
}

// Launches the misuse case `which` (see the kernels above) on out (float32, >= 1024 elements).
at::Tensor misuse(const at::Tensor& out, int64_t which) {
  float* o = out.data_ptr<float>();
  switch (which) {
    case 0: divergent_barrier_kernel<<<2, 64>>>(o); break;
    case 1: partial_barrier_kernel<<<1, 64>>>(o); break;
    case 2: shuffle_in_partial_warp_kernel<<<1, 64>>>(o); break;
    case 3: lane_outside_mask_kernel<<<1, 32>>>(o); break;
    case 4: read_outside_mask_kernel<<<1, 32>>>(o); break;
    case 5: syncwarp_lane_at_barrier_kernel<<<1, 32>>>(o); break;
    case 6: {
      const int n = static_cast<int>(out.numel());
      at::Tensor in = at::zeros_like(out);
      global_off_by_one_kernel<<<(n + 127) / 128, 128>>>(in.data_ptr<float>(), o, n);
      break;
    }
    case 7: shared_off_by_one_kernel<<<1, 32>>>(o); break;
    case 8: dynamic_smem_off_by_one_kernel<<<1, 32, 32 * sizeof(float)>>>(o); break;
    case 9: bounded_kernel<<<1, 256>>>(o); break;
    case 10: bounded_kernel<<<1, 2048>>>(o); break;
    case 11: bounded_kernel<<<dim3(1, 70000), 32>>>(o); break;
    case 12: dynamic_smem_off_by_one_kernel<<<1, 32, 64 * 1024>>>(o); break;
    case 13: big_static_smem_kernel<<<1, 32>>>(o); break;
    default: TORCH_CHECK(false, "selftest misuse: no case ", which);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace selftest

TORCH_LIBRARY_IMPL(cuda_emu_selftest, CUDA, m) {
  m.impl("shuffles", &selftest::shuffles);
  m.impl("syncwarp", &selftest::syncwarp);
  m.impl("block_sum", &selftest::block_sum);
  m.impl("order", &selftest::order);
  m.impl("poison", &selftest::poison);
  m.impl("misuse", &selftest::misuse);
}
