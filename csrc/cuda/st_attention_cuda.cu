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
// Files: kernels 1 and 3 in st_attention_reduce.cuh, kernels 2, 4 and 5 in st_attention_tile.cuh, their
// types and helpers in st_attention_common.cuh (with common.cuh and pooled_attention.cuh, shared with the
// other operators); this file holds the host side.
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

#include "cuda/st_attention_reduce.cuh"
#include "cuda/st_attention_tile.cuh"
#include "ops/st_attention.h"

namespace meranet {
namespace {

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
  with_kernel_size("st_attention", k, [&](auto k_tag) {
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
  with_kernel_size("st_attention", k, [&](auto k_tag) {
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
