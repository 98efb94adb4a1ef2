// Types and helpers of the st_attention CUDA kernels (st_attention_reduce.cuh, st_attention_tile.cuh) and
// their host code: strides and shapes, vector access, the tile geometry.
// Included only by csrc/cuda/st_attention_cuda.cu (notation and the kernel overview at its top): one
// translation unit, so these keep the internal linkage they had in that file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/pooled_attention.cuh"

namespace meranet {
namespace {

using namespace cuda_common;
using namespace pooled_attention;

// ----------------------------------------------------------------------------------------------
// Small shared pieces (the max/argmax merge and ceil_div: csrc/cuda/common.cuh)
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

constexpr int kReduceLanes = 32;      // PM reduce kernel: blockDim.x (positions or vectors of them)
constexpr int kMaxSlices = 8;         // PM reduce kernel: at most this many channel slices (blockDim.y)
constexpr int kClThreads = 256;       // CL kernels: threads per block
constexpr int kTilePositions = 512;   // kernels 2 / 4: target positions per tile
constexpr int64_t kSmemLimit = 48 * 1024;  // dynamic shared memory without opting in

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

}  // namespace
}  // namespace meranet
