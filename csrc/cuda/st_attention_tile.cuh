// Kernels 2, 4 and 5 of st_attention (CUDA): the tiled conv + attend, the tiled input gradient with its
// per-tile gw / gb partial sums, and their fixed-order sum.
// Included only by csrc/cuda/st_attention_cuda.cu (notation and the kernel overview at its top): one
// translation unit, so these keep the internal linkage they had in that file.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/st_attention_common.cuh"

namespace meranet {
namespace {

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
  load_halo(halo_s, pooled + o.n * 2 * shape.S, 2, shape.S, shape.T, shape.H, shape.W, o.t0, o.h0, o.w0, R,
            tg.ht, tg.hh, tg.hw);
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
  load_halo(halo_s, gl + o.n * shape.S, 1, shape.S, shape.T, shape.H, shape.W, o.t0, o.h0, o.w0, R, tg.ht,
            tg.hh, tg.hw);
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

}  // namespace
}  // namespace meranet
