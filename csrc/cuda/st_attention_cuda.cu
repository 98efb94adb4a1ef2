// CUDA kernels of the fused spatio-temporal attention op (docs/design.md §2.1), registered for the CUDA
// dispatch key of meranet::st_attention_fwd / meranet::st_attention_bwd.
//
//   out = x * A,   A = sigmoid(L),   L = conv3d(P, w, b, padding = K/2),   P = [mean_c x ; max_c x]
//
// Notation used in every comment below
//   x, out, g (= grad_out), gx (= grad_x): [N, C, T, H, W], any strides (see "Layouts").
//   S = T*H*W; a "position" is (t, h, w); its flat index is s = (t*H + h)*W + w.
//   P (pooled): float32 [N, 2, T, H, W] contiguous: element (n, ch, s) at (n*2 + ch)*S + s.
//   A (attn), gL: float32 [N(,1), T, H, W] contiguous: element (n, s) at n*S + s.
//   I (argmax): int32 [N, T, H, W] contiguous: the FIRST channel reaching the max (NaN counts as the
//     max, the first NaN wins, like torch.max).
//   w: the K^3 taps of input map ch at w32[ch*K^3 + (dt*K + dh)*K + dw] (the [1,2,K,K,K] layout);
//   R = K/2; the conv is a cross-correlation with zero padding:
//     L[p] = b + sum_{ch, o} w[ch, o] * P[ch, p + o - R]          (o = (dt, dh, dw) in [0, K)^3)
//
// Forward (2 kernels; x-sized traffic: read x, read x, write out = 3 passes)
//   1. channel_reduce_*_kernel<POOL>: per position, mean/max/argmax over C -> P, I. Reads x once.
//   2. attend_kernel: one block per (sample, tile of positions[, channel chunk]). Loads P on the tile
//      plus a halo of R into shared memory (zero outside the volume), computes L for the tile (4
//      consecutive w per thread, register reuse along w), sigmoid -> A (written by chunk 0), then
//      out = x * A over the block's channels (reads x, writes out).
// Backward (3 kernels; x-sized traffic: read g, x; read g, write gx = 4 passes)
//   3. channel_reduce_*_kernel<DOT>: gA = sum_c g*x per position; gL = gA * A * (1 - A).
//   4. input_grad_kernel: per tile, gL with halo in shared memory;
//        gP[ch, q] = sum_o w[ch, o] * gL[q - o + R]                  (transposed conv)
//        gx[c]     = g[c] * A + gP[0]/C + gP[1] * [c == I]          (reads g, writes gx)
//      and (chunk-0 blocks only) one row of per-tile partial sums
//        gw[ch, o] = sum_{q in tile} P[ch, q] * gL[q - o + R],   gb = sum_{q in tile} gL[q].
//   5. sum_partials_kernel: sums the partial rows over tiles in a fixed order (deterministic: no
//      float atomics anywhere).
//
// Layouts. Two thread mappings, each correct for ANY strides (only speed depends on the layout):
//   PM ("position-major"; contiguous NCTHW and generic strides): consecutive threads own consecutive
//      w positions and loop over channels, so a warp reads a contiguous row of one channel. Where all
//      tensors allow it, a thread owns VEC consecutive w and moves them with one vector access.
//   CL (channels_last_3d): a group of G lanes owns one position and its lanes split the channels
//      (VEC consecutive channels per vector access), so a group reads a contiguous run of channels.
//   out / gx are allocated contiguous, or channels_last_3d when x is channels_last_3d (and not also
//   contiguous); any other x layout gets contiguous out / gx (the documented generic path).
//
// dtypes: float32, float16, bfloat16 (all arithmetic in fp32; the saved P / A are float32, their
// accumulation type: docs/design.md §5). float64 is rejected with a clear error: these kernels are
// float-only, and float64 must stay float64 end to end (it runs on the CPU kernels or eager).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>

#include "st_attention.h"

namespace meranet {
namespace {

// ----------------------------------------------------------------------------------------------
// Small shared pieces
// ----------------------------------------------------------------------------------------------
struct Strides {  // element strides of a 5-D [N, C, T, H, W] tensor
  int64_t n, c, t, h, w;
};

Strides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

struct Shape {
  int64_t N, C, T, H, W, S;  // S = T*H*W
};

// Tile of positions handled by one block of kernels 2 and 4, and its halo in shared memory.
struct TileGeom {
  int tt, th, tw;      // tile extent along T, H, W (tw is a multiple of the PM vector width)
  int twp;             // tw rounded up to a multiple of 4 (the conv computes strips of 4 along w)
  int ht, hh, hw;      // halo tile extent: tt + 2R, th + 2R, round_up(twp + 2R, 4)
  int64_t nt, nh, nw;  // number of tiles along T, H, W
};

constexpr int kEmptyIndex = INT_MAX;  // "no channel seen yet" in a max/argmax accumulator
constexpr int kReduceLanes = 32;      // PM reduce kernel: blockDim.x (positions or vectors of them)
constexpr int kMaxSlices = 8;         // PM reduce kernel: at most this many channel slices (blockDim.y)
constexpr int kClThreads = 256;       // CL kernels: threads per block
constexpr int kTilePositions = 512;   // kernels 2 / 4: target positions per tile
constexpr int64_t kSmemLimit = 48 * 1024;  // dynamic shared memory without opting in

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int round_up_int(int a, int b) { return (a + b - 1) / b * b; }
int next_pow2(int64_t v) {
  int p = 1;
  while (p < v && p < 32) p <<= 1;
  return p;
}

// VEC consecutive elements moved as one aligned access (8, 16, 32, 64 or 128 bits).
template <typename T, int N>
struct alignas(sizeof(T) * N) VecT {
  T val[N];
};

template <typename scalar_t, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* p, float (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = static_cast<float>(*p);
  } else {
    const VecT<scalar_t, VEC> v = *reinterpret_cast<const VecT<scalar_t, VEC>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = static_cast<float>(v.val[i]);
  }
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void store_vec(scalar_t* p, const float (&in)[VEC]) {
  if constexpr (VEC == 1) {
    *p = static_cast<scalar_t>(in[0]);
  } else {
    VecT<scalar_t, VEC> v;
#pragma unroll
    for (int i = 0; i < VEC; ++i) v.val[i] = static_cast<scalar_t>(in[i]);
    *reinterpret_cast<VecT<scalar_t, VEC>*>(p) = v;
  }
}

// Whether candidate (bv, bi) replaces the running max (av, ai). A total order on (value, index):
// NaN above everything, larger value first, smaller channel index on ties; kEmptyIndex = nothing.
// It is symmetric, so any combination order gives the same (value, first index).
__device__ __forceinline__ bool takes_over(float bv, int bi, float av, int ai) {
  if (bi == kEmptyIndex) return false;
  if (ai == kEmptyIndex) return true;
  const bool bnan = bv != bv;
  const bool anan = av != av;
  if (bnan || anan) return bnan && (!anan || bi < ai);
  return bv > av || (bv == av && bi < ai);
}

// 1 / (1 + e^-v). __fdividef (reciprocal + multiply, <= 2 ulp) instead of an IEEE division, whose
// slow path is a subroutine call; for v < -87 the denominator overflows and the result is 0.
__device__ __forceinline__ float sigmoidf(float v) { return __fdividef(1.0f, 1.0f + expf(-v)); }

// a / b for non-negative a, b > 0: 32-bit division when both fit (the common case), else 64-bit
// (a subroutine call).
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// (t, h, w) of flat position s = (t*H + h)*W + w.
__device__ __forceinline__ void unflatten_position(int64_t s, int64_t H, int64_t W, int64_t& t, int64_t& h,
                                                   int64_t& w) {
  const int64_t th = div_nonneg(s, W);
  w = s - th * W;
  t = div_nonneg(th, H);
  h = th - t * H;
}

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
    arg[i] = kEmptyIndex;
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
            if (takes_over(va[u][i], cc, best[i], arg[i])) {
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
          if (takes_over(va[i], static_cast<int>(c), best[i], arg[i])) {
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
        if (takes_over(v, ai, best[i], arg[i])) {
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
    int arg = kEmptyIndex;
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
            if (takes_over(va[i], static_cast<int>(c + i), best, arg)) {
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
        if (takes_over(ob, oa, best, arg)) {
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

// ----------------------------------------------------------------------------------------------
// Tiles (kernels 2 and 4)
//   blockIdx.x = ((n*nt + it)*nh + ih)*nw + iw; tile origin (t0, h0, w0) = (it*tt, ih*th, iw*tw).
//   blockIdx.y = channel chunk: channels [blockIdx.y*chunk, min(C, (blockIdx.y+1)*chunk)).
//   Shared halo tile: local (ut, uh, uw) <-> global (t0 - R + ut, h0 - R + uh, w0 - R + uw),
//   zero outside the volume; extent ht x hh x hw (hw padded so 16-byte rows stay aligned).
//   Per-position tile arrays: local (tl, hl, wl) at (tl*th + hl)*twp + wl.
// ----------------------------------------------------------------------------------------------
struct TileOrigin {
  int64_t n, t0, h0, w0;
};

// 32-bit arithmetic: the host checks that the tile count fits in int32 (a 64-bit division would be a
// subroutine call, and the registers live across it would be spilled).
__device__ __forceinline__ TileOrigin tile_origin(const TileGeom& tg) {
  uint32_t bidx = blockIdx.x;
  const uint32_t nw = static_cast<uint32_t>(tg.nw);
  const uint32_t nh = static_cast<uint32_t>(tg.nh);
  const uint32_t nt = static_cast<uint32_t>(tg.nt);
  const uint32_t iw = bidx % nw;
  bidx /= nw;
  const uint32_t ih = bidx % nh;
  bidx /= nh;
  const uint32_t it = bidx % nt;
  const uint32_t n = bidx / nt;
  return {static_cast<int64_t>(n), static_cast<int64_t>(it) * tg.tt, static_cast<int64_t>(ih) * tg.th,
          static_cast<int64_t>(iw) * tg.tw};
}

// Shared-memory layout offsets (in 4-byte words), each rounded up to 4 words (16 bytes).
__host__ __device__ inline int align4(int v) { return (v + 3) & ~3; }

// Copies maps (contiguous float [maps][T][H][W] of sample n; map m at base + m*S) on the halo tile
// into halo_s[m][ht][hh][hw], zero outside the volume.
__device__ __forceinline__ void load_halo(float* halo_s, const float* base, int maps, const Shape& shape,
                                          const TileGeom& tg, const TileOrigin& o, int R) {
  const int count = maps * tg.ht * tg.hh * tg.hw;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    int u = i;
    const int uw = u % tg.hw;
    u /= tg.hw;
    const int uh = u % tg.hh;
    u /= tg.hh;
    const int ut = u % tg.ht;
    const int m = u / tg.ht;
    const int64_t gt = o.t0 - R + ut;
    const int64_t gh = o.h0 - R + uh;
    const int64_t gw = o.w0 - R + uw;
    float v = 0.f;
    if (gt >= 0 && gt < shape.T && gh >= 0 && gh < shape.H && gw >= 0 && gw < shape.W) {
      v = base[m * shape.S + (gt * shape.H + gh) * shape.W + gw];
    }
    halo_s[i] = v;
  }
}

// Reads NV4 float4 (>= K + 3 floats) of a 16-byte aligned shared-memory row into v.
template <int K>
struct RowWindow {
  static constexpr int kNv4 = (K + 3 + 3) / 4;
  float v[kNv4 * 4];
  __device__ __forceinline__ void load(const float* row) {
#pragma unroll
    for (int i = 0; i < kNv4; ++i) {
      const float4 f = reinterpret_cast<const float4*>(row)[i];
      v[4 * i + 0] = f.x;
      v[4 * i + 1] = f.y;
      v[4 * i + 2] = f.z;
      v[4 * i + 3] = f.w;
    }
  }
};

// ----------------------------------------------------------------------------------------------
// Kernel 2: conv + bias + sigmoid on a tile, then out = x * A for the block's channel chunk.
// Shared memory (words): w_s[2K^3] | halo_s[2][ht][hh][hw] (P) | a_s[tt*th*twp] (A).
// ----------------------------------------------------------------------------------------------
template <int K>
__host__ __device__ inline void attend_smem_layout(const TileGeom& tg, int* halo_off, int* a_off,
                                                   int* total) {
  *halo_off = align4(2 * K * K * K);
  *a_off = *halo_off + align4(2 * tg.ht * tg.hh * tg.hw);
  *total = *a_off + align4(tg.tt * tg.th * tg.twp);
}

// Launch bound: at least 2 blocks of 512 per SM (<= 64 registers). ptxas's own target for a 512-thread
// bound (40 registers) spills in the K = 7 position-major kernels (docs/design.md §3).
template <typename scalar_t, int K, int VEC, bool CL>
__global__ void __launch_bounds__(512, 2)
attend_kernel(const scalar_t* __restrict__ x, Strides sx, scalar_t* __restrict__ out, Strides so,
              const float* __restrict__ pooled, const float* __restrict__ w32,
              const float* __restrict__ b32, float* __restrict__ attn, Shape shape, TileGeom tg,
              int64_t chunk, int group) {
  constexpr int R = K / 2;
  constexpr int KKK = K * K * K;
  constexpr int kUnroll = VEC >= 8 ? 2 : 4;  // channels in flight per thread in the x-sized loop
  extern __shared__ float4 smem4[];  // float4: 16-byte aligned base
  float* smem = reinterpret_cast<float*>(smem4);
  int halo_off, a_off, total;
  attend_smem_layout<K>(tg, &halo_off, &a_off, &total);
  float* w_s = smem;
  float* halo_s = smem + halo_off;
  float* a_s = smem + a_off;

  const TileOrigin o = tile_origin(tg);
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;

  for (int i = tid; i < 2 * KKK; i += nthreads) w_s[i] = w32[i];
  load_halo(halo_s, pooled + o.n * 2 * shape.S, 2, shape, tg, o, R);
  __syncthreads();

  // Conv: strip j = 4 consecutive outputs (tl, hl, wl0 .. wl0+3), wl0 = 4*(j % twq).
  // Output wl0+jj at tap (dt, dh, dw) of map ch reads halo (tl+dt, hl+dh, wl0+jj+dw), i.e. global
  // (t0+tl) + dt - R etc.: exactly P[p + o - R]. The row window v[i] = halo(.., .., wl0+i).
  const float bias = b32 != nullptr ? b32[0] : 0.f;
  const int twq = tg.twp / 4;
  const int strips = tg.tt * tg.th * twq;
  for (int j = tid; j < strips; j += nthreads) {
    const int wl0 = (j % twq) * 4;
    const int rr = j / twq;
    const int hl = rr % tg.th;
    const int tl = rr / tg.th;
    float acc[4] = {bias, bias, bias, bias};
    for (int ch = 0; ch < 2; ++ch) {
#pragma unroll 1
      for (int dt = 0; dt < K; ++dt) {
#pragma unroll
        for (int dh = 0; dh < K; ++dh) {
          RowWindow<K> row;
          row.load(halo_s + ((ch * tg.ht + tl + dt) * tg.hh + hl + dh) * tg.hw + wl0);
          const float* wrow = w_s + ((ch * K + dt) * K + dh) * K;
#pragma unroll
          for (int dw = 0; dw < K; ++dw) {
            const float wv = wrow[dw];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) acc[jj] = fmaf(wv, row.v[jj + dw], acc[jj]);
          }
        }
      }
    }
    const int64_t gt = o.t0 + tl;
    const int64_t gh = o.h0 + hl;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int wl = wl0 + jj;
      if (wl >= tg.tw) continue;
      const float A = sigmoidf(acc[jj]);
      a_s[(tl * tg.th + hl) * tg.twp + wl] = A;
      const int64_t gw = o.w0 + wl;
      if (blockIdx.y == 0 && gt < shape.T && gh < shape.H && gw < shape.W) {
        attn[o.n * shape.S + (gt * shape.H + gh) * shape.W + gw] = A;
      }
    }
  }
  __syncthreads();

  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t c_end = std::min<int64_t>(shape.C, c_begin + chunk);
  if constexpr (!CL) {
    // PM: thread -> (vector pv of VEC consecutive w, channel group cg); nthreads = pvs * cgs.
    const int twv = tg.tw / VEC;
    const int pvs = tg.tt * tg.th * twv;
    const int pv = tid % pvs;
    const int cg = tid / pvs;
    const int cgs = nthreads / pvs;
    const int wl = (pv % twv) * VEC;
    const int rr = pv / twv;
    const int hl = rr % tg.th;
    const int tl = rr / tg.th;
    const int64_t gt = o.t0 + tl, gh = o.h0 + hl, gw = o.w0 + wl;
    // gw % VEC == 0 and W % VEC == 0: the vector is either wholly inside or wholly outside.
    if (gt >= shape.T || gh >= shape.H || gw >= shape.W) return;
    float A[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) A[i] = a_s[(tl * tg.th + hl) * tg.twp + wl + i];
    const scalar_t* px = x + o.n * sx.n + gt * sx.t + gh * sx.h + gw * sx.w;
    scalar_t* po = out + o.n * so.n + gt * so.t + gh * so.h + gw * so.w;
    // kUnroll channels per step, all loads issued before the first store.
    int64_t c = c_begin + cg;
    for (; c + (kUnroll - 1) * cgs < c_end; c += kUnroll * cgs) {
      float v[kUnroll][VEC];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) load_vec<scalar_t, VEC>(px + (c + u * cgs) * sx.c, v[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[u][i] *= A[i];
        store_vec<scalar_t, VEC>(po + (c + u * cgs) * so.c, v[u]);
      }
    }
    for (; c < c_end; c += cgs) {
      float v[VEC];
      load_vec<scalar_t, VEC>(px + c * sx.c, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] *= A[i];
      store_vec<scalar_t, VEC>(po + c * so.c, v);
    }
  } else {
    // CL: group gi of G lanes -> tile positions p = gi, gi + groups, ...; lane -> channel vectors.
    const int G = group;
    const int lane = tid & (G - 1);
    const int groups = nthreads / G;
    const int positions = tg.tt * tg.th * tg.tw;
    for (int p = tid / G; p < positions; p += groups) {
      const int wl = p % tg.tw;
      const int rr = p / tg.tw;
      const int hl = rr % tg.th;
      const int tl = rr / tg.th;
      const int64_t gt = o.t0 + tl, gh = o.h0 + hl, gw = o.w0 + wl;
      if (gt >= shape.T || gh >= shape.H || gw >= shape.W) continue;
      const float A = a_s[(tl * tg.th + hl) * tg.twp + wl];
      const scalar_t* px = x + o.n * sx.n + gt * sx.t + gh * sx.h + gw * sx.w;
      scalar_t* po = out + o.n * so.n + gt * so.t + gh * so.h + gw * so.w;
#pragma unroll 2
      for (int64_t c = c_begin + lane * VEC; c < c_end; c += G * VEC) {
        float v[VEC];
        load_vec<scalar_t, VEC>(px + c * sx.c, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] *= A;
        store_vec<scalar_t, VEC>(po + c * so.c, v);
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Kernel 4: transposed conv of gL on a tile, gw/gb partial sums (chunk 0), gx for the chunk.
// Shared memory (words): w_s[2K^3] | halo_s[ht][hh][hw] (gL) | p_s[2][pt] (P on the tile, 0 outside)
//   | a_s[pt] (A) | m_s[pt] (gP0 / C) | x_s[pt] (gP1) | i_s[pt] (I, int) | red_s[red_items*K]
//   with pt = tt*th*twp and red_items = max(nthreads, 2K^2).
// ----------------------------------------------------------------------------------------------
template <int K>
__host__ __device__ inline void grad_smem_layout(const TileGeom& tg, int nthreads, int* halo_off,
                                                 int* p_off, int* red_off, int* total) {
  const int pt = align4(tg.tt * tg.th * tg.twp);
  *halo_off = align4(2 * K * K * K);
  *p_off = *halo_off + align4(tg.ht * tg.hh * tg.hw);
  *red_off = *p_off + 6 * pt;  // p_s (2 maps), a_s, m_s, x_s, i_s
  const int red_items = nthreads > 2 * K * K ? nthreads : 2 * K * K;
  *total = *red_off + align4(red_items * K);
}

template <typename scalar_t, int K, int VEC, bool CL>
__global__ void __launch_bounds__(512)
input_grad_kernel(const scalar_t* __restrict__ g, Strides sg, scalar_t* __restrict__ gx, Strides sgx,
                  const float* __restrict__ gl, const float* __restrict__ attn,
                  const float* __restrict__ pooled, const int* __restrict__ argmax,
                  const float* __restrict__ w32, float* __restrict__ partial, Shape shape, TileGeom tg,
                  int64_t chunk, int group, float inv_c) {
  constexpr int R = K / 2;
  constexpr int KKK = K * K * K;
  constexpr int kUnroll = VEC >= 8 ? 2 : 4;  // channels in flight per thread in the x-sized loop
  constexpr int kRow = 2 * KKK + 1;  // partial row: gw (2K^3, weight layout) then gb
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  int halo_off, p_off, red_off, total;
  grad_smem_layout<K>(tg, nthreads, &halo_off, &p_off, &red_off, &total);
  const int pt = align4(tg.tt * tg.th * tg.twp);
  float* w_s = smem;
  float* halo_s = smem + halo_off;
  float* p_s = smem + p_off;  // map 0 at p_s, map 1 at p_s + pt
  float* a_s = p_s + 2 * pt;
  float* m_s = a_s + pt;
  float* x_s = m_s + pt;
  int* i_s = reinterpret_cast<int*>(x_s + pt);
  float* red_s = smem + red_off;

  const TileOrigin o = tile_origin(tg);
  const bool chunk0 = blockIdx.y == 0;

  for (int i = tid; i < 2 * KKK; i += nthreads) w_s[i] = w32[i];
  load_halo(halo_s, gl + o.n * shape.S, 1, shape, tg, o, R);
  for (int i = tid; i < tg.tt * tg.th * tg.twp; i += nthreads) {
    const int wl = i % tg.twp;
    const int rr = i / tg.twp;
    const int hl = rr % tg.th;
    const int tl = rr / tg.th;
    const int64_t gt = o.t0 + tl, gh = o.h0 + hl, gw = o.w0 + wl;
    const bool in = wl < tg.tw && gt < shape.T && gh < shape.H && gw < shape.W;
    const int64_t s = (gt * shape.H + gh) * shape.W + gw;
    p_s[i] = in ? pooled[(2 * o.n) * shape.S + s] : 0.f;
    p_s[pt + i] = in ? pooled[(2 * o.n + 1) * shape.S + s] : 0.f;
    a_s[i] = in ? attn[o.n * shape.S + s] : 0.f;
    i_s[i] = in ? argmax[o.n * shape.S + s] : -1;
  }
  __syncthreads();

  // Transposed conv: gP[ch, q] = sum_o w[ch, o] gL[q - o + R]; gL at q - o + R is halo local
  // ql + 2R - o per dim. Loop d = 2R - o = K-1-o: halo ql + d with weight w[ch, K-1-d]. Strips of
  // 4 consecutive outputs along w as in kernel 2 (row window v[i] = halo(.., .., wl0 + i)).
  const int twq = tg.twp / 4;
  const int strips = tg.tt * tg.th * twq;
  for (int j = tid; j < strips; j += nthreads) {
    const int wl0 = (j % twq) * 4;
    const int rr = j / twq;
    const int hl = rr % tg.th;
    const int tl = rr / tg.th;
    float acc0[4] = {0.f, 0.f, 0.f, 0.f};
    float acc1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int dt = 0; dt < K; ++dt) {
#pragma unroll
      for (int dh = 0; dh < K; ++dh) {
        RowWindow<K> row;
        row.load(halo_s + ((tl + dt) * tg.hh + hl + dh) * tg.hw + wl0);
        const float* w0row = w_s + ((K - 1 - dt) * K + (K - 1 - dh)) * K;  // map 0, flipped dt, dh
        const float* w1row = w0row + KKK;                                   // map 1
#pragma unroll
        for (int dw = 0; dw < K; ++dw) {
          const float wv0 = w0row[K - 1 - dw];
          const float wv1 = w1row[K - 1 - dw];
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) {
            acc0[jj] = fmaf(wv0, row.v[jj + dw], acc0[jj]);
            acc1[jj] = fmaf(wv1, row.v[jj + dw], acc1[jj]);
          }
        }
      }
    }
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int wl = wl0 + jj;
      if (wl >= tg.tw) continue;
      m_s[(tl * tg.th + hl) * tg.twp + wl] = acc0[jj] * inv_c;
      x_s[(tl * tg.th + hl) * tg.twp + wl] = acc1[jj];
    }
  }

  if (chunk0) {  // block-uniform branch: its __syncthreads is reached by the whole block
    // gw[ch, dt, dh, dw] (this tile) = sum_{q in tile} P[ch, q] * gL[q - o + R]
    //   = sum over rows (tl, hl) and wl of p_s[ch](tl, hl, wl) * halo(tl+2R-dt, hl+2R-dh, wl+2R-dw).
    // Item = (job = (ch, dt, dh), row group rg): rows rr = rg, rg + groups, ... of the tile; along
    // wl a sliding window win[jx] = halo(.., .., wl + jx), jx in [0, K): tap dw = K-1-jx.
    const int jobs = 2 * K * K;
    const int row_groups = std::max(1, nthreads / jobs);
    const int items = jobs * row_groups;
    const int rows = tg.tt * tg.th;
    for (int item = tid; item < items; item += nthreads) {
      const int job = item / row_groups;
      const int rg = item % row_groups;
      const int ch = job / (K * K);
      const int dt = (job / K) % K;
      const int dh = job % K;
      float acc[K];
#pragma unroll
      for (int i = 0; i < K; ++i) acc[i] = 0.f;
      const float* pmap = p_s + ch * pt;
      for (int rr = rg; rr < rows; rr += row_groups) {
        const int hl = rr % tg.th;
        const int tl = rr / tg.th;
        const float* hrow = halo_s + ((tl + 2 * R - dt) * tg.hh + hl + 2 * R - dh) * tg.hw;
        const float* prow = pmap + (tl * tg.th + hl) * tg.twp;
        float win[K];
#pragma unroll
        for (int i = 0; i < K - 1; ++i) win[i] = hrow[i];
        for (int wl = 0; wl < tg.tw; ++wl) {
          win[K - 1] = hrow[wl + K - 1];
          const float pv = prow[wl];
#pragma unroll
          for (int jx = 0; jx < K; ++jx) acc[K - 1 - jx] = fmaf(pv, win[jx], acc[K - 1 - jx]);
#pragma unroll
          for (int i = 0; i < K - 1; ++i) win[i] = win[i + 1];
        }
      }
#pragma unroll
      for (int dw = 0; dw < K; ++dw) red_s[item * K + dw] = acc[dw];
    }
    __syncthreads();
    float* prow_out = partial + static_cast<int64_t>(blockIdx.x) * kRow;
    // Tap index o2 = ((ch*K + dt)*K + dh)*K + dw = job*K + dw: the weight layout.
    for (int o2 = tid; o2 < 2 * KKK; o2 += nthreads) {
      const int job = o2 / K;
      const int dw = o2 % K;
      float s = 0.f;
      for (int rg = 0; rg < row_groups; ++rg) s += red_s[(job * row_groups + rg) * K + dw];
      prow_out[o2] = s;
    }
    if (tid < 32) {  // gb: warp 0 sums gL over the tile's positions inside the volume
      float s = 0.f;
      const int positions = tg.tt * tg.th * tg.tw;
      for (int p = tid; p < positions; p += 32) {
        const int wl = p % tg.tw;
        const int rr = p / tg.tw;
        const int hl = rr % tg.th;
        const int tl = rr / tg.th;
        // halo is zero outside the volume, so no bounds test is needed: gL(q) = halo(q_l + R)
        s += halo_s[((tl + R) * tg.hh + hl + R) * tg.hw + wl + R];
      }
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (tid == 0) prow_out[2 * KKK] = s;
    }
  }
  __syncthreads();  // m_s, x_s complete

  // gx[c] = g[c] * A + gP0 / C + gP1 * [c == I]
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t c_end = std::min<int64_t>(shape.C, c_begin + chunk);
  if constexpr (!CL) {
    const int twv = tg.tw / VEC;
    const int pvs = tg.tt * tg.th * twv;
    const int pv = tid % pvs;
    const int cg = tid / pvs;
    const int cgs = nthreads / pvs;
    const int wl = (pv % twv) * VEC;
    const int rr = pv / twv;
    const int hl = rr % tg.th;
    const int tl = rr / tg.th;
    const int64_t gt = o.t0 + tl, gh = o.h0 + hl, gw = o.w0 + wl;
    if (gt >= shape.T || gh >= shape.H || gw >= shape.W) return;
    // gP1 (x_s) is read from shared memory only at the argmax channel: VEC registers fewer in the loops
    // below, which the VEC = 8 kernels need to stay within 64 registers without spilling (docs/design.md §3).
    const int l0 = (tl * tg.th + hl) * tg.twp + wl;
    float A[VEC], M[VEC];
    int I[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      A[i] = a_s[l0 + i];
      M[i] = m_s[l0 + i];
      I[i] = i_s[l0 + i];
    }
    const scalar_t* pg = g + o.n * sg.n + gt * sg.t + gh * sg.h + gw * sg.w;
    scalar_t* pgx = gx + o.n * sgx.n + gt * sgx.t + gh * sgx.h + gw * sgx.w;
    int64_t c = c_begin + cg;
    for (; c + (kUnroll - 1) * cgs < c_end; c += kUnroll * cgs) {
      float v[kUnroll][VEC];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) load_vec<scalar_t, VEC>(pg + (c + u * cgs) * sg.c, v[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t cc = c + u * cgs;
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[u][i] = fmaf(v[u][i], A[i], M[i]) + (cc == I[i] ? x_s[l0 + i] : 0.f);
        store_vec<scalar_t, VEC>(pgx + cc * sgx.c, v[u]);
      }
    }
    for (; c < c_end; c += cgs) {
      float v[VEC];
      load_vec<scalar_t, VEC>(pg + c * sg.c, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[i] = fmaf(v[i], A[i], M[i]) + (c == I[i] ? x_s[l0 + i] : 0.f);
      store_vec<scalar_t, VEC>(pgx + c * sgx.c, v);
    }
  } else {
    const int G = group;
    const int lane = tid & (G - 1);
    const int groups = nthreads / G;
    const int positions = tg.tt * tg.th * tg.tw;
    for (int p = tid / G; p < positions; p += groups) {
      const int wl = p % tg.tw;
      const int rr = p / tg.tw;
      const int hl = rr % tg.th;
      const int tl = rr / tg.th;
      const int64_t gt = o.t0 + tl, gh = o.h0 + hl, gw = o.w0 + wl;
      if (gt >= shape.T || gh >= shape.H || gw >= shape.W) continue;
      const int l = (tl * tg.th + hl) * tg.twp + wl;
      const float A = a_s[l], M = m_s[l], X = x_s[l];
      const int64_t I = i_s[l];
      const scalar_t* pg = g + o.n * sg.n + gt * sg.t + gh * sg.h + gw * sg.w;
      scalar_t* pgx = gx + o.n * sgx.n + gt * sgx.t + gh * sgx.h + gw * sgx.w;
#pragma unroll 2
      for (int64_t c = c_begin + lane * VEC; c < c_end; c += G * VEC) {
        float v[VEC];
        load_vec<scalar_t, VEC>(pg + c * sg.c, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = fmaf(v[i], A, M) + (c + i == I ? X : 0.f);
        store_vec<scalar_t, VEC>(pgx + c * sgx.c, v);
      }
    }
  }
}

// Kernel 5: out[col] = sum over rows r = 0 .. rows-1 of partial[r*cols + col], in a fixed order
// (thread i sums rows i, i+256, ...; then a fixed shared-memory tree). One block per column.
constexpr int kSumThreads = 256;
__global__ void __launch_bounds__(kSumThreads)
sum_partials_kernel(const float* __restrict__ partial, int64_t rows, int cols, float* __restrict__ out) {
  __shared__ float sh[kSumThreads];
  const int col = blockIdx.x;
  float s = 0.f;
  for (int64_t r = threadIdx.x; r < rows; r += kSumThreads) s += partial[r * cols + col];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int off = kSumThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) sh[threadIdx.x] += sh[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[col] = sh[0];
}

// ----------------------------------------------------------------------------------------------
// Host side
// ----------------------------------------------------------------------------------------------

// Layout of out / grad_x: channels_last_3d when x is (and is not also plain contiguous), else
// contiguous. The CL thread mapping is used exactly when this is channels_last_3d.
at::MemoryFormat output_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    return at::MemoryFormat::ChannelsLast3d;
  }
  return at::MemoryFormat::Contiguous;
}

bool aligned_to(const at::Tensor& t, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % static_cast<uintptr_t>(bytes) == 0;
}

// Whether VEC consecutive w positions of t can move as one aligned access (PM mapping).
bool pm_vec_ok(const at::Tensor& t, int vec) {
  if (vec == 1) return true;
  if (t.size(4) % vec != 0 || t.stride(4) != 1) return false;
  for (int d = 0; d < 4; ++d) {
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  }
  return aligned_to(t, vec * t.element_size());
}

// Whether VEC consecutive channels of t can move as one aligned access (CL mapping).
bool cl_vec_ok(const at::Tensor& t, int vec) {
  if (vec == 1) return true;
  if (t.size(1) % vec != 0 || t.stride(1) != 1) return false;
  for (int d : {0, 2, 3, 4}) {
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  }
  return aligned_to(t, vec * t.element_size());
}

// Largest power-of-two vector width <= 16 bytes that every tensor allows.
int choose_vec(std::initializer_list<const at::Tensor*> ts, bool cl) {
  int vec = static_cast<int>(16 / (*ts.begin())->element_size());
  for (; vec > 1; vec /= 2) {
    bool ok = true;
    for (const at::Tensor* t : ts) ok = ok && (cl ? cl_vec_ok(*t, vec) : pm_vec_ok(*t, vec));
    if (ok) break;
  }
  return vec;
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

TileGeom make_geom(const Shape& sh, int K, int tt, int th, int tw) {
  const int R = K / 2;
  TileGeom tg;
  tg.tt = tt;
  tg.th = th;
  tg.tw = tw;
  tg.twp = round_up_int(tw, 4);
  tg.ht = tt + 2 * R;
  tg.hh = th + 2 * R;
  tg.hw = round_up_int(tg.twp + 2 * R, 4);
  tg.nt = ceil_div(sh.T, tt);
  tg.nh = ceil_div(sh.H, th);
  tg.nw = ceil_div(sh.W, tw);
  return tg;
}

// Threads of a kernel-2/4 block: PM -> one thread per (vector, channel group), about 256 or more;
// CL -> 256.
int tile_threads(const TileGeom& tg, int vec, bool cl) {
  if (cl) return kClThreads;
  const int pvs = tg.tt * tg.th * (tg.tw / vec);
  return pvs * std::max(1, 256 / pvs);
}

template <int K>
int64_t tile_smem_bytes(const TileGeom& tg, int threads, bool backward) {
  int a, b, c, total;
  if (backward) {
    grad_smem_layout<K>(tg, threads, &a, &b, &c, &total);
  } else {
    attend_smem_layout<K>(tg, &a, &b, &total);
  }
  return static_cast<int64_t>(total) * 4;
}

// Tile of about kTilePositions positions: w first (whole rows up to 32, else W split evenly into
// pieces of <= 32 rounded up to the PM vector width), then about 2 frames of h, then t, then h
// again when T ran out. Halved (t, then h, then w) until the shared memory fits in 48 KB.
template <int K>
TileGeom choose_tile(const Shape& sh, int pm_vec, bool cl, bool backward) {
  int tw = static_cast<int>(sh.W <= 32 ? sh.W : ceil_div(sh.W, ceil_div(sh.W, 32)));
  tw = std::min<int>(round_up_int(tw, pm_vec), static_cast<int>(sh.W));  // W % pm_vec == 0
  int th = static_cast<int>(std::min<int64_t>(sh.H, std::max(1, kTilePositions / (2 * tw))));
  int tt = static_cast<int>(std::min<int64_t>(sh.T, std::max(1, kTilePositions / (tw * th))));
  th = static_cast<int>(std::min<int64_t>(sh.H, std::max(1, kTilePositions / (tw * tt))));
  for (;;) {
    const TileGeom tg = make_geom(sh, K, tt, th, tw);
    if (tile_smem_bytes<K>(tg, tile_threads(tg, pm_vec, cl), backward) <= kSmemLimit) return tg;
    if (tt > 1) {
      tt = (tt + 1) / 2;
    } else if (th > 1) {
      th = (th + 1) / 2;
    } else if (tw > pm_vec) {
      tw = round_up_int((tw + 1) / 2, pm_vec);
    } else {
      TORCH_CHECK(false, "st_attention (CUDA): internal error, no tile fits in shared memory");
    }
  }
}

// Channel chunks (grid.y): when there are too few tiles to fill the GPU, split the channels so the
// grid has about 2 blocks per SM, keeping >= 16 channels (and a multiple of the CL vector) per chunk.
int64_t choose_chunk(const Shape& sh, int64_t tiles, int cl_vec) {
  const int64_t target = 2 * static_cast<int64_t>(sm_count());
  int64_t splits = tiles >= target ? 1 : ceil_div(target, tiles);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, sh.C / 16));
  int64_t chunk = ceil_div(sh.C, splits);
  chunk = ceil_div(chunk, cl_vec) * cl_vec;
  while (ceil_div(sh.C, chunk) > 65535) chunk *= 2;  // grid.y limit (unreachable in practice)
  return chunk;
}

Shape shape_of(const at::Tensor& x) {
  Shape s;
  s.N = x.size(0);
  s.C = x.size(1);
  s.T = x.size(2);
  s.H = x.size(3);
  s.W = x.size(4);
  s.S = s.T * s.H * s.W;
  return s;
}

void check_on_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, " (CUDA): ", name, " must be a CUDA tensor, got device ", t.device());
}

void check_cuda_dtype(const char* op, const at::Tensor& x) {
  const at::ScalarType st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op,
              " (CUDA): x must be float32, float16 or bfloat16, got ", st,
              " (the CUDA st_attention kernels compute in float32; float64 runs on backend 'cpp' or 'eager')");
}

// Calls f(std::integral_constant<int, V>{}, std::bool_constant<CL>{}) for the vector width and the
// mapping of a launch. CL kernels are built for V16 (16-byte vectors) and 1; PM kernels for every
// power of two up to V16 (W = 28 or 14 in fp16 still gets 8- or 4-byte vectors).
template <typename scalar_t, typename F>
void with_vec(int vec, bool cl, F&& f) {
  constexpr int V16 = static_cast<int>(16 / sizeof(scalar_t));
  if (cl) {
    if (vec == V16) {
      f(std::integral_constant<int, V16>{}, std::true_type{});
    } else {
      f(std::integral_constant<int, 1>{}, std::true_type{});
    }
    return;
  }
  switch (vec) {
    case 8:
      if constexpr (V16 >= 8) f(std::integral_constant<int, (V16 >= 8 ? 8 : 1)>{}, std::false_type{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{}, std::false_type{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{}, std::false_type{});
      break;
    default:
      f(std::integral_constant<int, 1>{}, std::false_type{});
  }
}

// Vector width of a launch over tensors ts: the widest every tensor allows; in CL mode only V16
// or 1 exist (an intermediate width is taken as 1).
template <typename scalar_t>
int launch_vec(std::initializer_list<const at::Tensor*> ts, bool cl) {
  constexpr int V16 = static_cast<int>(16 / sizeof(scalar_t));
  const int vec = choose_vec(ts, cl);
  return (cl && vec != V16) ? 1 : vec;
}

template <typename F>
void with_k(int64_t k, F&& f) {
  switch (k) {
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 7:
      f(std::integral_constant<int, 7>{});
      break;
    default:
      TORCH_CHECK(false, "st_attention (CUDA): weight kernel size k must be 3, 5 or 7, got ", k);
  }
}

// Kernels 1 / 3: POOL (DOT = false: a = x, b unused) or DOT (a = g, b = x).
template <typename scalar_t, bool DOT>
void launch_channel_reduce(const at::Tensor& a, const at::Tensor& b, const Shape& sh, bool cl,
                           float* out0, int* argmax, const float* attn, cudaStream_t stream) {
  const int vec = launch_vec<scalar_t>({&a, &b}, cl);
  const scalar_t* pa = a.data_ptr<scalar_t>();
  const scalar_t* pb = DOT ? b.data_ptr<scalar_t>() : nullptr;
  const Strides sa = strides_of(a), sb = strides_of(b);
  with_vec<scalar_t>(vec, cl, [&](auto vec_tag, auto cl_tag) {
    constexpr int V = decltype(vec_tag)::value;
    if constexpr (decltype(cl_tag)::value) {
      const int group = next_pow2(ceil_div(sh.C, V));
      const int groups = kClThreads / group;
      // grid-stride loop inside: any block count is correct
      const int64_t blocks = std::min<int64_t>(ceil_div(sh.N * sh.S, groups), int64_t{1} << 24);
      channel_reduce_cl_kernel<scalar_t, V, DOT><<<static_cast<unsigned>(blocks), kClThreads, 0, stream>>>(
          pa, sa, pb, sb, sh, group, out0, argmax, attn);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const int64_t bps = ceil_div(sh.S, static_cast<int64_t>(kReduceLanes) * V);
      const int64_t blocks = sh.N * bps;
      TORCH_CHECK(blocks <= INT_MAX, "st_attention (CUDA): tensor too large (", blocks, " blocks)");
      const dim3 block(kReduceLanes, static_cast<unsigned>(std::min<int64_t>(kMaxSlices, sh.C)));
      channel_reduce_pm_kernel<scalar_t, V, DOT><<<static_cast<unsigned>(blocks), block, 0, stream>>>(
          pa, sa, pb, sb, sh, bps, out0, argmax, attn);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// Launch plan of kernels 2 / 4.
struct TilePlan {
  TileGeom tg;
  int threads;
  int64_t smem;   // bytes of dynamic shared memory
  int64_t tiles;  // grid.x
  int64_t chunk;  // channels per grid.y block
  int64_t splits; // grid.y
  int group;      // CL: lanes per position
};

template <int K>
TilePlan plan_tiles(const Shape& sh, int vec, bool cl, bool backward) {
  TilePlan p;
  const int pm_vec = cl ? 1 : vec;
  p.tg = choose_tile<K>(sh, pm_vec, cl, backward);
  p.threads = tile_threads(p.tg, pm_vec, cl);
  p.smem = tile_smem_bytes<K>(p.tg, p.threads, backward);
  p.tiles = sh.N * p.tg.nt * p.tg.nh * p.tg.nw;
  TORCH_CHECK(p.tiles <= INT_MAX, "st_attention (CUDA): tensor too large (", p.tiles, " tiles)");
  p.chunk = choose_chunk(sh, p.tiles, cl ? vec : 1);
  p.splits = ceil_div(sh.C, p.chunk);
  p.group = cl ? next_pow2(ceil_div(p.chunk, vec)) : 1;
  return p;
}

template <typename scalar_t>
void st_attention_fwd_typed(const at::Tensor& x, const at::Tensor& out, const at::Tensor& w32,
                            const at::Tensor& b32, const at::Tensor& attn, const at::Tensor& pooled,
                            const at::Tensor& argmax, const Shape& sh, bool cl, int64_t k,
                            cudaStream_t stream) {
  // Kernel 1: P, I.
  launch_channel_reduce<scalar_t, false>(x, x, sh, cl, pooled.data_ptr<float>(), argmax.data_ptr<int>(),
                                         nullptr, stream);
  // Kernel 2: A, out.
  const int vec = launch_vec<scalar_t>({&x, &out}, cl);
  const float* bptr = b32.defined() ? b32.data_ptr<float>() : nullptr;
  with_k(k, [&](auto k_tag) {
    constexpr int K = decltype(k_tag)::value;
    const TilePlan p = plan_tiles<K>(sh, vec, cl, /*backward=*/false);
    const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(p.splits));
    with_vec<scalar_t>(vec, cl, [&](auto vec_tag, auto cl_tag) {
      constexpr int V = decltype(vec_tag)::value;
      constexpr bool CL = decltype(cl_tag)::value;
      attend_kernel<scalar_t, K, V, CL><<<grid, p.threads, p.smem, stream>>>(
          x.data_ptr<scalar_t>(), strides_of(x), out.data_ptr<scalar_t>(), strides_of(out),
          pooled.data_ptr<float>(), w32.data_ptr<float>(), bptr, attn.data_ptr<float>(), sh, p.tg,
          p.chunk, p.group);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

template <typename scalar_t>
void st_attention_bwd_typed(const at::Tensor& g, const at::Tensor& x, const at::Tensor& gx,
                            const at::Tensor& gl, const at::Tensor& attn, const at::Tensor& pooled,
                            const at::Tensor& argmax, const at::Tensor& w32, const at::Tensor& gwb,
                            const Shape& sh, bool cl, int64_t k, cudaStream_t stream) {
  // Kernel 3: gL.
  launch_channel_reduce<scalar_t, true>(g, x, sh, cl, gl.data_ptr<float>(), nullptr, attn.data_ptr<float>(),
                                        stream);
  // Kernel 4: gx and per-tile gw/gb partials; kernel 5: their fixed-order sum into gwb.
  const int vec = launch_vec<scalar_t>({&g, &gx}, cl);
  with_k(k, [&](auto k_tag) {
    constexpr int K = decltype(k_tag)::value;
    constexpr int kRow = 2 * K * K * K + 1;
    const TilePlan p = plan_tiles<K>(sh, vec, cl, /*backward=*/true);
    const at::Tensor partial = at::empty({p.tiles, kRow}, gl.options());
    const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(p.splits));
    with_vec<scalar_t>(vec, cl, [&](auto vec_tag, auto cl_tag) {
      constexpr int V = decltype(vec_tag)::value;
      constexpr bool CL = decltype(cl_tag)::value;
      input_grad_kernel<scalar_t, K, V, CL><<<grid, p.threads, p.smem, stream>>>(
          g.data_ptr<scalar_t>(), strides_of(g), gx.data_ptr<scalar_t>(), strides_of(gx),
          gl.data_ptr<float>(), attn.data_ptr<float>(), pooled.data_ptr<float>(), argmax.data_ptr<int>(),
          w32.data_ptr<float>(), partial.data_ptr<float>(), sh, p.tg, p.chunk, p.group,
          1.0f / static_cast<float>(sh.C));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    sum_partials_kernel<<<kRow, kSumThreads, 0, stream>>>(partial.data_ptr<float>(), p.tiles, kRow,
                                                          gwb.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

StAttentionForward st_attention_fwd_cuda(const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias) {
  check_st_attention_forward_inputs(x, weight, bias);
  const bool has_bias = bias.has_value() && bias->defined();
  check_cuda_dtype("st_attention_fwd", x);
  check_on_cuda("st_attention_fwd", "x", x);
  check_on_cuda("st_attention_fwd", "weight", weight);
  if (has_bias) check_on_cuda("st_attention_fwd", "bias", *bias);
  const at::cuda::OptionalCUDAGuard device_guard(at::device_of(x));

  const Shape sh = shape_of(x);
  // C fits the int32 argmax: check_st_attention_forward_inputs.
  const at::MemoryFormat mf = output_format(x);
  const bool cl = mf == at::MemoryFormat::ChannelsLast3d;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(mf));
  const auto f32 = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor attn = at::empty({sh.N, 1, sh.T, sh.H, sh.W}, f32);
  at::Tensor pooled = at::empty({sh.N, 2, sh.T, sh.H, sh.W}, f32);
  at::Tensor argmax = at::empty({sh.N, sh.T, sh.H, sh.W}, f32.dtype(at::kInt));
  if (x.numel() == 0) return {out, attn, pooled, argmax};

  const at::Tensor w32 = weight.to(at::kFloat).contiguous();
  const at::Tensor b32 = has_bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t k = weight.size(2);
  AT_DISPATCH_SWITCH(
      x.scalar_type(), "st_attention_fwd_cuda",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        st_attention_fwd_typed<scalar_t>(x, out, w32, b32, attn, pooled, argmax, sh, cl, k, stream);
      }) AT_DISPATCH_CASE(at::kHalf, [&] {
        st_attention_fwd_typed<scalar_t>(x, out, w32, b32, attn, pooled, argmax, sh, cl, k, stream);
      }) AT_DISPATCH_CASE(at::kBFloat16, [&] {
        st_attention_fwd_typed<scalar_t>(x, out, w32, b32, attn, pooled, argmax, sh, cl, k, stream);
      }));
  return {out, attn, pooled, argmax};
}

StAttentionBackward st_attention_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                          const at::Tensor& weight, const at::Tensor& attn,
                                          const at::Tensor& pooled, const at::Tensor& argmax) {
  check_st_attention_backward_inputs(grad_out, x, weight, attn, pooled, argmax);
  check_cuda_dtype("st_attention_bwd", x);
  check_on_cuda("st_attention_bwd", "x", x);
  check_on_cuda("st_attention_bwd", "grad_out", grad_out);
  check_on_cuda("st_attention_bwd", "weight", weight);
  const at::cuda::OptionalCUDAGuard device_guard(at::device_of(x));

  const Shape sh = shape_of(x);
  const int64_t k = weight.size(2);
  const at::MemoryFormat mf = output_format(x);
  const bool cl = mf == at::MemoryFormat::ChannelsLast3d;
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(mf));
  // gw (2k^3, weight layout) then gb, fp32; zero stays zero for empty inputs.
  at::Tensor gwb = at::zeros({2 * k * k * k + 1}, x.options().dtype(at::kFloat));
  if (x.numel() > 0) {
    const at::Tensor gl = at::empty({sh.N, sh.S}, x.options().dtype(at::kFloat));
    const at::Tensor attn_c = attn.contiguous();
    const at::Tensor pooled_c = pooled.contiguous();
    const at::Tensor argmax_c = argmax.contiguous();
    const at::Tensor w32 = weight.to(at::kFloat).contiguous();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_SWITCH(
        x.scalar_type(), "st_attention_bwd_cuda",
        AT_DISPATCH_CASE(at::kFloat, [&] {
          st_attention_bwd_typed<scalar_t>(grad_out, x, grad_x, gl, attn_c, pooled_c, argmax_c, w32, gwb,
                                           sh, cl, k, stream);
        }) AT_DISPATCH_CASE(at::kHalf, [&] {
          st_attention_bwd_typed<scalar_t>(grad_out, x, grad_x, gl, attn_c, pooled_c, argmax_c, w32, gwb,
                                           sh, cl, k, stream);
        }) AT_DISPATCH_CASE(at::kBFloat16, [&] {
          st_attention_bwd_typed<scalar_t>(grad_out, x, grad_x, gl, attn_c, pooled_c, argmax_c, w32, gwb,
                                           sh, cl, k, stream);
        }));
  }
  // Fresh tensors (copy=true): the two results never alias each other or gwb.
  at::Tensor grad_weight = gwb.narrow(0, 0, 2 * k * k * k)
                               .view({1, 2, k, k, k})
                               .to(weight.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  at::Tensor grad_bias = gwb.narrow(0, 2 * k * k * k, 1)
                             .to(weight.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace
}  // namespace meranet

TORCH_LIBRARY_IMPL(meranet, CUDA, m) {
  m.impl("st_attention_fwd", &meranet::st_attention_fwd_cuda);
  m.impl("st_attention_bwd", &meranet::st_attention_bwd_cuda);
}
