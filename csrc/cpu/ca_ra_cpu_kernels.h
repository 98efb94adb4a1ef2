// Vectorised row kernels of the channel-attention and residual-attention-tail CPU operators
// (channel_attention_cpu.cpp, ra_tail_cpu.cpp), on one sample seen as [C, S] (NCTHW) or [S, C]
// (channels_last_3d).
//  * Pooling: sum, max and first argmax over positions (channel attention) or over channels (the
//    tail's spatio-temporal pooling). The reduction along the contiguous dimension keeps a running
//    max and argmax per vector lane and merges the lanes at the end; the reduction across it folds
//    rows into running sums, maxima and argmaxes (fold_rows in simd.h).
//  * Channel scaling out = y * a, and the tail's backward pass over the activations: the ReLU mask
//    and the attention-map gradient, branch-free (the mask is data-dependent and unpredictable).
//
// Max semantics (takes_max in simd.h): a NaN wins over any number, like torch.amax; of equal values
// the first keeps the argmax.
//
// Compiled once per instruction set (csrc/cpu/isa_variants.h), after simd.h; no include guard. The
// includer provides <ATen/OpMathType.h>, <algorithm>, <limits> and <vector>.

// Integer lanes as wide as acc_t's, so a comparison mask of acc_t vectors selects them: per-lane argmax.
template <typename acc_t>
using lane_index_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;

template <typename acc_t>
struct RowStats {
  acc_t sum, max;
  int64_t argmax;
};

// Sum, max and first argmax over i < len (< 2^31) of u[i] = v[i], times mul[i] when SCALED.
// CHAINS independent sets of vector accumulators hide the add / blend latencies (kChains for long
// rows; short rows take one chain, whose final merge of the lanes costs a quarter). Without NAN_AWARE
// a plain `>` (fewer instructions) ignores NaNs; reduce_row below redoes a row whose sum is NaN.
constexpr int kChains = 4;

template <typename scalar_t, bool SCALED, bool NAN_AWARE, int CHAINS>
RowStats<at::opmath_type<scalar_t>> reduce_row_pass(const scalar_t* v, const at::opmath_type<scalar_t>* mul,
                                                    int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = vec_t<acc_t>;
  using I = vec_t<lane_index_t<acc_t>>;
  constexpr int L = kLanesOf<acc_t>;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  RowStats<acc_t> r{acc_t(0), neg_inf, 0};
  int64_t i = 0;
  if (len >= CHAINS * L) {
    V sum[CHAINS], best[CHAINS];
    I idx[CHAINS], arg[CHAINS];
    lane_index_t<acc_t> iota[CHAINS * L];
    for (int j = 0; j < CHAINS * L; ++j) iota[j] = j;
    for (int k = 0; k < CHAINS; ++k) {
      sum[k] = V{};
      best[k] = V{} + neg_inf;
      idx[k] = loadu(iota + k * L);
      arg[k] = idx[k];
    }
    for (; i + CHAINS * L <= len; i += CHAINS * L) {
      for (int k = 0; k < CHAINS; ++k) {
        V u = load_acc(v + i + k * L);
        if constexpr (SCALED) u = u * loadu(mul + i + k * L);
        sum[k] += u;
        I take;
        if constexpr (NAN_AWARE) {
          take = takes_max_vec(u, best[k]);
        } else {
          take = u > best[k];
        }
        best[k] = take ? u : best[k];
        arg[k] = take ? idx[k] : arg[k];
        idx[k] += CHAINS * L;
      }
    }
    // Merge the chains and lanes; of equal maxima (or NaNs) the smaller index.
    V total = sum[0];
    for (int k = 1; k < CHAINS; ++k) total += sum[k];
    r = {total[0], best[0][0], arg[0][0]};
    for (int j = 1; j < L; ++j) r.sum += total[j];
    for (int k = 0; k < CHAINS; ++k) {
      for (int j = 0; j < L; ++j) {
        const acc_t b = best[k][j];
        const bool same = b == r.max || (b != b && r.max != r.max);
        if (takes_max(b, r.max) || (same && arg[k][j] < r.argmax)) {
          r.max = b;
          r.argmax = arg[k][j];
        }
      }
    }
  }
  for (; i < len; ++i) {
    acc_t u = static_cast<acc_t>(v[i]);
    if constexpr (SCALED) u *= mul[i];
    r.sum += u;
    if (takes_max(u, r.max)) {
      r.max = u;
      r.argmax = i;
    }
  }
  return r;
}

template <typename scalar_t, bool SCALED, int CHAINS>
RowStats<at::opmath_type<scalar_t>> reduce_row_chains(const scalar_t* v, const at::opmath_type<scalar_t>* mul,
                                                      int64_t len) {
  const auto r = reduce_row_pass<scalar_t, SCALED, false, CHAINS>(v, mul, len);
  return r.sum == r.sum ? r : reduce_row_pass<scalar_t, SCALED, true, CHAINS>(v, mul, len);
}

// A NaN in the row makes its sum NaN: only then is the NaN-aware pass needed.
template <typename scalar_t, bool SCALED>
RowStats<at::opmath_type<scalar_t>> reduce_row(const scalar_t* v, const at::opmath_type<scalar_t>* mul,
                                               int64_t len) {
  constexpr int64_t kShortRow = 4 * kChains * kLanesOf<at::opmath_type<scalar_t>>;
  return len < kShortRow ? reduce_row_chains<scalar_t, SCALED, 1>(v, mul, len)
                         : reduce_row_chains<scalar_t, SCALED, kChains>(v, mul, len);
}

// Channel attention, NCTHW: sum, max and first argmax of each of `rows` consecutive rows
// v[r * len, (r + 1) * len), len < 2^31 (one call per task: the rows may be short).
template <typename scalar_t>
void pool_rows(const scalar_t* v, int64_t rows, int64_t len, at::opmath_type<scalar_t>* sum,
               at::opmath_type<scalar_t>* best, int64_t* arg) {
  for (int64_t r = 0; r < rows; ++r) {
    const auto st = reduce_row<scalar_t, false>(v + r * len, nullptr, len);
    sum[r] = st.sum;
    best[r] = st.max;
    arg[r] = st.argmax;
  }
}

// Channel attention, channels_last_3d: for every channel c of the sample yn ([S, C]), the sum, max and
// first argmax (a flat position) of y over the positions [s0, s1), s1 - s0 < 2^31.
template <typename scalar_t>
void pool_positions_cl(const scalar_t* yn, int64_t C, int64_t s0, int64_t s1, at::opmath_type<scalar_t>* sum,
                       at::opmath_type<scalar_t>* best, int64_t* arg) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<lane_index_t<acc_t>> first(C, 0);
  std::fill(sum, sum + C, acc_t(0));
  std::fill(best, best + C, -std::numeric_limits<acc_t>::infinity());
  fold_all_rows<true>(yn + s0 * C, s1 - s0, C, 1, static_cast<const acc_t*>(nullptr), lane_index_t<acc_t>(0), C, sum,
                      best, first.data());
  for (int64_t c = 0; c < C; ++c) arg[c] = s0 + first[c];
}

// Residual-attention tail: for every position s in [s0, s1) of the sample yn, the sum, max and first
// argmax (a channel, C < 2^31) over channels of u = y * scale[c]; written to sum/best/arg[s - s0].
template <typename scalar_t, bool CL>
void pool_channels(const scalar_t* yn, const at::opmath_type<scalar_t>* scale, int64_t C, int64_t S, int64_t s0,
                   int64_t s1, at::opmath_type<scalar_t>* sum, at::opmath_type<scalar_t>* best, int32_t* arg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t len = s1 - s0;
  if (!CL) {
    std::fill(sum, sum + len, acc_t(0));
    std::fill(best, best + len, -std::numeric_limits<acc_t>::infinity());
    std::fill(arg, arg + len, 0);
    fold_all_rows<true>(yn + s0, C, S, 1, scale, int32_t(0), len, sum, best, arg);
  } else {
    for (int64_t i = 0; i < len; ++i) {
      const RowStats<acc_t> st = reduce_row<scalar_t, true>(yn + (s0 + i) * C, scale, C);
      sum[i] = st.sum;
      best[i] = st.max;
      arg[i] = static_cast<int32_t>(st.argmax);
    }
  }
}

// Residual-attention tail backward, the ReLU mask: gz = g * [out > 0] (written), and the terms
// gz * y * m of the attention-map gradient gA = sum_c gz * y * scale[c].

// channels_last_3d, one position's channels [0, len) (m[i] = mul[i]): returns sum_i gz[i] * y[i] * m[i].
template <typename scalar_t>
at::opmath_type<scalar_t> relu_grad_dot(const scalar_t* g, const scalar_t* out, const scalar_t* y,
                                        const at::opmath_type<scalar_t>* mul, int64_t len, scalar_t* gz) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = vec_t<acc_t>;
  constexpr int L = kLanesOf<acc_t>;
  V dot = V{};
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {  // gz is written in acc_t: a vector store
    for (; i + L <= len; i += L) {
      const V gzv = loadu(out + i) > V{} ? loadu(g + i) : V{};
      storeu(gz + i, gzv);
      dot += gzv * loadu(y + i) * loadu(mul + i);
    }
  }
  acc_t total = 0;
  for (int j = 0; j < L; ++j) total += dot[j];
  for (; i < len; ++i) {
    const acc_t gv = static_cast<acc_t>(out[i]) > acc_t(0) ? static_cast<acc_t>(g[i]) : acc_t(0);
    gz[i] = static_cast<scalar_t>(gv);
    total += gv * static_cast<acc_t>(y[i]) * mul[i];
  }
  return total;
}

// NCTHW, NR channel rows (row_stride apart, scales mul[0 .. NR)) over positions [0, len): adds their
// terms to gA[i] in row order, gA loaded and stored once per NR rows.
template <int NR, typename scalar_t>
inline void relu_grad_fold(const scalar_t* g, const scalar_t* out, const scalar_t* y,
                           const at::opmath_type<scalar_t>* mul, int64_t row_stride, int64_t len, scalar_t* gz,
                           at::opmath_type<scalar_t>* gA) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = vec_t<acc_t>;
  constexpr int L = kLanesOf<acc_t>;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; i + L <= len; i += L) {
      V acc = loadu(gA + i);
      for (int r = 0; r < NR; ++r) {
        const int64_t o = r * row_stride + i;
        const V gzv = loadu(out + o) > V{} ? loadu(g + o) : V{};
        storeu(gz + o, gzv);
        acc += gzv * loadu(y + o) * mul[r];
      }
      storeu(gA + i, acc);
    }
  }
  for (; i < len; ++i) {
    acc_t acc = gA[i];
    for (int r = 0; r < NR; ++r) {
      const int64_t o = r * row_stride + i;
      const acc_t gv = static_cast<acc_t>(out[o]) > acc_t(0) ? static_cast<acc_t>(g[o]) : acc_t(0);
      gz[o] = static_cast<scalar_t>(gv);
      acc += gv * static_cast<acc_t>(y[o]) * mul[r];
    }
    gA[i] = acc;
  }
}

// relu_grad_fold over `rows` channel rows: groups of kFoldRows, then the rest one by one.
template <typename scalar_t>
void relu_grad_rows(const scalar_t* g, const scalar_t* out, const scalar_t* y, const at::opmath_type<scalar_t>* mul,
                    int64_t rows, int64_t row_stride, int64_t len, scalar_t* gz, at::opmath_type<scalar_t>* gA) {
  int64_t r = 0;
  for (; r + kFoldRows <= rows; r += kFoldRows) {
    const int64_t o = r * row_stride;
    relu_grad_fold<kFoldRows>(g + o, out + o, y + o, mul + r, row_stride, len, gz + o, gA);
  }
  for (; r < rows; ++r) {
    const int64_t o = r * row_stride;
    relu_grad_fold<1>(g + o, out + o, y + o, mul + r, row_stride, len, gz + o, gA);
  }
}

// out[i] = v[i] * m[i] with m[i] = mul[i] (PER_ELEMENT) or mul[0].
template <typename scalar_t, bool PER_ELEMENT>
void scale_row(const scalar_t* v, const at::opmath_type<scalar_t>* mul, int64_t len, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = vec_t<acc_t>;
  constexpr int L = kLanesOf<acc_t>;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    const V m0 = V{} + mul[0];
    for (; i + L <= len; i += L) storeu(out + i, loadu(v + i) * (PER_ELEMENT ? loadu(mul + i) : m0));
  }
  for (; i < len; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(v[i]) * mul[PER_ELEMENT ? i : 0]);
}

// Channel-attention backward along one (n, c) row of positions [0, len) (NCTHW). The gradient wrt
// u = y * a is gu = g without STA; with STA (the fused tail: a spatio-temporal attention follows) it is
// gu = g * A + gp0 * inv_c + gp1 * [I == c], from that attention's per-position maps of sample n.
template <typename scalar_t, bool STA>
inline at::opmath_type<scalar_t> gu_at(const scalar_t* g, const at::opmath_type<scalar_t>* A,
                                       const at::opmath_type<scalar_t>* gp0, const at::opmath_type<scalar_t>* gp1,
                                       const int32_t* I, int32_t c, at::opmath_type<scalar_t> inv_c, int64_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t gu = static_cast<acc_t>(g[i]);
  if constexpr (STA) gu = gu * A[i] + gp0[i] * inv_c + (I[i] == c ? gp1[i] : acc_t(0));
  return gu;
}

// The vector form of gu_at (STA needs int32 lanes as wide as acc_t's: float only).
template <typename scalar_t, bool STA>
inline vec_t<at::opmath_type<scalar_t>> gu_vec(const scalar_t* g, const at::opmath_type<scalar_t>* A,
                                               const at::opmath_type<scalar_t>* gp0,
                                               const at::opmath_type<scalar_t>* gp1, const int32_t* I, int32_t c,
                                               at::opmath_type<scalar_t> inv_c, int64_t i) {
  using V = vec_t<at::opmath_type<scalar_t>>;
  V gu = load_acc(g + i);
  if constexpr (STA) {
    const vec_t<int32_t> hit = loadu(I + i) == (vec_t<int32_t>{} + c);
    gu = gu * loadu(A + i) + loadu(gp0 + i) * inv_c + (hit ? loadu(gp1 + i) : V{});
  }
  return gu;
}

template <typename scalar_t, bool STA>
constexpr bool kGuVectorised = !STA || std::is_same_v<at::opmath_type<scalar_t>, float>;

// sum_i gu[i] * y[i], in kChains fixed-order vector chains.
template <typename scalar_t, bool STA>
at::opmath_type<scalar_t> grad_dot_row(const scalar_t* g, const scalar_t* y, const at::opmath_type<scalar_t>* A,
                                       const at::opmath_type<scalar_t>* gp0, const at::opmath_type<scalar_t>* gp1,
                                       const int32_t* I, int32_t c, at::opmath_type<scalar_t> inv_c, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = vec_t<acc_t>;
  constexpr int L = kLanesOf<acc_t>;
  int64_t i = 0;
  acc_t total = 0;
  if constexpr (kGuVectorised<scalar_t, STA>) {
    V dot[kChains] = {};
    for (; i + kChains * L <= len; i += kChains * L) {
      for (int k = 0; k < kChains; ++k) {
        const int64_t j = i + k * L;
        dot[k] += gu_vec<scalar_t, STA>(g, A, gp0, gp1, I, c, inv_c, j) * load_acc(y + j);
      }
    }
    V sum = dot[0];
    for (int k = 1; k < kChains; ++k) sum += dot[k];
    for (int j = 0; j < L; ++j) total += sum[j];
  }
  for (; i < len; ++i) total += gu_at<scalar_t, STA>(g, A, gp0, gp1, I, c, inv_c, i) * static_cast<acc_t>(y[i]);
  return total;
}

// out[i] = gu[i] * av + mean_term (the max term at the argmax is the caller's).
template <typename scalar_t, bool STA>
void input_grad_row(const scalar_t* g, const at::opmath_type<scalar_t>* A, const at::opmath_type<scalar_t>* gp0,
                    const at::opmath_type<scalar_t>* gp1, const int32_t* I, int32_t c, at::opmath_type<scalar_t> inv_c,
                    at::opmath_type<scalar_t> av, at::opmath_type<scalar_t> mean_term, int64_t len, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int L = kLanesOf<acc_t>;
  int64_t i = 0;
  if constexpr (kGuVectorised<scalar_t, STA> && std::is_same_v<scalar_t, acc_t>) {
    for (; i + L <= len; i += L) storeu(out + i, gu_vec<scalar_t, STA>(g, A, gp0, gp1, I, c, inv_c, i) * av + mean_term);
  }
  for (; i < len; ++i) {
    out[i] = static_cast<scalar_t>(gu_at<scalar_t, STA>(g, A, gp0, gp1, I, c, inv_c, i) * av + mean_term);
  }
}
