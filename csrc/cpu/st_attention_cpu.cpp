// CPU kernels of the fused spatio-temporal attention op (DESIGN.md §2).
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
// Accumulation: float for float / bfloat16 / float16, double for float64. The forward is computed
// in the accumulation type throughout; the saved attn / pooled maps are float32 (op contract), so the
// float64 backward accumulates in double but starts from float32-rounded attn / pooled (its relative
// accuracy is ~1e-7, ample for gradcheck; recomputing them would need the bias in the bwd schema).
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
#include <cstdlib>
#include <string>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "st_attention.h"

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

template <typename acc_t>
inline bool takes_max(acc_t v, acc_t best) {
  // A NaN wins over any number (torch.amax propagates NaN); the first of equal values is kept.
  return (v > best) | ((v != v) & (best == best));
}

// ------------------------------------------------------------------------------------------------
// Pass over x: pooling (forward pass 1; also the float64 backward's recomputation)
// ------------------------------------------------------------------------------------------------

// pooled: acc_t [N, 2, S] (mean, max); argmax: int32 [N, S].
template <typename scalar_t, bool UNIT>
void pool_positions_inner(const Plan& pl, const Big<const scalar_t>& x,
                          at::opmath_type<scalar_t>* pooled, int32_t* argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t B = kBlockPositionsInner;
  const int64_t C = pl.C, S = pl.S;
  at::parallel_for(0, pl.units(), 1, [&](int64_t u0, int64_t u1) {
    acc_t sum[B], best[B];
    int32_t idx[B];
    for (int64_t u = u0; u < u1; ++u) {
      const Unit un = unit_at(pl, u);
      const int64_t len = un.len;
      const int64_t xs = UNIT ? 1 : pos_stride(pl, x);
      const scalar_t* xp = x.p + unit_offset(pl, x, un);
      for (int64_t i = 0; i < len; ++i) {
        const acc_t v = static_cast<acc_t>(xp[i * xs]);
        sum[i] = v;
        best[i] = v;
        idx[i] = 0;
      }
      for (int64_t c = 1; c < C; ++c) {
        const scalar_t* xc = xp + c * x.sc;
        const int32_t ci = static_cast<int32_t>(c);
        for (int64_t i = 0; i < len; ++i) {
          const acc_t v = static_cast<acc_t>(xc[i * xs]);
          sum[i] += v;
          const bool take = takes_max(v, best[i]);
          best[i] = take ? v : best[i];
          idx[i] = take ? ci : idx[i];
        }
      }
      acc_t* mean_out = pooled + un.n * 2 * S + un.pos;
      acc_t* max_out = mean_out + S;
      int32_t* idx_out = argmax + un.n * S + un.pos;
      for (int64_t i = 0; i < len; ++i) {
        mean_out[i] = sum[i] / static_cast<acc_t>(C);
        max_out[i] = best[i];
        idx_out[i] = idx[i];
      }
    }
  });
}

// sum and max (NaN-propagating) of n values p[0], p[s], ..., in a fixed lane order.
template <typename scalar_t, typename acc_t, bool UNIT>
inline void sum_max_strided(const scalar_t* p, int64_t n, int64_t s, acc_t& sum, acc_t& best) {
  if (UNIT) s = 1;
  acc_t ls[kLanes], lm[kLanes];
  const acc_t first = static_cast<acc_t>(p[0]);
  for (int j = 0; j < kLanes; ++j) {
    ls[j] = 0;
    lm[j] = first;
  }
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const acc_t v = static_cast<acc_t>(p[(c + j) * s]);
      ls[j] += v;
      lm[j] = takes_max(v, lm[j]) ? v : lm[j];
    }
  }
  for (; c < n; ++c) {
    const acc_t v = static_cast<acc_t>(p[c * s]);
    ls[0] += v;
    lm[0] = takes_max(v, lm[0]) ? v : lm[0];
  }
  sum = ((ls[0] + ls[1]) + (ls[2] + ls[3])) + ((ls[4] + ls[5]) + (ls[6] + ls[7]));
  best = lm[0];
  for (int j = 1; j < kLanes; ++j) best = takes_max(lm[j], best) ? lm[j] : best;
}

// sum over n of a[i*sa] * b[i*sb], fixed lane order.
template <typename sa_t, typename sb_t, typename acc_t, bool UNIT>
inline acc_t dot_strided(const sa_t* a, int64_t sa, const sb_t* b, int64_t sb, int64_t n) {
  if (UNIT) {
    sa = 1;
    sb = 1;
  }
  acc_t l[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      l[j] += static_cast<acc_t>(a[(c + j) * sa]) * static_cast<acc_t>(b[(c + j) * sb]);
    }
  }
  for (; c < n; ++c) l[0] += static_cast<acc_t>(a[c * sa]) * static_cast<acc_t>(b[c * sb]);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

template <typename scalar_t, bool UNIT>
void pool_channels_inner(const Plan& pl, const Big<const scalar_t>& x,
                         at::opmath_type<scalar_t>* pooled, int32_t* argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = pl.C, S = pl.S;
  at::parallel_for(0, pl.units(), 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const Unit un = unit_at(pl, u);
      const int64_t xs = pos_stride(pl, x);
      const int64_t cs = UNIT ? 1 : x.sc;
      const scalar_t* xp = x.p + unit_offset(pl, x, un);
      acc_t* mean_out = pooled + un.n * 2 * S + un.pos;
      acc_t* max_out = mean_out + S;
      int32_t* idx_out = argmax + un.n * S + un.pos;
      for (int64_t i = 0; i < un.len; ++i) {
        const scalar_t* xr = xp + i * xs;
        acc_t sum, best;
        sum_max_strided<scalar_t, acc_t, UNIT>(xr, C, cs, sum, best);
        // First channel holding the max (the first NaN when the max is NaN).
        int32_t idx = 0;
        if (best == best) {
          while (static_cast<acc_t>(xr[idx * cs]) != best) ++idx;
        } else {
          while (static_cast<acc_t>(xr[idx * cs]) == static_cast<acc_t>(xr[idx * cs])) ++idx;
        }
        mean_out[i] = sum / static_cast<acc_t>(C);
        max_out[i] = best;
        idx_out[i] = idx;
      }
    }
  });
}

template <typename scalar_t>
void pool(const at::Tensor& x, at::opmath_type<scalar_t>* pooled, int32_t* argmax) {
  Big<const scalar_t> xb = big_view<const scalar_t>(x);
  const Plan pl = make_plan(x, xb);
  with_bool(pl.unit, [&](auto unit) {
    if (pl.chan_inner) {
      pool_channels_inner<scalar_t, decltype(unit)::value>(pl, xb, pooled, argmax);
    } else {
      pool_positions_inner<scalar_t, decltype(unit)::value>(pl, xb, pooled, argmax);
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Small maps: the k^3 x 2 -> 1 conv and its transpose / weight gradient (st_attention_cpu_maps.h),
// compiled for baseline x86-64 and for AVX2 + FMA, chosen at run time.
// ------------------------------------------------------------------------------------------------

struct Geometry {
  int64_t N, T, H, W, S, k, r;
};

// -Wpsabi: the 32-byte vector helpers are internal and inlined, so no ABI is crossed.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
namespace maps_default {
#include "st_attention_cpu_maps.h"
}  // namespace maps_default
#pragma GCC diagnostic pop

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MERANET_HAVE_AVX2_MAPS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
namespace maps_avx2 {
#include "st_attention_cpu_maps.h"
}  // namespace maps_avx2
#pragma GCC pop_options
#endif

// AVX2 + FMA small-map kernels when the CPU has them, unless MERANET_CPU_ISA=default.
bool use_avx2_maps() {
#ifdef MERANET_HAVE_AVX2_MAPS
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* isa = std::getenv("MERANET_CPU_ISA");
  return cpu_has && !(isa != nullptr && std::string(isa) == "default");
#else
  return false;
#endif
}

#ifdef MERANET_HAVE_AVX2_MAPS
#define MERANET_MAPS(fn, ...) \
  (use_avx2_maps() ? maps_avx2::fn<__VA_ARGS__> : maps_default::fn<__VA_ARGS__>)
#else
#define MERANET_MAPS(fn, ...) maps_default::fn<__VA_ARGS__>
#endif

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
// Forward pass 3: out = x * A
// ------------------------------------------------------------------------------------------------

template <typename scalar_t, bool UNIT, bool CHAN_INNER>
void scale(const Plan& pl, const Big<const scalar_t>& x, const Big<scalar_t>& out,
           const at::opmath_type<scalar_t>* attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = pl.C, S = pl.S;
  at::parallel_for(0, pl.units(), 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const Unit un = unit_at(pl, u);
      const int64_t len = un.len;
      const scalar_t* xp = x.p + unit_offset(pl, x, un);
      scalar_t* op = out.p + unit_offset(pl, out, un);
      const acc_t* a = attn + un.n * S + un.pos;
      if (CHAN_INNER) {
        const int64_t xc = UNIT ? 1 : x.sc, oc = UNIT ? 1 : out.sc;
        const int64_t xs = pos_stride(pl, x), os = pos_stride(pl, out);
        for (int64_t i = 0; i < len; ++i) {
          const scalar_t* xr = xp + i * xs;
          scalar_t* orow = op + i * os;
          const acc_t ai = a[i];
          for (int64_t c = 0; c < C; ++c) orow[c * oc] = static_cast<scalar_t>(static_cast<acc_t>(xr[c * xc]) * ai);
        }
      } else {
        const int64_t xs = UNIT ? 1 : pos_stride(pl, x), os = UNIT ? 1 : pos_stride(pl, out);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xr = xp + c * x.sc;
          scalar_t* orow = op + c * out.sc;
          for (int64_t i = 0; i < len; ++i) orow[i * os] = static_cast<scalar_t>(static_cast<acc_t>(xr[i * xs]) * a[i]);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Backward passes over x-sized tensors
// ------------------------------------------------------------------------------------------------

// ga [N, S] = sum_c g * x
template <typename scalar_t, bool UNIT, bool CHAN_INNER>
void attn_grad(const Plan& pl, const Big<const scalar_t>& g, const Big<const scalar_t>& x,
               at::opmath_type<scalar_t>* ga) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t B = kBlockPositionsInner;
  const int64_t C = pl.C, S = pl.S;
  at::parallel_for(0, pl.units(), 1, [&](int64_t u0, int64_t u1) {
    acc_t acc[B];
    for (int64_t u = u0; u < u1; ++u) {
      const Unit un = unit_at(pl, u);
      const int64_t len = un.len;
      const scalar_t* gp = g.p + unit_offset(pl, g, un);
      const scalar_t* xp = x.p + unit_offset(pl, x, un);
      acc_t* out = ga + un.n * S + un.pos;
      if (CHAN_INNER) {
        const int64_t gs = pos_stride(pl, g), xs = pos_stride(pl, x);
        for (int64_t i = 0; i < len; ++i) {
          out[i] = dot_strided<scalar_t, scalar_t, acc_t, UNIT>(gp + i * gs, g.sc, xp + i * xs, x.sc, C);
        }
      } else {
        const int64_t gs = UNIT ? 1 : pos_stride(pl, g), xs = UNIT ? 1 : pos_stride(pl, x);
        for (int64_t i = 0; i < len; ++i) acc[i] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* gr = gp + c * g.sc;
          const scalar_t* xr = xp + c * x.sc;
          for (int64_t i = 0; i < len; ++i) {
            acc[i] += static_cast<acc_t>(gr[i * gs]) * static_cast<acc_t>(xr[i * xs]);
          }
        }
        for (int64_t i = 0; i < len; ++i) out[i] = acc[i];
      }
    }
  });
}

// gx = g * A + gP0 / C + gP1 * [c == argmax]   (gp holds gP0 / C and gP1)
template <typename scalar_t, bool UNIT, bool CHAN_INNER>
void input_grad(const Plan& pl, const Big<const scalar_t>& g, const Big<scalar_t>& gx,
                const at::opmath_type<scalar_t>* attn, const at::opmath_type<scalar_t>* gp,
                const int32_t* argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = pl.C, S = pl.S;
  at::parallel_for(0, pl.units(), 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const Unit un = unit_at(pl, u);
      const int64_t len = un.len;
      const scalar_t* gpp = g.p + unit_offset(pl, g, un);
      scalar_t* op = gx.p + unit_offset(pl, gx, un);
      const acc_t* a = attn + un.n * S + un.pos;
      const acc_t* m0 = gp + un.n * 2 * S + un.pos;
      const acc_t* m1 = m0 + S;
      const int32_t* am = argmax + un.n * S + un.pos;
      if (CHAN_INNER) {
        const int64_t gc = UNIT ? 1 : g.sc, oc = UNIT ? 1 : gx.sc;
        const int64_t gs = pos_stride(pl, g), os = pos_stride(pl, gx);
        for (int64_t i = 0; i < len; ++i) {
          const scalar_t* gr = gpp + i * gs;
          scalar_t* orow = op + i * os;
          const acc_t ai = a[i], mi = m0[i];
          for (int64_t c = 0; c < C; ++c) {
            orow[c * oc] = static_cast<scalar_t>(static_cast<acc_t>(gr[c * gc]) * ai + mi);
          }
          const int64_t c = am[i];
          orow[c * oc] = static_cast<scalar_t>((static_cast<acc_t>(gr[c * gc]) * ai + mi) + m1[i]);
        }
      } else {
        const int64_t gs = UNIT ? 1 : pos_stride(pl, g), os = UNIT ? 1 : pos_stride(pl, gx);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* gr = gpp + c * g.sc;
          scalar_t* orow = op + c * gx.sc;
          const int32_t ci = static_cast<int32_t>(c);
          for (int64_t i = 0; i < len; ++i) {
            const acc_t v = static_cast<acc_t>(gr[i * gs]) * a[i] + m0[i];
            orow[i * os] = static_cast<scalar_t>(am[i] == ci ? v + m1[i] : v);
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Operators
// ------------------------------------------------------------------------------------------------

// out / grad_x layout: channels_last_3d when x is (and is not also contiguous), contiguous otherwise.
// Elements of `maps` zero-padded maps (st_attention_cpu_maps.h).
int64_t pad_numel(const Geometry& g, int64_t maps) {
  return maps * maps_default::padded(g).map();
}

at::Tensor empty_like_layout(const at::Tensor& x) {
  const bool cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return at::empty(x.sizes(), x.options(),
                   cl ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous);
}

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
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

StAttentionForward st_attention_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias) {
  check_st_attention_forward_inputs(x, weight, bias);
  const int64_t N = x.size(0), T = x.size(2), H = x.size(3), W = x.size(4);
  at::Tensor out = empty_like_layout(x);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor attn = at::empty({N, 1, T, H, W}, f32);
  at::Tensor pooled = at::empty({N, 2, T, H, W}, f32);
  at::Tensor argmax = at::empty({N, T, H, W}, x.options().dtype(at::kInt));
  if (x.numel() == 0) return {out, attn, pooled, argmax};

  const Geometry geo = geometry(x, weight);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  const at::Tensor w_acc = weight.to(acc).contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  // In the accumulation type: pooled / attn themselves for float, double buffers for float64.
  at::Tensor pooled_acc = acc == at::kFloat ? pooled : at::empty_like(pooled, pooled.options().dtype(acc));
  at::Tensor attn_acc = acc == at::kFloat ? attn : at::empty_like(attn, attn.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "st_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* P = pooled_acc.data_ptr<acc_t>();
    acc_t* A = attn_acc.data_ptr<acc_t>();
    pool<scalar_t>(x, P, argmax.data_ptr<int32_t>());
    const acc_t b = has_bias ? bias->to(acc).item<acc_t>() : acc_t(0);
    at::Tensor padded_pooled = at::empty({pad_numel(geo, 2 * geo.N)}, pooled_acc.options());
    acc_t* Pp = padded_pooled.data_ptr<acc_t>();
    with_kernel_size(geo.k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      MERANET_MAPS(pad_maps, acc_t)(geo, P, 2 * geo.N, Pp);
      MERANET_MAPS(attn_from_pooled, acc_t, K)(geo, Pp, w_acc.data_ptr<acc_t>(), b, A);
    });

    Big<const scalar_t> xb = big_view<const scalar_t>(x);
    Big<scalar_t> ob = big_view<scalar_t>(out);
    const Plan pl = make_plan(x, xb, ob);
    with_bool(pl.unit, [&](auto unit) {
      with_bool(pl.chan_inner, [&](auto ci) {
        scale<scalar_t, decltype(unit)::value, decltype(ci)::value>(pl, xb, ob, A);
      });
    });
  });
  if (acc != at::kFloat) {
    pooled.copy_(pooled_acc);
    attn.copy_(attn_acc);
  }
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
  const Geometry geo = geometry(x, weight);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  const int64_t C = x.size(1);
  const at::Tensor w_acc = weight.to(acc).contiguous();
  const at::Tensor argmax = argmax_in.contiguous();
  // Saved maps in the accumulation type (float64: widened copies of the float32 maps).
  const at::Tensor attn = attn_in.to(acc).contiguous();
  const at::Tensor pooled = pooled_in.to(acc).contiguous();
  at::Tensor gl = at::empty({geo.N, geo.S}, x.options().dtype(acc));
  at::Tensor gp = at::empty({geo.N, 2, geo.S}, x.options().dtype(acc));
  std::vector<double> wb;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "st_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* P = pooled.data_ptr<acc_t>();
    const acc_t* A = attn.data_ptr<acc_t>();
    acc_t* GL = gl.data_ptr<acc_t>();
    acc_t* GP = gp.data_ptr<acc_t>();

    // Pass 1 (reads g and x): gA.
    Big<const scalar_t> xb = big_view<const scalar_t>(x);
    Big<const scalar_t> gb = big_view<const scalar_t>(grad_out);
    const Plan p1 = make_plan(x, xb, gb);
    with_bool(p1.unit, [&](auto unit) {
      with_bool(p1.chan_inner, [&](auto ci) {
        attn_grad<scalar_t, decltype(unit)::value, decltype(ci)::value>(p1, gb, xb, GL);
      });
    });
    // Small maps: gL (in place), grad_weight / grad_bias, gP.
    at::Tensor padded_pooled = at::empty({pad_numel(geo, 2 * geo.N)}, pooled.options());
    at::Tensor padded_gl = at::zeros({pad_numel(geo, geo.N)}, pooled.options());
    acc_t* Pp = padded_pooled.data_ptr<acc_t>();
    acc_t* Gp = padded_gl.data_ptr<acc_t>();
    // Fixed chunking of the rows (a function of the shape only): at most 256 partial sums.
    const int64_t rows = geo.N * geo.T * geo.H;
    const int64_t per_chunk = std::max<int64_t>(1, (rows + 255) / 256);
    const int64_t chunks = (rows + per_chunk - 1) / per_chunk;
    const int64_t taps = 2 * geo.k * geo.k * geo.k;
    std::vector<double> partial(chunks * (taps + 1), 0.0);
    // Weights flipped in (t, h, w): the transposed conv is a correlation with them.
    const at::Tensor w_flip = w_acc.flip({2, 3, 4}).contiguous();
    with_kernel_size(geo.k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      MERANET_MAPS(pad_maps, acc_t)(geo, P, 2 * geo.N, Pp);
      MERANET_MAPS(logit_and_weight_grad, acc_t, K)(geo, GL, A, Pp, Gp, per_chunk, chunks, partial.data());
      MERANET_MAPS(pooled_grad, acc_t, K)(geo, Gp, w_flip.data_ptr<acc_t>(), C, GP);
    });
    wb.assign(taps + 1, 0.0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      for (int64_t j = 0; j <= taps; ++j) wb[j] += partial[chunk * (taps + 1) + j];
    }

    // Pass 2 (reads g, writes gx).
    Big<scalar_t> ob = big_view<scalar_t>(grad_x);
    Big<const scalar_t> gb2 = big_view<const scalar_t>(grad_out);
    const Plan p2 = make_plan(grad_x, ob, gb2);
    with_bool(p2.unit, [&](auto unit) {
      with_bool(p2.chan_inner, [&](auto ci) {
        input_grad<scalar_t, decltype(unit)::value, decltype(ci)::value>(p2, gb2, ob, A, GP,
                                                                          argmax.data_ptr<int32_t>());
      });
    });
  });
  const int64_t taps = static_cast<int64_t>(wb.size()) - 1;
  at::Tensor gw64 = at::empty({taps}, weight.options().dtype(at::kDouble));
  std::copy(wb.begin(), wb.begin() + taps, gw64.data_ptr<double>());
  at::Tensor grad_weight = gw64.view(weight.sizes()).to(weight.scalar_type());
  at::Tensor grad_bias = at::full({1}, wb[taps], weight.options().dtype(at::kDouble)).to(weight.scalar_type());
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace
}  // namespace meranet

TORCH_LIBRARY_IMPL(meranet, CPU, m) {
  m.impl("st_attention_fwd", &meranet::st_attention_fwd_cpu);
  m.impl("st_attention_bwd", &meranet::st_attention_bwd_cpu);
}
