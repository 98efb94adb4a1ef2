// Small helpers shared by the CUDA kernels of every operator (csrc/cuda/*_cuda.cu), templated on the
// accumulation type where they compute (float, or double for float64).
//
// Activations are viewed as [N, C, S] (S = T*H*W, position s = (t*H + h)*W + w) in one of the two dense
// layouts the CPU kernels use (meranet::dense_format):
//   NCTHW            element (n, c, s) at (n*C + c)*S + s     (positions contiguous)
//   channels_last_3d element (n, c, s) at (n*S + s)*C + c     (channels contiguous)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace meranet {
namespace cuda_common {

constexpr int kElemThreads = 256;                  // threads per block of the elementwise kernels
constexpr int64_t kMaxGridStrideBlocks = 1 << 20;  // grid-stride kernels never launch more blocks

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `threads` for a grid-stride loop over `work` items (at least 1).
inline unsigned int grid_stride_blocks(int64_t work, int threads) {
  return static_cast<unsigned int>(std::clamp<int64_t>(ceil_div(work, threads), 1, kMaxGridStrideBlocks));
}

inline void check_on_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
}

// Offset of element (n, c, s) in a dense [N, C, S] activation (see the layouts above).
template <bool CL>
__device__ __forceinline__ int64_t elem_offset(int64_t n, int64_t c, int64_t s, int64_t C, int64_t S) {
  return CL ? (n * S + s) * C + c : (n * C + c) * S + s;
}

// Inverse of elem_offset: (n, c, s) of the element at flat offset i.
template <bool CL>
__device__ __forceinline__ void elem_coords(int64_t i, int64_t C, int64_t S, int64_t& n, int64_t& c, int64_t& s) {
  if (CL) {  // i = (n*S + s)*C + c
    c = i % C;
    const int64_t ns = i / C;
    n = ns / S;
    s = ns - n * S;
  } else {  // i = (n*C + c)*S + s
    s = i % S;
    const int64_t nc = i / S;
    n = nc / C;
    c = nc - n * C;
  }
}

// ---------------------------------------------------------------------------------------------
// max / first argmax, with the CPU kernels' semantics (torch.amax's for NaN): a sequential scan in
// increasing index order replaces the running max on a strict '>' or with the first NaN, so ties keep the
// first index and the first NaN wins (an all -inf run reports index 0). In parallel: each thread scans its
// indices in increasing order with max_update, partial results are merged with max_takes_over (NaN above
// everything, larger value first, smaller index on equal values or between NaNs; kNoIndex marks "nothing
// taken yet"). That is a total order on the pairs the accumulators can hold, so every merge order gives the
// same (value, index). An empty accumulator is (neg_inf, kNoIndex): any real candidate takes over from it
// (on equal values by the smaller index), and it never takes over, so max_takes_over alone can also scan.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();
constexpr int kNoIndex32 = std::numeric_limits<int>::max();  // the same for int32 indices (st_attention)

template <typename acc_t>
__device__ __forceinline__ void max_update(acc_t& best, int64_t& best_i, acc_t v, int64_t i) {
  if (v > best || (v != v && best == best)) {
    best = v;
    best_i = i;
  }
}

// Whether candidate (v, i) replaces the partial result (best, best_i).
template <typename acc_t, typename index_t>
__device__ __forceinline__ bool max_takes_over(acc_t v, index_t i, acc_t best, index_t best_i) {
  const bool v_nan = v != v, best_nan = best != best;
  if (v_nan || best_nan) return v_nan && (!best_nan || i < best_i);
  return v > best || (v == best && i < best_i);
}

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

__device__ __forceinline__ int64_t index_or_zero(int64_t i) { return i == kNoIndex ? 0 : i; }

// 1 / (1 + e^-v), the CPU kernels' formula (IEEE division, no fast-math).
__device__ __forceinline__ float sigmoid_acc(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ double sigmoid_acc(double v) { return 1.0 / (1.0 + exp(-v)); }

}  // namespace cuda_common
}  // namespace meranet
