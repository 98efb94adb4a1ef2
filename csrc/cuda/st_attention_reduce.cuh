// Kernels 1 and 3 of st_attention (CUDA): the reductions over the channels, one value (or three) per
// position.
// Included only by csrc/cuda/st_attention_cuda.cu (notation and the kernel overview at its top): one
// translation unit, so these keep the internal linkage they had in that file.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/st_attention_common.cuh"

namespace meranet {
namespace {

// ----------------------------------------------------------------------------------------------
// Kernels 1 and 3: reductions over the channels, one value (or three) per position.
//   POOL (DOT = false): a = x.      out0 = P (mean at (2n)*S + s, max at (2n+1)*S + s), argmax = I.
//   DOT  (DOT = true):  a = g, b = x. out0 = gL at n*S + s = (sum_c g*x) * A * (1 - A).
// ----------------------------------------------------------------------------------------------

// PM mapping. blockDim = (32, slices). Block blockIdx.x covers sample n = blockIdx.x / bps and the
// 32*VEC flat positions starting at (blockIdx.x % bps) * 32 * VEC; lane x owns the VEC positions
// s0 .. s0+VEC-1 (one row: W % VEC == 0), slice y owns channels c = y, y + slices, ... (increasing).
// Slices are combined by slice 0 in slice order (deterministic).
template <typename scalar_t, int VEC, bool DOT>
__global__ void __launch_bounds__(kReduceLanes * kMaxSlices)
channel_reduce_pm_kernel(const scalar_t* __restrict__ a, Strides sa, const scalar_t* __restrict__ b,
                         Strides sb, Shape shape, int64_t blocks_per_sample, float* __restrict__ out0,
                         int* __restrict__ argmax, const float* __restrict__ attn) {
  __shared__ float sh_sum[kMaxSlices][kReduceLanes * VEC];
  __shared__ float sh_max[DOT ? 1 : kMaxSlices][DOT ? 1 : kReduceLanes * VEC];
  __shared__ int sh_arg[DOT ? 1 : kMaxSlices][DOT ? 1 : kReduceLanes * VEC];

  const int lane = threadIdx.x;
  const int slice = threadIdx.y;
  const int slices = blockDim.y;
  // grid.x <= INT_MAX (host check): 32-bit block arithmetic
  const uint32_t bps = static_cast<uint32_t>(blocks_per_sample);
  const int64_t n = blockIdx.x / bps;
  const int64_t s0 = (static_cast<int64_t>(blockIdx.x % bps) * kReduceLanes + lane) * VEC;
  const bool active = s0 < shape.S;  // S % VEC == 0, so the whole vector is inside

  float sum[VEC], best[VEC];
  int arg[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    sum[i] = 0.f;
    best[i] = -INFINITY;
    arg[i] = kNoIndex32;
  }

  if (active) {
    int64_t t, h, w;
    unflatten_position(s0, shape.H, shape.W, t, h, w);
    const scalar_t* pa = a + n * sa.n + t * sa.t + h * sa.h + w * sa.w;
    const scalar_t* pb = DOT ? b + n * sb.n + t * sb.t + h * sb.h + w * sb.w : nullptr;
    const int64_t C = shape.C;
    int64_t c = slice;
    // Four channels per step, all loads issued before any use (memory-level parallelism).
    for (; c + 3 * slices < C; c += 4 * slices) {
      float va[4][VEC];
      float vb[DOT ? 4 : 1][VEC];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        load_vec<scalar_t, VEC>(pa + (c + u * slices) * sa.c, va[u]);
        if constexpr (DOT) load_vec<scalar_t, VEC>(pb + (c + u * slices) * sb.c, vb[u]);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          if constexpr (DOT) {
            sum[i] = fmaf(va[u][i], vb[u][i], sum[i]);
          } else {
            sum[i] += va[u][i];
            const int cc = static_cast<int>(c + u * slices);
            if (max_takes_over(va[u][i], cc, best[i], arg[i])) {
              best[i] = va[u][i];
              arg[i] = cc;
            }
          }
        }
      }
    }
    for (; c < C; c += slices) {
      float va[VEC];
      load_vec<scalar_t, VEC>(pa + c * sa.c, va);
      float vb[VEC];
      if constexpr (DOT) load_vec<scalar_t, VEC>(pb + c * sb.c, vb);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        if constexpr (DOT) {
          sum[i] = fmaf(va[i], vb[i], sum[i]);
        } else {
          sum[i] += va[i];
          if (max_takes_over(va[i], static_cast<int>(c), best[i], arg[i])) {
            best[i] = va[i];
            arg[i] = static_cast<int>(c);
          }
        }
      }
    }
  }

  if (slice > 0) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      sh_sum[slice][lane * VEC + i] = sum[i];
      if constexpr (!DOT) {
        sh_max[slice][lane * VEC + i] = best[i];
        sh_arg[slice][lane * VEC + i] = arg[i];
      }
    }
  }
  __syncthreads();
  if (slice != 0 || !active) return;
  for (int y = 1; y < slices; ++y) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      sum[i] += sh_sum[y][lane * VEC + i];
      if constexpr (!DOT) {
        const float v = sh_max[y][lane * VEC + i];
        const int ai = sh_arg[y][lane * VEC + i];
        if (max_takes_over(v, ai, best[i], arg[i])) {
          best[i] = v;
          arg[i] = ai;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const int64_t s = s0 + i;
    if constexpr (DOT) {
      const float A = attn[n * shape.S + s];
      out0[n * shape.S + s] = sum[i] * A * (1.f - A);  // d sigmoid(L)/dL = A (1 - A)
    } else {
      out0[(2 * n) * shape.S + s] = sum[i] / static_cast<float>(shape.C);
      out0[(2 * n + 1) * shape.S + s] = best[i];
      argmax[n * shape.S + s] = arg[i];
    }
  }
}

// CL mapping. blockDim = 256 = groups * G, G a power of two <= 32. Group gi of block blockIdx.x owns
// global position q = base + gi (q = n*S + s) for base = blockIdx.x*groups, +gridDim.x*groups, ...
// (base is block-uniform, so every lane of a warp runs the same iterations: the shuffles below see
// the whole warp). Lane l of the group reads channel vectors cv = l, l+G, ... (channels cv*VEC ..
// cv*VEC+VEC-1, C % VEC == 0). The G lanes combine with an xor butterfly (exact for max/argmax,
// commutative adds for the sum: every run gives the same bits).
// Launch bound: at least 5 blocks of 256 per SM (<= 51 registers). ptxas's own target for a 256-thread
// bound (40 registers) spills around the 64-bit division's subroutine call in div_nonneg (docs/design.md §3).
template <typename scalar_t, int VEC, bool DOT>
__global__ void __launch_bounds__(kClThreads, 5)
channel_reduce_cl_kernel(const scalar_t* __restrict__ a, Strides sa, const scalar_t* __restrict__ b,
                         Strides sb, Shape shape, int group, float* __restrict__ out0,
                         int* __restrict__ argmax, const float* __restrict__ attn) {
  const int G = group;
  const int lane = threadIdx.x & (G - 1);
  const int gi = threadIdx.x / G;
  const int groups = blockDim.x / G;
  const int64_t NS = shape.N * shape.S;
  const int64_t CV = shape.C / VEC;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * groups; base < NS;
       base += static_cast<int64_t>(gridDim.x) * groups) {
    const int64_t q = base + gi;
    const bool active = q < NS;
    float sum = 0.f, best = -INFINITY;
    int arg = kNoIndex32;
    int64_t n = 0, s = 0;
    if (active) {
      n = div_nonneg(q, shape.S);
      s = q - n * shape.S;
      int64_t t, h, w;
      unflatten_position(s, shape.H, shape.W, t, h, w);
      const scalar_t* pa = a + n * sa.n + t * sa.t + h * sa.h + w * sa.w;
      const scalar_t* pb = DOT ? b + n * sb.n + t * sb.t + h * sb.h + w * sb.w : nullptr;
#pragma unroll 2
      for (int64_t cv = lane; cv < CV; cv += G) {
        const int64_t c = cv * VEC;
        float va[VEC];
        load_vec<scalar_t, VEC>(pa + c * sa.c, va);
        float vb[VEC];
        if constexpr (DOT) load_vec<scalar_t, VEC>(pb + c * sb.c, vb);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          if constexpr (DOT) {
            sum = fmaf(va[i], vb[i], sum);
          } else {
            sum += va[i];
            if (max_takes_over(va[i], static_cast<int>(c + i), best, arg)) {
              best = va[i];
              arg = static_cast<int>(c + i);
            }
          }
        }
      }
    }
    for (int off = G / 2; off > 0; off >>= 1) {
      sum += __shfl_xor_sync(0xffffffffu, sum, off, G);
      if constexpr (!DOT) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, off, G);
        const int oa = __shfl_xor_sync(0xffffffffu, arg, off, G);
        if (max_takes_over(ob, oa, best, arg)) {
          best = ob;
          arg = oa;
        }
      }
    }
    if (active && lane == 0) {
      if constexpr (DOT) {
        const float A = attn[n * shape.S + s];
        out0[n * shape.S + s] = sum * A * (1.f - A);
      } else {
        out0[(2 * n) * shape.S + s] = sum / static_cast<float>(shape.C);
        out0[(2 * n + 1) * shape.S + s] = best;
        argmax[n * shape.S + s] = arg;
      }
    }
  }
}

}  // namespace
}  // namespace meranet
