// Pooled-attention pieces shared by the CUDA kernels of st_attention (csrc/cuda/st_attention_tile.cuh)
// and ra_tail (csrc/cuda/ra_tail_cuda.cu). Both convolve small contiguous maps of one sample, [maps][T][H][W]
// (the pooled maps P, maps = 2; or gL, maps = 1), with the K^3 taps of the [1, 2, K, K, K] weight
// (docs/design.md §2.1, §2.3), one tile of positions per block, reading the tile plus a halo of R = K/2
// from shared memory. The max/argmax merge they share is in common.cuh.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <type_traits>

namespace meranet {
namespace pooled_attention {

// Copies the halo window of a tile from `maps` maps (map m at src + m*S) into dst[m][ht][hh][hw]:
// local (ut, uh, uw) is global (t0 - R + ut, h0 - R + uh, w0 - R + uw), zero outside the volume (the
// conv's zero padding). ht, hh, hw cover the tile extent + 2R (hw may be padded for aligned rows).
template <typename acc_t>
__device__ __forceinline__ void load_halo(acc_t* dst, const acc_t* src, int maps, int64_t S, int64_t T, int64_t H,
                                          int64_t W, int64_t t0, int64_t h0, int64_t w0, int R, int ht, int hh,
                                          int hw) {
  const int count = maps * ht * hh * hw;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    int u = i;
    const int uw = u % hw;
    u /= hw;
    const int uh = u % hh;
    u /= hh;
    const int ut = u % ht;
    const int m = u / ht;
    const int64_t gt = t0 - R + ut;
    const int64_t gh = h0 - R + uh;
    const int64_t gw = w0 - R + uw;
    acc_t v = acc_t(0);
    if (gt >= 0 && gt < T && gh >= 0 && gh < H && gw >= 0 && gw < W) {
      v = src[m * S + (gt * H + gh) * W + gw];
    }
    dst[i] = v;
  }
}

// Calls f(std::integral_constant<int, K>{}) for the weight's kernel size k (the kernels are built for
// K = 3, 5, 7).
template <typename F>
void with_kernel_size(const char* op, int64_t k, F&& f) {
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
      TORCH_CHECK(false, op, " (CUDA): weight kernel size k must be 3, 5 or 7, got ", k);
  }
}

}  // namespace pooled_attention
}  // namespace meranet
