// Kernels of the CPU spatio-temporal attention op.
//  * Passes over x-sized tensors (pooling, scaling, the two backward passes) on the walk of a Plan.
//  * Small maps: the k^3 x 2 -> 1 conv, its transpose and its weight gradient, on zero-padded maps
//    (no bounds checks), register-blocked over kBlockW outputs.
//
// Included twice by st_attention_cpu.cpp (csrc/cpu/isa.h): once in namespace maps_default (baseline
// x86-64) and once in namespace maps_avx2 under `#pragma GCC target("avx2,fma")`; the caller picks one
// at run time. So this file defines no include guard; it needs the SIMD helpers (csrc/cpu/simd.h),
// Geometry, Plan, Unit, Big and their helpers from the includer.
//
// Padded maps: [maps, Tp, Hp, Wp] with Tp = T + 2r, Hp = H + 2r, Wp = roundup(W, kBlockW) + 2r, the
// map at (r, r, r); everything else is zero. A block of kBlockW outputs starting at w0 reads columns
// w0 .. w0 + kBlockW - 1 + 2r, all inside the row.

constexpr int kBlockW = 16;

template <typename T>
constexpr int kVecs = kBlockW / kLanesOf<T>;  // vectors per block of kBlockW outputs

struct Padded {
  int64_t Tp, Hp, Wp;
  int64_t map() const { return Tp * Hp * Wp; }
};

inline Padded padded(const Geometry& g) {
  return {g.T + 2 * g.r, g.H + 2 * g.r, (g.W + kBlockW - 1) / kBlockW * kBlockW + 2 * g.r};
}

// dst [maps, Tp, Hp, Wp] = zero-padded src [maps, S]; writes every element of dst.
template <typename acc_t>
void pad_maps(const Geometry& g, const acc_t* src, int64_t maps, acc_t* dst) {
  const Padded pd = padded(g);
  const int64_t r = g.r;
  at::parallel_for(0, maps * pd.Tp * pd.Hp, 64, [&](int64_t row0, int64_t row1) {
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t m = row / (pd.Tp * pd.Hp), tp = (row / pd.Hp) % pd.Tp, hp = row % pd.Hp;
      acc_t* d = dst + row * pd.Wp;
      const int64_t t = tp - r, h = hp - r;
      if (t < 0 || t >= g.T || h < 0 || h >= g.H) {
        for (int64_t i = 0; i < pd.Wp; ++i) d[i] = 0;
        continue;
      }
      const acc_t* s = src + m * g.S + (t * g.H + h) * g.W;
      for (int64_t i = 0; i < r; ++i) d[i] = 0;
      for (int64_t i = 0; i < g.W; ++i) d[r + i] = s[i];
      for (int64_t i = r + g.W; i < pd.Wp; ++i) d[i] = 0;
    }
  });
}

// Output rows per block of attn_from_pooled: each padded input row loaded once serves up to
// kRowsPerBlock output rows (with different weights), so loads per multiply-add drop from 1 to ~1/4.
constexpr int kRowsPerBlock = 4;

// RB output rows h0 .. h0 + RB - 1 of (n, t), kBlockW columns from w0: attn = sigmoid(bias + conv).
template <typename acc_t, int K, int RB>
inline void attn_rows(const Geometry& g, const Padded& pd, const acc_t* Pp, const acc_t* w, acc_t bias, int64_t n,
                      int64_t t, int64_t h0, int64_t w0, acc_t* attn) {
  using V = vec_t<acc_t>;
  constexpr int NV = kVecs<acc_t>, L = kLanesOf<acc_t>;
  V acc[RB][NV];
  for (int q = 0; q < RB; ++q) {
    for (int v = 0; v < NV; ++v) acc[q][v] = V{} + bias;
  }
  for (int ch = 0; ch < 2; ++ch) {
    for (int dt = 0; dt < K; ++dt) {
      // Padded input row h0 + j feeds output row h0 + q through the kernel row dh = j - q.
      for (int j = 0; j < K + RB - 1; ++j) {
        const acc_t* prow = Pp + (((n * 2 + ch) * pd.Tp + t + dt) * pd.Hp + h0 + j) * pd.Wp + w0;
        for (int dw = 0; dw < K; ++dw) {
          V x[NV];
          for (int v = 0; v < NV; ++v) x[v] = loadu(prow + dw + v * L);
          for (int q = 0; q < RB; ++q) {
            const int dh = j - q;
            if (dh < 0 || dh >= K) continue;  // compile-time after unrolling
            const acc_t wv = w[((ch * K + dt) * K + dh) * K + dw];
            for (int v = 0; v < NV; ++v) acc[q][v] += wv * x[v];
          }
        }
      }
    }
  }
  const int64_t len = std::min<int64_t>(kBlockW, g.W - w0);
  for (int q = 0; q < RB; ++q) {
    acc_t res[kBlockW];
    for (int v = 0; v < NV; ++v) storeu(res + v * L, sigmoid_vec<acc_t>(acc[q][v]));
    acc_t* out = attn + n * g.S + (t * g.H + h0 + q) * g.W + w0;
    for (int64_t i = 0; i < len; ++i) out[i] = res[i];
  }
}

// Calls block(rb, n, t, h0, w0) for every kBlockW-column block of every group of kRowsPerBlock output
// rows h0 .. of (n, t), rb = std::integral_constant<int, kRowsPerBlock>, or rb = 1 row by row for a
// short last group; parallel over the groups.
template <typename F>
void for_each_row_block(const Geometry& g, F&& block) {
  const int64_t T = g.T, H = g.H, W = g.W;
  const int64_t groups = (H + kRowsPerBlock - 1) / kRowsPerBlock;  // per (n, t)
  at::parallel_for(0, g.N * T * groups, 2, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / (T * groups), t = (b / groups) % T, h0 = (b % groups) * kRowsPerBlock;
      const int64_t rows = std::min<int64_t>(kRowsPerBlock, H - h0);
      for (int64_t w0 = 0; w0 < W; w0 += kBlockW) {
        if (rows == kRowsPerBlock) {
          block(std::integral_constant<int, kRowsPerBlock>{}, n, t, h0, w0);
        } else {
          for (int64_t h = h0; h < h0 + rows; ++h) block(std::integral_constant<int, 1>{}, n, t, h, w0);
        }
      }
    }
  });
}

// attn [N, S] = sigmoid(bias + sum_{ch, taps} w[ch, tap] * Pp[n, ch, position + tap]).
template <typename acc_t, int K>
void attn_from_pooled(const Geometry& g, const acc_t* Pp, const acc_t* w, acc_t bias, acc_t* attn) {
  const Padded pd = padded(g);
  for_each_row_block(g, [&](auto rb, int64_t n, int64_t t, int64_t h0, int64_t w0) {
    attn_rows<acc_t, K, decltype(rb)::value>(g, pd, Pp, w, bias, n, t, h0, w0, attn);
  });
}

// Per fixed chunk of `per_chunk` rows (n, t, h): writes gL = gA A (1 - A) into the interior of the
// zero-filled padded map Gp [N, Tp, Hp, Wp], and adds to partial[chunk] (2 K^3 + 1 doubles):
//   gw[ch, tap] = sum_q gL[q] * Pp[ch, q + tap]      and      gb = sum_q gL[q].
template <typename acc_t, int K>
void logit_and_weight_grad(const Geometry& g, const acc_t* gA, const acc_t* A, const acc_t* Pp, acc_t* Gp,
                           int64_t per_chunk, int64_t chunks, double* partial) {
  const Padded pd = padded(g);
  const int64_t T = g.T, H = g.H, W = g.W, r = g.r;
  const int64_t rows = g.N * T * H;
  constexpr int64_t taps = 2 * K * K * K;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      double* part = partial + chunk * (taps + 1);
      const int64_t row_begin = chunk * per_chunk, row_end = std::min(rows, row_begin + per_chunk);
      auto grad_row = [&](int64_t row) {
        const int64_t n = row / (T * H), t = (row / H) % T, h = row % H;
        return Gp + ((n * pd.Tp + t + r) * pd.Hp + h + r) * pd.Wp + r;
      };
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t n = row / (T * H), t = (row / H) % T, h = row % H;
        const int64_t base = n * g.S + (t * H + h) * W;
        acc_t* gr = grad_row(row);
        acc_t sum = 0;
        for (int64_t i = 0; i < W; ++i) {
          const acc_t a = A[base + i];
          const acc_t v = gA[base + i] * a * (acc_t(1) - a);
          gr[i] = v;
          sum += v;
        }
        part[taps] += static_cast<double>(sum);
      }
      for (int ch = 0; ch < 2; ++ch) {
        for (int dt = 0; dt < K; ++dt) {
          for (int dh = 0; dh < K; ++dh) {
            using V = vec_t<acc_t>;
            constexpr int NV = kVecs<acc_t>, L = kLanesOf<acc_t>;
            V acc[K][NV] = {};
            for (int64_t row = row_begin; row < row_end; ++row) {
              const int64_t n = row / (T * H), t = (row / H) % T, h = row % H;
              const acc_t* gr = grad_row(row);
              const acc_t* pr = Pp + (((n * 2 + ch) * pd.Tp + t + dt) * pd.Hp + h + dh) * pd.Wp;
              for (int64_t w0 = 0; w0 < W; w0 += kBlockW) {
                V gv[NV];
                for (int v = 0; v < NV; ++v) gv[v] = loadu(gr + w0 + v * L);  // zero beyond W (padding)
                for (int dw = 0; dw < K; ++dw) {
                  for (int v = 0; v < NV; ++v) acc[dw][v] += gv[v] * loadu(pr + w0 + dw + v * L);
                }
              }
            }
            double* out = part + ((ch * K + dt) * K + dh) * K;
            for (int dw = 0; dw < K; ++dw) {
              V sv = acc[dw][0];
              for (int v = 1; v < NV; ++v) sv += acc[dw][v];
              acc_t s = 0;
              for (int j = 0; j < L; ++j) s += sv[j];
              out[dw] += static_cast<double>(s);
            }
          }
        }
      }
    }
  });
}

// RB output rows h0 .. h0 + RB - 1 of (n, t), kBlockW columns from w0, of both pooled gradients (as in
// attn_rows: each loaded row of Gp serves up to RB output rows).
template <typename acc_t, int K, int RB>
inline void pooled_grad_rows(const Geometry& g, const Padded& pd, const acc_t* Gp, const acc_t* wflip, acc_t inv_c,
                             int64_t n, int64_t t, int64_t h0, int64_t w0, acc_t* gP) {
  using V = vec_t<acc_t>;
  constexpr int NV = kVecs<acc_t>, L = kLanesOf<acc_t>, KKK = K * K * K;
  V a0[RB][NV] = {}, a1[RB][NV] = {};
  for (int dt = 0; dt < K; ++dt) {
    for (int j = 0; j < K + RB - 1; ++j) {
      const acc_t* grow = Gp + ((n * pd.Tp + t + dt) * pd.Hp + h0 + j) * pd.Wp + w0;
      for (int dw = 0; dw < K; ++dw) {
        V x[NV];
        for (int v = 0; v < NV; ++v) x[v] = loadu(grow + dw + v * L);
        for (int q = 0; q < RB; ++q) {
          const int dh = j - q;
          if (dh < 0 || dh >= K) continue;  // compile-time after unrolling
          const int tap = (dt * K + dh) * K + dw;
          const acc_t u0 = wflip[tap], u1 = wflip[KKK + tap];
          for (int v = 0; v < NV; ++v) {
            a0[q][v] += u0 * x[v];
            a1[q][v] += u1 * x[v];
          }
        }
      }
    }
  }
  const int64_t len = std::min<int64_t>(kBlockW, g.W - w0);
  for (int q = 0; q < RB; ++q) {
    acc_t r0[kBlockW], r1[kBlockW];
    for (int v = 0; v < NV; ++v) {
      storeu(r0 + v * L, a0[q][v] * inv_c);
      storeu(r1 + v * L, a1[q][v]);
    }
    acc_t* out0 = gP + n * 2 * g.S + (t * g.H + h0 + q) * g.W + w0;
    acc_t* out1 = out0 + g.S;
    for (int64_t i = 0; i < len; ++i) {
      out0[i] = r0[i];
      out1[i] = r1[i];
    }
  }
}

// gP [N, 2, S]: gP[ch, q] = sum_taps w[ch, tap] gL[q - tap + r] = sum_taps wflip[ch, tap] Gp[q + tap];
// the mean map's gradient is stored divided by C.
template <typename acc_t, int K>
void pooled_grad(const Geometry& g, const acc_t* Gp, const acc_t* wflip, int64_t C, acc_t* gP) {
  const Padded pd = padded(g);
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  for_each_row_block(g, [&](auto rb, int64_t n, int64_t t, int64_t h0, int64_t w0) {
    pooled_grad_rows<acc_t, K, decltype(rb)::value>(g, pd, Gp, wflip, inv_c, n, t, h0, w0, gP);
  });
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
      fold_all_rows<UNIT>(xp + x.sc, C - 1, x.sc, xs, static_cast<const acc_t*>(nullptr), int32_t(1), len, sum,
                          best, idx);
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
        int32_t idx = 0;
        constexpr int L = kLanesOf<acc_t>;
        if (UNIT && C >= L) {
          // Per lane: running sum, max and the first channel reaching it; then lanes combined in order.
          using V = vec_t<acc_t>;
          V vs = V{}, vm = load_acc(xr);
          using ilanes = decltype(vm < vm);  // integer lanes as wide as acc_t
          ilanes vi, ci;
          for (int j = 0; j < L; ++j) {
            vi[j] = j;
            ci[j] = j;
          }
          vs = vm;
          int64_t c = L;
          for (; c + L <= C; c += L) {
            const V v = load_acc(xr + c);
            ci += L;
            vs += v;
            const auto take = takes_max_vec(v, vm);
            vm = take ? v : vm;
            vi = take ? ci : vi;
          }
          sum = vs[0];
          for (int j = 1; j < L; ++j) sum += vs[j];
          best = vm[0];
          idx = static_cast<int32_t>(vi[0]);
          for (int j = 1; j < L; ++j) {
            // Strictly better, or equal (or both NaN) with a smaller channel index.
            const bool same = (vm[j] == best) | ((vm[j] != vm[j]) & (best != best));
            if (takes_max(vm[j], best) || (same && vi[j] < idx)) {
              best = vm[j];
              idx = static_cast<int32_t>(vi[j]);
            }
          }
          for (; c < C; ++c) {  // channel tail, in order: later channels only win when strictly better
            const acc_t v = static_cast<acc_t>(xr[c]);
            sum += v;
            if (takes_max(v, best)) {
              best = v;
              idx = static_cast<int32_t>(c);
            }
          }
        } else {
          sum_max_strided<scalar_t, acc_t, UNIT>(xr, C, cs, sum, best);
          // First channel holding the max (the first NaN when the max is NaN).
          if (best == best) {
            while (static_cast<acc_t>(xr[idx * cs]) != best) ++idx;
          } else {
            while (static_cast<acc_t>(xr[idx * cs]) == static_cast<acc_t>(xr[idx * cs])) ++idx;
          }
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
// Forward pass 3: out = x * A
// ------------------------------------------------------------------------------------------------

template <typename scalar_t, bool UNIT, bool CHAN_INNER>
void scale(const Plan& pl, const Big<const scalar_t>& x, const Big<scalar_t>& out,
           const at::opmath_type<scalar_t>* attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = pl.C, S = pl.S;
  if constexpr (!CHAN_INNER) {
    const int64_t xs = UNIT ? 1 : pos_stride(pl, x), os = UNIT ? 1 : pos_stride(pl, out);
    for_each_channel_row(pl, [&](const Unit& un, int64_t c) {
      const scalar_t* xr = x.p + unit_offset(pl, x, un) + c * x.sc;
      scalar_t* orow = out.p + unit_offset(pl, out, un) + c * out.sc;
      const acc_t* a = attn + un.n * S + un.pos;
#pragma omp simd
      for (int64_t i = 0; i < un.len; ++i) orow[i * os] = static_cast<scalar_t>(static_cast<acc_t>(xr[i * xs]) * a[i]);
    });
    return;
  }
  at::parallel_for(0, pl.units(), 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const Unit un = unit_at(pl, u);
      const int64_t len = un.len;
      const scalar_t* xp = x.p + unit_offset(pl, x, un);
      scalar_t* op = out.p + unit_offset(pl, out, un);
      const acc_t* a = attn + un.n * S + un.pos;
      const int64_t xc = UNIT ? 1 : x.sc, oc = UNIT ? 1 : out.sc;
      const int64_t xs = pos_stride(pl, x), os = pos_stride(pl, out);
      for (int64_t i = 0; i < len; ++i) {
        const scalar_t* xr = xp + i * xs;
        scalar_t* orow = op + i * os;
        const acc_t ai = a[i];
        for (int64_t c = 0; c < C; ++c) orow[c * oc] = static_cast<scalar_t>(static_cast<acc_t>(xr[c * xc]) * ai);
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
        // Four channels per sweep over acc (a one-channel sweep is bound by the stores to acc).
        int64_t c = 0;
        for (; c + 4 <= C; c += 4) {
          const scalar_t* g0 = gp + c * g.sc;
          const scalar_t* x0 = xp + c * x.sc;
#pragma omp simd
          for (int64_t i = 0; i < len; ++i) {
            acc_t v = acc[i];
            for (int k = 0; k < 4; ++k) {
              v += static_cast<acc_t>(g0[k * g.sc + i * gs]) * static_cast<acc_t>(x0[k * x.sc + i * xs]);
            }
            acc[i] = v;
          }
        }
        for (; c < C; ++c) {
          const scalar_t* gr = gp + c * g.sc;
          const scalar_t* xr = xp + c * x.sc;
#pragma omp simd
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
  if constexpr (!CHAN_INNER) {
    const int64_t gs = UNIT ? 1 : pos_stride(pl, g), os = UNIT ? 1 : pos_stride(pl, gx);
    for_each_channel_row(pl, [&](const Unit& un, int64_t c) {
      const scalar_t* gr = g.p + unit_offset(pl, g, un) + c * g.sc;
      scalar_t* orow = gx.p + unit_offset(pl, gx, un) + c * gx.sc;
      const acc_t* a = attn + un.n * S + un.pos;
      const acc_t* m0 = gp + un.n * 2 * S + un.pos;
      const acc_t* m1 = m0 + S;
      const int32_t* am = argmax + un.n * S + un.pos;
      const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
      for (int64_t i = 0; i < un.len; ++i) {
        const acc_t peak = am[i] == ci ? m1[i] : acc_t(0);
        orow[i * os] = static_cast<scalar_t>((static_cast<acc_t>(gr[i * gs]) * a[i] + m0[i]) + peak);
      }
    });
    return;
  }
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
    }
  });
}

