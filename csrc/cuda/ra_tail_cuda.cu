// CUDA kernels of the fused residual-attention tail operators (csrc/ops/ra_tail.h), registered for the CUDA
// dispatch key of meranet::ra_pool / ra_attend / ra_attend_bwd. Values, dtypes, layouts and tie rules
// follow the CPU kernels (csrc/cpu/ra_tail_cpu.cpp), which are the ground truth.
//
// Notation: activations dense in meranet::dense_format, viewed as [N, C, S] (csrc/cuda/common.cuh);
// u = y * a[n, c]; small maps are acc_t (float, double for float64) and contiguous:
//   P (pooled) [N, 2, S]: mean at (2n)*S + s, max at (2n + 1)*S + s;  A (attn), gL: [N, S] at n*S + s;
//   I (argmax) [N, S] int32, the first channel of the max (the first NaN wins, like torch.amax; 0 when none).
//   w: [1, 2, K, K, K] -> w[ch*K^3 + (dt*K + dh)*K + dw];  R = K/2; cross-correlation, zero padding:
//     L[p] = b + sum_{ch, o} w[ch, o] * P[ch, p + o - R]
//
// ra_pool        channel_reduce_*_kernel<BWD = false>: per position, sum / max / argmax over c of u.
// ra_attend      attn_kernel: one block per tile of kTT x kTH x kTW positions (one position per thread);
//                P on the tile plus a halo of R in shared memory (zero outside the volume; load_halo in
//                csrc/cuda/pooled_attention.cuh), w in shared memory; L, A = sigmoid(L).  Then
//                attend_out_kernel (elementwise): out = relu(y * a * A + shortcut).
// ra_attend_bwd  channel_reduce_*_kernel<BWD = true>: gz = g * [out > 0] (written), gA = sum_c gz*y*a,
//                gL = gA * A * (1 - A).  pooled_grad_kernel (same tiles, gL + halo in shared memory):
//                gP[ch, q] = sum_o w[ch, o] * gL[q - o + R], and one row of per-tile partials
//                gw[ch, o] = sum_{q in tile} P[ch, q] * gL[q - o + R], gb = sum_{q in tile} gL[q];
//                sum_rows_kernel adds the rows over tiles in tile order (deterministic, no atomics).
//
// Channel reductions have two thread mappings:
//   PM (NCTHW): one thread per position (consecutive threads, consecutive s: coalesced), channels in
//               increasing order -- the CPU kernel's exact summation order.
//   CL (channels_last_3d): one warp per position, lane l takes channels l, l + 32, ... (coalesced),
//               then a fixed shuffle tree (lane 0 ends with the result).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "cuda/common.cuh"
#include "cuda/pooled_attention.cuh"
#include "ops/channel_attention.h"
#include "ops/meranet_fast.h"
#include "ops/ra_tail.h"

namespace meranet {
namespace {

using namespace cuda_common;
using namespace pooled_attention;

constexpr int kWarp = 32;
constexpr int kClThreads = 256;  // CL channel reduction: 8 warps per block, one position per warp
constexpr int kTT = 2, kTH = 8, kTW = 16;  // conv tile extent along T, H, W
constexpr int kTilePos = kTT * kTH * kTW;  // positions per tile = threads per tile block (256)
constexpr int kSumThreads = 256;

// Number of tiles along T, H, W.
struct Tiles {
  int64_t nt, nh, nw;
};

// (n, t0, h0, w0) of tile block b: b = ((n*nt + it)*nh + ih)*nw + iw, origin (it*kTT, ih*kTH, iw*kTW).
__device__ __forceinline__ void tile_origin(int64_t b, const Tiles& tl, int64_t& n, int64_t& t0, int64_t& h0,
                                            int64_t& w0) {
  const int64_t iw = b % tl.nw;
  b /= tl.nw;
  const int64_t ih = b % tl.nh;
  b /= tl.nh;
  const int64_t it = b % tl.nt;
  n = b / tl.nt;
  t0 = it * kTT;
  h0 = ih * kTH;
  w0 = iw * kTW;
}

// Local coordinates of tile position q (thread q): q = (lt*kTH + lh)*kTW + lw.
__device__ __forceinline__ void tile_local(int q, int& lt, int& lh, int& lw) {
  lw = q % kTW;
  lh = (q / kTW) % kTH;
  lt = q / (kTW * kTH);
}

// ---------------------------------------------------------------------------------------------
// Channel reductions (one result per position)
//   BWD = false (ra_pool): u = y*a; pooled = (sum/C, max), argmax = first channel of the max.
//   BWD = true (ra_attend_bwd phase 1): gv = g*[out > 0] -> gz; sum = sum_c gv*y*a;
//                                       gL = sum * A * (1 - A).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
struct ReduceArgs {
  const scalar_t* y;
  const acc_t* scale;    // [N, C]
  const scalar_t* grad;  // BWD
  const scalar_t* out;   // BWD
  const acc_t* attn;     // BWD, [N, S]
  scalar_t* gz;          // BWD
  acc_t* gl;             // BWD, [N, S]
  acc_t* pooled;         // !BWD, [N, 2, S]
  int32_t* argmax;       // !BWD, [N, S]
  int64_t N, C, S;
};

// Element `off` (channel c) of position (n, s): accumulates into (sum, best, best_i).
template <bool BWD, typename scalar_t, typename acc_t>
__device__ __forceinline__ void reduce_element(const ReduceArgs<scalar_t, acc_t>& p, int64_t off, int64_t c,
                                               acc_t av, acc_t& sum, acc_t& best, int64_t& best_i) {
  if constexpr (BWD) {
    const acc_t gv = static_cast<acc_t>(p.out[off]) > acc_t(0) ? static_cast<acc_t>(p.grad[off]) : acc_t(0);
    p.gz[off] = static_cast<scalar_t>(gv);
    sum += gv * static_cast<acc_t>(p.y[off]) * av;
  } else {
    const acc_t u = static_cast<acc_t>(p.y[off]) * av;
    sum += u;
    max_update(best, best_i, u, c);
  }
}

template <bool BWD, typename scalar_t, typename acc_t>
__device__ __forceinline__ void reduce_finish(const ReduceArgs<scalar_t, acc_t>& p, int64_t n, int64_t s, acc_t sum,
                                              acc_t best, int64_t best_i) {
  if constexpr (BWD) {
    const acc_t As = p.attn[n * p.S + s];
    p.gl[n * p.S + s] = sum * As * (acc_t(1) - As);
  } else {
    p.pooled[(2 * n) * p.S + s] = sum * (acc_t(1) / static_cast<acc_t>(p.C));
    p.pooled[(2 * n + 1) * p.S + s] = best;
    p.argmax[n * p.S + s] = static_cast<int32_t>(index_or_zero(best_i));
  }
}

// PM: thread per position ns = n*S + s (grid-stride); element (n, c, s) at (n*C + c)*S + s.
template <typename scalar_t, typename acc_t, bool BWD>
__global__ void channel_reduce_pm_kernel(ReduceArgs<scalar_t, acc_t> p) {
  const int64_t NS = p.N * p.S;
  for (int64_t ns = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; ns < NS;
       ns += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = ns / p.S, s = ns - n * p.S;
    acc_t sum = 0, best = neg_inf<acc_t>();
    int64_t best_i = kNoIndex;
    for (int64_t c = 0; c < p.C; ++c) {
      reduce_element<BWD>(p, (n * p.C + c) * p.S + s, c, p.scale[n * p.C + c], sum, best, best_i);
    }
    reduce_finish<BWD>(p, n, s, sum, best, best_i);
  }
}

// CL: warp per position ns (grid-stride over warps; the loop bound is warp-uniform, so every lane
// reaches the shuffles); element (n, c, s) at ns*C + c.
template <typename scalar_t, typename acc_t, bool BWD>
__global__ void __launch_bounds__(kClThreads) channel_reduce_cl_kernel(ReduceArgs<scalar_t, acc_t> p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t NS = p.N * p.S;
  for (int64_t ns = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; ns < NS; ns += warps) {
    const int64_t n = ns / p.S, s = ns - n * p.S;
    acc_t sum = 0, best = neg_inf<acc_t>();
    int64_t best_i = kNoIndex;
    for (int64_t c = lane; c < p.C; c += kWarp) {
      reduce_element<BWD>(p, ns * p.C + c, c, p.scale[n * p.C + c], sum, best, best_i);
    }
    // Fixed tree: lane l takes lane l + off for off = 16, 8, 4, 2, 1.
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, off);
      if constexpr (!BWD) {
        const acc_t ob = __shfl_down_sync(0xffffffffu, best, off);
        const int64_t oi = __shfl_down_sync(0xffffffffu, best_i, off);
        if (max_takes_over(ob, oi, best, best_i)) {
          best = ob;
          best_i = oi;
        }
      }
    }
    if (lane == 0) reduce_finish<BWD>(p, n, s, sum, best, best_i);
  }
}

template <typename scalar_t, bool BWD>
void launch_channel_reduce(const ReduceArgs<scalar_t, at::opmath_type<scalar_t>>& args, bool cl,
                           cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t NS = args.N * args.S;
  if (cl) {
    channel_reduce_cl_kernel<scalar_t, acc_t, BWD>
        <<<grid_stride_blocks(NS, kClThreads / kWarp), kClThreads, 0, stream>>>(args);
  } else {
    channel_reduce_pm_kernel<scalar_t, acc_t, BWD><<<grid_stride_blocks(NS, kElemThreads), kElemThreads, 0, stream>>>(
        args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ra_attend, part 1: A = sigmoid(b + conv(P)). Grid: one block of kTilePos threads per tile.
template <typename acc_t, int K>
__global__ void __launch_bounds__(kTilePos)
attn_kernel(const acc_t* __restrict__ P, const acc_t* __restrict__ w, const acc_t* __restrict__ bias, int64_t T,
            int64_t H, int64_t W, Tiles tl, acc_t* __restrict__ attn) {
  constexpr int R = K / 2, HH = kTH + 2 * R, HW = kTW + 2 * R, HALO = (kTT + 2 * R) * HH * HW, KKK = K * K * K;
  __shared__ acc_t sh_p[2 * HALO];  // map ch at sh_p[ch*HALO ..]
  __shared__ acc_t sh_w[2 * KKK];
  const int64_t S = T * H * W;
  int64_t n, t0, h0, w0;
  tile_origin(blockIdx.x, tl, n, t0, h0, w0);
  for (int e = threadIdx.x; e < 2 * KKK; e += blockDim.x) sh_w[e] = w[e];
  load_halo(sh_p, P + (2 * n) * S, 2, S, T, H, W, t0, h0, w0, R, kTT + 2 * R, HH, HW);
  __syncthreads();

  int lt, lh, lw;
  tile_local(threadIdx.x, lt, lh, lw);
  const int64_t t = t0 + lt, h = h0 + lh, x = w0 + lw;
  if (t >= T || h >= H || x >= W) return;  // no barrier below
  // Output p = (t, h, x) reads P at p + o - R = halo index (lt + dt, lh + dh, lw + dw).
  acc_t L = 0;
#pragma unroll
  for (int dt = 0; dt < K; ++dt) {
#pragma unroll
    for (int dh = 0; dh < K; ++dh) {
      const int row = ((lt + dt) * HH + lh + dh) * HW + lw;
      const int o0 = (dt * K + dh) * K;
#pragma unroll
      for (int dw = 0; dw < K; ++dw) {
        L += sh_w[o0 + dw] * sh_p[row + dw] + sh_w[KKK + o0 + dw] * sh_p[HALO + row + dw];
      }
    }
  }
  L = (bias != nullptr ? bias[0] : acc_t(0)) + L;
  attn[n * S + (t * H + h) * W + x] = sigmoid_acc(L);
}

// ra_attend, part 2: out = relu(y * a[n, c] * A[n, s] + shortcut), elementwise over the dense tensor.
template <typename scalar_t, typename acc_t, bool CL>
__global__ void attend_out_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ sc,
                                  const acc_t* __restrict__ scale, const acc_t* __restrict__ attn, int64_t numel,
                                  int64_t C, int64_t S, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, s;
    elem_coords<CL>(i, C, S, n, c, s);
    const acc_t z = static_cast<acc_t>(y[i]) * scale[n * C + c] * attn[n * S + s] + static_cast<acc_t>(sc[i]);
    out[i] = static_cast<scalar_t>(z < acc_t(0) ? acc_t(0) : z);  // relu(NaN) = NaN, like torch.relu
  }
}

// ra_attend_bwd, phase 2: gP on the tile, and row blockIdx.x of the gw / gb partials:
//   partial[b*(2*K^3 + 1) + ch*K^3 + o] = sum_{q in tile} P[ch, q] * gL[q - o + R],
//   partial[b*(2*K^3 + 1) + 2*K^3]      = sum_{q in tile} gL[q].
// Positions of the tile outside the volume have P = 0 and gL = 0 in shared memory, so they add 0.
template <typename acc_t, int K>
__global__ void __launch_bounds__(kTilePos)
pooled_grad_kernel(const acc_t* __restrict__ gl, const acc_t* __restrict__ P, const acc_t* __restrict__ w, int64_t T,
                   int64_t H, int64_t W, Tiles tl, acc_t* __restrict__ gpooled, acc_t* __restrict__ partial) {
  constexpr int R = K / 2, HH = kTH + 2 * R, HW = kTW + 2 * R, HALO = (kTT + 2 * R) * HH * HW, KKK = K * K * K;
  constexpr int kRow = 2 * KKK + 1;
  __shared__ acc_t sh_g[HALO];          // gL on the tile plus halo
  __shared__ acc_t sh_p[2 * kTilePos];  // P of map ch at tile position q: sh_p[ch*kTilePos + q]
  __shared__ acc_t sh_w[2 * KKK];
  const int64_t S = T * H * W;
  int64_t n, t0, h0, w0;
  tile_origin(blockIdx.x, tl, n, t0, h0, w0);
  for (int e = threadIdx.x; e < 2 * KKK; e += blockDim.x) sh_w[e] = w[e];
  load_halo(sh_g, gl + n * S, 1, S, T, H, W, t0, h0, w0, R, kTT + 2 * R, HH, HW);
  int lt, lh, lw;
  tile_local(threadIdx.x, lt, lh, lw);
  const int64_t t = t0 + lt, h = h0 + lh, x = w0 + lw;
  const bool inside = t < T && h < H && x < W;
  const int64_t s = (t * H + h) * W + x;
  sh_p[threadIdx.x] = inside ? P[(2 * n) * S + s] : acc_t(0);
  sh_p[kTilePos + threadIdx.x] = inside ? P[(2 * n + 1) * S + s] : acc_t(0);
  __syncthreads();

  // Transposed conv: q = (t, h, x) reads gL at q - o + R = halo index (lt + 2R - dt, lh + 2R - dh, lw + 2R - dw).
  if (inside) {
    acc_t m0 = 0, m1 = 0;
#pragma unroll
    for (int dt = 0; dt < K; ++dt) {
#pragma unroll
      for (int dh = 0; dh < K; ++dh) {
        const int row = ((lt + 2 * R - dt) * HH + lh + 2 * R - dh) * HW + lw + 2 * R;
        const int o0 = (dt * K + dh) * K;
#pragma unroll
        for (int dw = 0; dw < K; ++dw) {
          const acc_t g = sh_g[row - dw];
          m0 += sh_w[o0 + dw] * g;
          m1 += sh_w[KKK + o0 + dw] * g;
        }
      }
    }
    gpooled[(2 * n) * S + s] = m0;
    gpooled[(2 * n + 1) * S + s] = m1;
  }

  // Partials: thread j owns entry j of the row and sums over the tile positions q in increasing order.
  for (int j = threadIdx.x; j < kRow; j += blockDim.x) {
    acc_t total = 0;
    if (j < 2 * KKK) {
      const int ch = j / KKK, o = j % KKK;
      const int dt = o / (K * K), dh = (o / K) % K, dw = o % K;
      const acc_t* pm = sh_p + ch * kTilePos;
      for (int q = 0; q < kTilePos; ++q) {
        int qt, qh, qw;
        tile_local(q, qt, qh, qw);
        total += pm[q] * sh_g[((qt + 2 * R - dt) * HH + qh + 2 * R - dh) * HW + qw + 2 * R - dw];
      }
    } else {
      for (int q = 0; q < kTilePos; ++q) {
        int qt, qh, qw;
        tile_local(q, qt, qh, qw);
        total += sh_g[((qt + R) * HH + qh + R) * HW + qw + R];
      }
    }
    partial[static_cast<int64_t>(blockIdx.x) * kRow + j] = total;
  }
}

// out[j] = sum over rows r = 0 .. rows-1 (in order) of partial[r*row + j].
template <typename acc_t>
__global__ void sum_rows_kernel(const acc_t* __restrict__ partial, int64_t rows, int row, acc_t* __restrict__ out) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= row) return;
  acc_t total = 0;
  for (int64_t r = 0; r < rows; ++r) total += partial[r * row + j];
  out[j] = total;
}

Tiles tiles_of(int64_t T, int64_t H, int64_t W) {
  return {ceil_div(T, kTT), ceil_div(H, kTH), ceil_div(W, kTW)};
}

int64_t num_tiles(int64_t N, const Tiles& tl) {
  const int64_t tiles = N * tl.nt * tl.nh * tl.nw;
  TORCH_CHECK(tiles <= INT_MAX, "ra_tail (CUDA): tensor too large (", tiles, " tiles)");
  return tiles;
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> ra_pool_cuda(const at::Tensor& y_in, const at::Tensor& scale) {
  const char* op = "ra_pool";
  check_activation(op, "y", y_in);
  check_on_cuda(op, "y", y_in);
  const auto acc = acc_scalar_type(y_in.scalar_type());
  check_small(op, "scale", scale, {y_in.size(0), y_in.size(1)}, acc, y_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const int64_t N = y.size(0), C = y.size(1), T = y.size(2), H = y.size(3), W = y.size(4);
  const auto small = y.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous);
  auto pooled = at::empty({N, 2, T, H, W}, small);
  auto argmax = at::empty({N, T, H, W}, small.dtype(at::kInt));
  if (y.numel() == 0) return {pooled, argmax};
  check_argmax_channels(op, "y", C);
  const auto a = scale.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ReduceArgs<scalar_t, acc_t> args{};
    args.y = y.data_ptr<scalar_t>();
    args.scale = a.data_ptr<acc_t>();
    args.pooled = pooled.data_ptr<acc_t>();
    args.argmax = argmax.data_ptr<int32_t>();
    args.N = N;
    args.C = C;
    args.S = T * H * W;
    launch_channel_reduce<scalar_t, false>(args, cl, stream);
  });
  return {pooled, argmax};
}

std::tuple<at::Tensor, at::Tensor> ra_attend_cuda(const at::Tensor& y_in, const at::Tensor& shortcut,
                                                  const at::Tensor& scale, const at::Tensor& pooled,
                                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_on_cuda("ra_attend", "y", y_in);
  check_ra_attend_inputs(y_in, shortcut, scale, pooled, weight, bias);
  const auto acc = acc_scalar_type(y_in.scalar_type());
  const auto n = y_in.size(0), c = y_in.size(1), t = y_in.size(2), h = y_in.size(3), w = y_in.size(4);
  const bool has_bias = bias.has_value() && bias->defined();
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto sc = shortcut.contiguous(fmt);
  auto out = at::empty_like(y, y.options(), fmt);
  auto attn = at::empty({n, 1, t, h, w}, y.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return {out, attn};
  const auto w_acc = weight.to(acc).contiguous();
  const auto b_acc = has_bias ? bias->to(acc).contiguous() : at::Tensor();
  const auto a = scale.contiguous();
  const auto P = pooled.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  const int64_t S = t * h * w, numel = y.numel();
  const Tiles tl = tiles_of(t, h, w);
  const int64_t tiles = num_tiles(n, tl);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_attend_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* bptr = has_bias ? b_acc.data_ptr<acc_t>() : nullptr;
    with_kernel_size("ra_tail", weight.size(2), [&](auto k_tag) {
      constexpr int K = decltype(k_tag)::value;
      attn_kernel<acc_t, K><<<static_cast<unsigned>(tiles), kTilePos, 0, stream>>>(
          P.data_ptr<acc_t>(), w_acc.data_ptr<acc_t>(), bptr, t, h, w, tl, attn.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    auto kernel = cl ? attend_out_kernel<scalar_t, acc_t, true> : attend_out_kernel<scalar_t, acc_t, false>;
    kernel<<<grid_stride_blocks(numel, kElemThreads), kElemThreads, 0, stream>>>(
        y.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), a.data_ptr<acc_t>(), attn.data_ptr<acc_t>(), numel, c, S,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ra_attend_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& out_in, const at::Tensor& y_in, const at::Tensor& scale,
    const at::Tensor& attn, const at::Tensor& pooled, const at::Tensor& weight) {
  check_on_cuda("ra_attend_bwd", "y", y_in);
  check_ra_attend_bwd_inputs(grad_out, out_in, y_in, scale, attn, pooled, weight);
  const auto acc = acc_scalar_type(y_in.scalar_type());
  const auto n = y_in.size(0), c = y_in.size(1), t = y_in.size(2), h = y_in.size(3), w = y_in.size(4);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto gout = grad_out.contiguous(fmt);
  const auto out = out_in.contiguous(fmt);
  const int64_t k = weight.size(2), KKK = k * k * k, S = t * h * w;
  const auto small = y.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous);
  auto gz = at::empty_like(y, y.options(), fmt);
  auto gpooled = at::empty({n, 2, t, h, w}, small);
  // gw (2k^3 entries in the weight layout) then gb; stays zero for empty inputs, as on CPU.
  auto gwb = at::zeros({2 * KKK + 1}, small);
  if (y.numel() > 0) {
    const auto w_acc = weight.to(acc).contiguous();
    const auto a = scale.contiguous(), A = attn.contiguous(), P = pooled.contiguous();
    const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
    const Tiles tl = tiles_of(t, h, w);
    const int64_t tiles = num_tiles(n, tl);
    const auto gl = at::empty({n, S}, small);
    const auto partial = at::empty({tiles, 2 * KKK + 1}, small);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_attend_bwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      ReduceArgs<scalar_t, acc_t> args{};
      args.y = y.data_ptr<scalar_t>();
      args.scale = a.data_ptr<acc_t>();
      args.grad = gout.data_ptr<scalar_t>();
      args.out = out.data_ptr<scalar_t>();
      args.attn = A.data_ptr<acc_t>();
      args.gz = gz.data_ptr<scalar_t>();
      args.gl = gl.data_ptr<acc_t>();
      args.N = n;
      args.C = c;
      args.S = S;
      launch_channel_reduce<scalar_t, true>(args, cl, stream);
      with_kernel_size("ra_tail", k, [&](auto k_tag) {
        constexpr int K = decltype(k_tag)::value;
        pooled_grad_kernel<acc_t, K><<<static_cast<unsigned>(tiles), kTilePos, 0, stream>>>(
            gl.data_ptr<acc_t>(), P.data_ptr<acc_t>(), w_acc.data_ptr<acc_t>(), t, h, w, tl,
            gpooled.data_ptr<acc_t>(), partial.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      const int row = static_cast<int>(2 * KKK + 1);
      sum_rows_kernel<acc_t><<<static_cast<unsigned>(ceil_div(row, kSumThreads)), kSumThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), tiles, row, gwb.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // Fresh tensors (copy = true): the results never alias each other or gwb.
  auto gw = gwb.narrow(0, 0, 2 * KKK).view(weight.sizes()).to(weight.scalar_type(), false, /*copy=*/true);
  auto gb = gwb.narrow(0, 2 * KKK, 1).to(weight.scalar_type(), false, /*copy=*/true);
  return {gz, gpooled, gw, gb};
}

}  // namespace
}  // namespace meranet

TORCH_LIBRARY_IMPL(meranet, CUDA, m) {
  m.impl("ra_pool", &meranet::ra_pool_cuda);
  m.impl("ra_attend", &meranet::ra_attend_cuda);
  m.impl("ra_attend_bwd", &meranet::ra_attend_bwd_cuda);
}
