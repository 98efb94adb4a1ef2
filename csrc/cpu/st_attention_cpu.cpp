// CPU kernels of the fused spatio-temporal attention op (docs/design.md §2.1).
//
//   out = x * A,  A = sigmoid(conv3d([mean_c x; max_c x], w, b, pad = k/2)),  x: [N, C, T, H, W]
//
// Forward (passes over x-sized tensors: read x; read x + write out):
//   1. pool      mean / max / first argmax over C                       (reads x)
//   2. logits    k^3 x 2 -> 1 conv of the small pooled maps + bias, then sigmoid
//   3. scale     out = x * A                                             (reads x, writes out)
// Backward (read g + x; read g + write gx):
//   1. gA = sum_c g * x
//   2. small maps: gL = gA A (1 - A); gw = sum corr(P, gL), gb = sum gL (fixed-order partials);
//      gP = conv_transpose(gL, w)
//   3. gx = g * A + gP0 / C + gP1 * [c == argmax]
//
// Layouts: x, out, grad_out and grad_x are read through their strides, never copied. The walk over a
// tensor is either "positions inner" (NCTHW-contiguous: vector loops over W, or over all of T*H*W
// when those dims collapse into one stride) or "channels inner" (channels_last_3d: the reduction over
// C is contiguous). When every tensor of a pass has a unit inner stride the loops are compiled with
// stride 1 (vectorised); anything else (sliced inputs, expanded gradients) takes the same loops
// with runtime strides.
//
// Accumulation: float for float / bfloat16 / float16, double for float64, in the forward and the
// backward; the saved attn / pooled maps are in that accumulation type too (docs/design.md §5), so a
// float64 call is float64 end to end.
//
// Determinism: every position is computed by one thread in a fixed order; the grad_weight / grad_bias
// reductions are partial sums over a fixed chunking of the rows (independent of the thread count),
// summed in chunk order. Two runs give bit-identical results.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "ops/meranet_fast.h"
#include "pooled_attention_cpu.h"
#include "ops/st_attention.h"

namespace meranet {
namespace {

constexpr int64_t kBlockPositionsInner = 1024;  // positions per work unit, positions-inner walk
constexpr int64_t kBlockChannelsInner = 64;     // positions per work unit, channels-inner walk
constexpr int kLanes = 8;                        // independent accumulators of the contiguous reductions

// ------------------------------------------------------------------------------------------------
// Walk over the positions of x-sized tensors
// ------------------------------------------------------------------------------------------------

// An x-shaped tensor seen through its strides. `sm` is the stride of a flat position when T, H, W
// collapse into one dimension (only meaningful when the walk is merged).
template <typename T>
struct Big {
  T* p;
  int64_t sn, sc, st, sh, sw, sm;
};

template <typename T>
Big<T> big_view(const at::Tensor& t) {
  return {t.data_ptr<std::remove_const_t<T>>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3),
          t.stride(4), 0};
}

// Stride of a flat position (t*H + h)*W + w when the three dims collapse, or -1 if they do not.
int64_t merged_stride(int64_t T, int64_t H, int64_t W, int64_t st, int64_t sh, int64_t sw) {
  const int64_t s = W > 1 ? sw : (H > 1 ? sh : (T > 1 ? st : 1));
  const bool ok = (W == 1 || sw == s) && (H == 1 || sh == W * s) && (T == 1 || st == H * W * s);
  return ok ? s : -1;
}

struct Plan {
  int64_t N, C, T, H, W, S;
  bool merged;        // T, H, W walked as one row of S positions
  bool chan_inner;    // channels innermost
  bool unit;          // every tensor has a unit inner stride (channels or positions)
  int64_t R, Wr;      // rows per sample, positions per row
  int64_t B, chunks;  // positions per work unit, units per row

  int64_t units() const { return N * R * chunks; }
  int64_t rows_total() const { return N * T * H; }
};

struct Unit {
  int64_t n, r, w0, len, pos;  // sample, row, first position in the row, positions, flat position
};

inline Unit unit_at(const Plan& pl, int64_t u) {
  Unit un;
  const int64_t per_sample = pl.R * pl.chunks;
  un.n = u / per_sample;
  const int64_t rem = u % per_sample;
  un.r = rem / pl.chunks;
  un.w0 = (rem % pl.chunks) * pl.B;
  un.len = std::min(pl.B, pl.Wr - un.w0);
  un.pos = un.r * pl.Wr + un.w0;
  return un;
}

// Offset of the first element of unit `un` in tensor `b`, and the stride between its positions.
template <typename T>
inline int64_t unit_offset(const Plan& pl, const Big<T>& b, const Unit& un) {
  if (pl.merged) return un.n * b.sn + un.w0 * b.sm;
  return un.n * b.sn + (un.r / pl.H) * b.st + (un.r % pl.H) * b.sh + un.w0 * b.sw;
}
template <typename T>
inline int64_t pos_stride(const Plan& pl, const Big<T>& b) {
  return pl.merged ? b.sm : b.sw;
}

// Elementwise passes with positions innermost: a task is one channel c of one row of Wr positions
// (the whole sample when merged: long contiguous streams for the hardware prefetchers), f(unit, c)
// with the row's first unit widened to the full row.
template <typename F>
void for_each_channel_row(const Plan& pl, F&& f) {
  at::parallel_for(0, pl.N * pl.R * pl.C, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      Unit un = unit_at(pl, (t / pl.C) * pl.chunks);
      un.len = pl.Wr;
      f(un, t % pl.C);
    }
  });
}

// The walk shared by the tensors of one pass. The first tensor (x, or grad_x) decides the order.
template <typename... Ts>
Plan make_plan(const at::Tensor& ref, Big<Ts>&... bigs) {
  Plan pl;
  pl.N = ref.size(0);
  pl.C = ref.size(1);
  pl.T = ref.size(2);
  pl.H = ref.size(3);
  pl.W = ref.size(4);
  pl.S = pl.T * pl.H * pl.W;
  pl.merged = true;
  auto merge = [&](auto& b) {
    b.sm = merged_stride(pl.T, pl.H, pl.W, b.st, b.sh, b.sw);
    pl.merged = pl.merged && b.sm >= 0;
  };
  (merge(bigs), ...);
  pl.R = pl.merged ? 1 : pl.T * pl.H;
  pl.Wr = pl.merged ? pl.S : pl.W;
  // Order from the first tensor: channels inner when its channel stride is the smaller one.
  const auto& first = std::get<0>(std::forward_as_tuple(bigs...));
  const int64_t sp = std::abs(pl.merged ? first.sm : first.sw);
  pl.chan_inner = pl.C > 1 && pl.Wr > 1 && std::abs(first.sc) < sp;
  pl.unit = true;
  auto check_unit = [&](const auto& b) {
    if (pl.chan_inner) {
      pl.unit = pl.unit && (b.sc == 1 || pl.C == 1);
    } else {
      pl.unit = pl.unit && (pos_stride(pl, b) == 1 || pl.Wr == 1);
    }
  };
  (check_unit(bigs), ...);
  pl.B = pl.chan_inner ? kBlockChannelsInner : kBlockPositionsInner;
  pl.chunks = (pl.Wr + pl.B - 1) / pl.B;
  return pl;
}

// Calls f(std::integral_constant<bool, b>{}).
template <typename F>
void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ------------------------------------------------------------------------------------------------
// The kernels (st_attention_cpu_kernels.h), compiled for baseline x86-64 and for AVX2 + FMA; the
// AVX2 copy is chosen at run time when the CPU has it.
// ------------------------------------------------------------------------------------------------

struct Geometry {
  int64_t N, T, H, W, S, k, r;
};

#define MERANET_KERNELS_HEADER "st_attention_cpu_kernels.h"
#define MERANET_KERNELS_PREFIX maps
#include "isa_variants.h"

#define MERANET_MAPS(fn, ...) MERANET_ISA_PICK(maps, fn, __VA_ARGS__)

// Calls f(std::integral_constant<int, k>{}) for k in {3, 5, 7}.
template <typename F>
void with_kernel_size(int64_t k, F&& f) {
  switch (k) {
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: TORCH_CHECK(false, "st_attention: weight kernel size k must be 3, 5 or 7, got ", k);
  }
}

// ------------------------------------------------------------------------------------------------
// Operators
// ------------------------------------------------------------------------------------------------

// out / grad_x layout: channels_last_3d when x is (and is not also contiguous), contiguous otherwise.
// Elements of `maps` zero-padded maps (st_attention_cpu_kernels.h).
int64_t pad_numel(const Geometry& g, int64_t maps) {
  return maps * maps_default::padded(g).map();
}

at::Tensor empty_like_layout(const at::Tensor& x) {
  const bool cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return at::empty(x.sizes(), x.options(),
                   cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous);
}

Geometry geometry(const at::Tensor& x, const at::Tensor& weight) {
  Geometry g;
  g.N = x.size(0);
  g.T = x.size(2);
  g.H = x.size(3);
  g.W = x.size(4);
  g.S = g.T * g.H * g.W;
  g.k = weight.size(2);
  g.r = g.k / 2;
  return g;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// The small-map part (csrc/cpu/pooled_attention_cpu.h), shared with the ra_tail operators
// ------------------------------------------------------------------------------------------------

at::Tensor pooled_attention_cpu(const at::Tensor& pooled, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  const Geometry geo = geometry(pooled, weight);
  const at::Tensor P = pooled.contiguous();
  at::Tensor attn = at::empty({geo.N, 1, geo.T, geo.H, geo.W}, P.options());
  if (attn.numel() == 0) return attn;
  const at::Tensor w_acc = in_dtype(weight, P.scalar_type()).contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "pooled_attention_cpu", [&] {
    const scalar_t b = has_bias ? in_dtype(*bias, P.scalar_type()).const_data_ptr<scalar_t>()[0] : scalar_t(0);
    at::Tensor padded_pooled = at::empty({pad_numel(geo, 2 * geo.N)}, P.options());
    scalar_t* Pp = padded_pooled.data_ptr<scalar_t>();
    with_kernel_size(geo.k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      MERANET_MAPS(pad_maps, scalar_t)(geo, P.data_ptr<scalar_t>(), 2 * geo.N, Pp);
      MERANET_MAPS(attn_from_pooled, scalar_t, K)(geo, Pp, w_acc.data_ptr<scalar_t>(), b, attn.data_ptr<scalar_t>());
    });
  });
  return attn;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_attention_backward_cpu(const at::Tensor& grad_attn,
                                                                             const at::Tensor& attn,
                                                                             const at::Tensor& pooled,
                                                                             const at::Tensor& weight,
                                                                             int64_t mean_divisor) {
  const Geometry geo = geometry(pooled, weight);
  const at::ScalarType acc = pooled.scalar_type();
  const at::Tensor P = pooled.contiguous(), A = in_dtype(attn, acc).contiguous(),
                   GA = in_dtype(grad_attn, acc).contiguous();
  at::Tensor grad_pooled = at::empty({geo.N, 2, geo.T, geo.H, geo.W}, P.options());
  const int64_t taps = 2 * geo.k * geo.k * geo.k;
  if (grad_pooled.numel() == 0) {
    return {grad_pooled, at::zeros(weight.sizes(), weight.options()), at::zeros({1}, weight.options())};
  }
  const at::Tensor w_acc = in_dtype(weight, acc).contiguous();
  // Fixed chunking of the rows (a function of the shape only): at most 64 partial sums, added in
  // order in double, so the weight gradient does not depend on the thread count. Chunks of at least
  // 16 rows: each chunk ends with a horizontal sum per tap, which on short chunks costs as much as the
  // multiply-adds (2x64x16x28x28, k = 5: ra_attend_bwd 1.17 -> 0.95 ms, fastest of 60 calls).
  const int64_t rows = geo.N * geo.T * geo.H;
  const int64_t per_chunk = std::max<int64_t>(16, (rows + 63) / 64);
  const int64_t chunks = (rows + per_chunk - 1) / per_chunk;
  std::vector<double> partial(chunks * (taps + 1), 0.0);
  AT_DISPATCH_FLOATING_TYPES(acc, "pooled_attention_backward_cpu", [&] {
    // Weights flipped in (t, h, w): the transposed conv is a correlation with them. taps = 2 k^3.
    std::vector<scalar_t> w_flip(taps);
    const scalar_t* w = w_acc.const_data_ptr<scalar_t>();
    const int64_t k3 = taps / 2;
    for (int64_t i = 0; i < taps; ++i) w_flip[i] = w[(i / k3) * k3 + (k3 - 1 - i % k3)];
    at::Tensor padded_pooled = at::empty({pad_numel(geo, 2 * geo.N)}, P.options());
    at::Tensor padded_gl = at::zeros({pad_numel(geo, geo.N)}, P.options());
    scalar_t* Pp = padded_pooled.data_ptr<scalar_t>();
    scalar_t* Gp = padded_gl.data_ptr<scalar_t>();
    with_kernel_size(geo.k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      MERANET_MAPS(pad_maps, scalar_t)(geo, P.data_ptr<scalar_t>(), 2 * geo.N, Pp);
      MERANET_MAPS(logit_and_weight_grad, scalar_t, K)(geo, GA.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), Pp, Gp,
                                                       per_chunk, chunks, partial.data());
      MERANET_MAPS(pooled_grad, scalar_t, K)(geo, Gp, w_flip.data(), mean_divisor,
                                             grad_pooled.data_ptr<scalar_t>());
    });
  });
  std::vector<double> total(taps + 1, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    for (int64_t j = 0; j <= taps; ++j) total[j] += partial[chunk * (taps + 1) + j];
  }
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  at::Tensor grad_bias = at::empty({1}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "pooled_attention_grads", [&] {
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();  // fresh, hence contiguous
    for (int64_t j = 0; j < taps; ++j) gw[j] = static_cast<scalar_t>(total[j]);
    grad_bias.mutable_data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total[taps]);
  });
  return {grad_pooled, grad_weight, grad_bias};
}

namespace {

StAttentionForward st_attention_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias) {
  check_st_attention_forward_inputs(x, weight, bias);
  const int64_t N = x.size(0), T = x.size(2), H = x.size(3), W = x.size(4);
  at::Tensor out = empty_like_layout(x);
  // Pooled maps and attention in the accumulation type (float64 for float64 x), saved as they are.
  const auto small = x.options().dtype(acc_scalar_type(x.scalar_type()));
  at::Tensor argmax = at::empty({N, T, H, W}, x.options().dtype(at::kInt));
  at::Tensor pooled = at::empty({N, 2, T, H, W}, small);
  if (x.numel() == 0) {
    return {out, at::empty({N, 1, T, H, W}, small), pooled, argmax};
  }
  at::Tensor attn;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "st_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    MERANET_MAPS(pool, scalar_t)(x, pooled.data_ptr<acc_t>(), argmax.data_ptr<int32_t>());
    attn = pooled_attention_cpu(pooled, weight, bias);
    Big<const scalar_t> xb = big_view<const scalar_t>(x);
    Big<scalar_t> ob = big_view<scalar_t>(out);
    const Plan pl = make_plan(x, xb, ob);
    with_bool(pl.unit, [&](auto unit) {
      with_bool(pl.chan_inner, [&](auto ci) {
        MERANET_MAPS(scale, scalar_t, decltype(unit)::value, decltype(ci)::value)(pl, xb, ob, attn.data_ptr<acc_t>());
      });
    });
  });
  return {out, attn, pooled, argmax};
}

StAttentionBackward st_attention_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& attn_in,
                                         const at::Tensor& pooled_in, const at::Tensor& argmax_in) {
  check_st_attention_backward_inputs(grad_out, x, weight, attn_in, pooled_in, argmax_in);
  at::Tensor grad_x = empty_like_layout(x);
  if (x.numel() == 0) {
    return {grad_x, at::zeros(weight.sizes(), weight.options()), at::zeros({1}, weight.options())};
  }
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2) * x.size(3) * x.size(4);
  const at::ScalarType acc = acc_scalar_type(x.scalar_type());
  const at::Tensor argmax = argmax_in.contiguous();
  const at::Tensor attn = attn_in.contiguous();  // saved in the accumulation type (checked)
  const at::Tensor pooled = pooled_in.contiguous();
  at::Tensor grad_attn = at::empty({N, S}, x.options().dtype(acc));
  at::Tensor grad_pooled, grad_weight, grad_bias;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "st_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Pass 1 (reads g and x): gA.
    Big<const scalar_t> xb = big_view<const scalar_t>(x);
    Big<const scalar_t> gb = big_view<const scalar_t>(grad_out);
    const Plan p1 = make_plan(x, xb, gb);
    with_bool(p1.unit, [&](auto unit) {
      with_bool(p1.chan_inner, [&](auto ci) {
        MERANET_MAPS(attn_grad, scalar_t, decltype(unit)::value, decltype(ci)::value)(p1, gb, xb,
                                                                                     grad_attn.data_ptr<acc_t>());
      });
    });
    // Small maps: grad_weight / grad_bias and gP (the mean map's gradient divided by C).
    std::tie(grad_pooled, grad_weight, grad_bias) = pooled_attention_backward_cpu(grad_attn, attn, pooled, weight, C);
    // Pass 2 (reads g, writes gx).
    Big<scalar_t> ob = big_view<scalar_t>(grad_x);
    Big<const scalar_t> gb2 = big_view<const scalar_t>(grad_out);
    const Plan p2 = make_plan(grad_x, ob, gb2);
    with_bool(p2.unit, [&](auto unit) {
      with_bool(p2.chan_inner, [&](auto ci) {
        MERANET_MAPS(input_grad, scalar_t, decltype(unit)::value, decltype(ci)::value)(
            p2, gb2, ob, attn.data_ptr<acc_t>(), grad_pooled.data_ptr<acc_t>(), argmax.data_ptr<int32_t>());
      });
    });
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace
}  // namespace meranet

TORCH_LIBRARY_IMPL(meranet, CPU, m) {
  m.impl("st_attention_fwd", &meranet::st_attention_fwd_cpu);
  m.impl("st_attention_bwd", &meranet::st_attention_bwd_cpu);
}
