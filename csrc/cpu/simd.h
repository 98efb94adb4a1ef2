// SIMD helpers of the CPU kernels: native-width vectors (GCC vector extensions), unaligned loads and
// stores, widening loads, a vector exp / sigmoid, the NaN-aware running-max test and the row fold of
// the pooling reductions across the contiguous dimension.
//
// Like the kernel headers that use it, this file is included inside a namespace once per instruction
// set (csrc/cpu/isa.h): the same code becomes ymm instructions under `#pragma GCC target("avx2,fma")`
// and xmm instructions for baseline x86-64. So it has no include guard and includes nothing;
// the includer provides <ATen/OpMathType.h>, <cmath>, <cstdint> and <type_traits>.

// SIMD vectors (GCC vector extensions) as wide as the instruction set of the copy being compiled:
// kVecBytes = MERANET_VEC_BYTES, set by csrc/cpu/isa_variants.h to 32 (ymm registers) for the AVX2 copy
// and 16 (xmm registers) for baseline x86-64. (32-byte vectors on baseline x86-64 would be split into xmm
// pairs and their selects partly scalarised: up to 25x slower.)
constexpr int kVecBytes = MERANET_VEC_BYTES;
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using vec_t = typename Vec<T>::type;
template <typename T>
constexpr int kLanesOf = kVecBytes / sizeof(T);

template <typename T>
inline vec_t<T> loadu(const T* p) {
  vec_t<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void storeu(T* p, vec_t<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// exp(x) for float vectors (relative error ~1e-7 on the clamped range): x = n ln2 + f, |f| <= ln2 / 2,
// exp(f) by its degree-7 Taylor polynomial (remainder < 6e-9 relative), 2^n from the exponent bits.
inline vec_t<float> exp_vec(vec_t<float> x) {
  using vf = vec_t<float>;
  using vi = vec_t<int32_t>;
  const vf lo = vf{} - 87.0f, hi = vf{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + round_magic) - round_magic;
  const vf f = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;  // ln2 split hi / lo
  vf p = vf{} + 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)bits;  // GCC vector cast: reinterprets the bits
}
inline vec_t<double> exp_vec(vec_t<double> x) {
  vec_t<double> y;
  for (int j = 0; j < kLanesOf<double>; ++j) y[j] = std::exp(x[j]);
  return y;
}

template <typename acc_t>
inline vec_t<acc_t> sigmoid_vec(vec_t<acc_t> v) {
  return acc_t(1) / (acc_t(1) + exp_vec(-v));
}

// kLanesOf<acc_t> consecutive elements of a scalar_t array, widened to the accumulation type.
template <typename scalar_t>
inline vec_t<at::opmath_type<scalar_t>> load_acc(const scalar_t* p) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return loadu(p);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    typedef uint16_t u16_lanes __attribute__((vector_size(kVecBytes / 2)));
    u16_lanes bits;
    __builtin_memcpy(&bits, p, sizeof(bits));
    const vec_t<int32_t> wide = __builtin_convertvector(bits, vec_t<int32_t>) << 16;
    return (vec_t<float>)wide;  // bfloat16 is the high half of a float
  } else {
    vec_t<acc_t> v;
    for (int j = 0; j < kLanesOf<acc_t>; ++j) v[j] = static_cast<acc_t>(p[j]);
    return v;
  }
}

// (v > best) or (v is NaN and best is not): v becomes the running max. A NaN wins over any number
// (torch.amax propagates NaN); of equal values the first is kept.
template <typename acc_t>
inline bool takes_max(acc_t v, acc_t best) {
  return (v > best) | ((v != v) & (best == best));
}

// Vector takes_max: the lanes where v becomes the running max.
template <typename V>
inline auto takes_max_vec(V v, V best) {
  return (v > best) | ((v != v) & (best == best));
}

// Folds NR rows into running per-element statistics, in row order: for r < NR and i < len,
// u = v[r * row_stride + i * elem_stride] (times mul[r] when mul is given), sum[i] += u, and where u
// takes the max (takes_max), best[i] = u and arg[i] = index0 + r. The running values stay in registers
// across the NR rows: one load and one store of them per NR rows instead of per row (the stores bound
// a one-row fold). Vectorised for unit element stride and an index type as wide as acc_t.
template <int NR, bool UNIT, typename scalar_t, typename acc_t, typename idx_t>
inline void fold_rows(const scalar_t* v, int64_t row_stride, int64_t elem_stride, const acc_t* mul, idx_t index0,
                      int64_t len, acc_t* sum, acc_t* best, idx_t* arg) {
  acc_t m[NR];
  for (int r = 0; r < NR; ++r) m[r] = mul != nullptr ? mul[r] : acc_t(1);
  int64_t i = 0;
  if constexpr (UNIT && sizeof(idx_t) == sizeof(acc_t)) {
    using V = vec_t<acc_t>;
    using I = vec_t<idx_t>;
    constexpr int L = kLanesOf<acc_t>;
    for (; i + L <= len; i += L) {
      V s = loadu(sum + i), b = loadu(best + i);
      I a = loadu(arg + i);
      for (int r = 0; r < NR; ++r) {
        V u = load_acc(v + r * row_stride + i);
        if (mul != nullptr) u = u * m[r];
        s += u;
        const I take = takes_max_vec(u, b);
        b = take ? u : b;
        a = take ? I{} + static_cast<idx_t>(index0 + r) : a;
      }
      storeu(sum + i, s);
      storeu(best + i, b);
      storeu(arg + i, a);
    }
  }
  const int64_t es = UNIT ? 1 : elem_stride;
  for (; i < len; ++i) {
    acc_t s = sum[i], b = best[i];
    idx_t a = arg[i];
    for (int r = 0; r < NR; ++r) {
      const acc_t u = static_cast<acc_t>(v[r * row_stride + i * es]) * m[r];
      s += u;
      if (takes_max(u, b)) {
        b = u;
        a = static_cast<idx_t>(index0 + r);
      }
    }
    sum[i] = s;
    best[i] = b;
    arg[i] = a;
  }
}

constexpr int kFoldRows = 4;

// fold_rows over `rows` rows: groups of kFoldRows, then the rest one by one.
template <bool UNIT, typename scalar_t, typename acc_t, typename idx_t>
inline void fold_all_rows(const scalar_t* v, int64_t rows, int64_t row_stride, int64_t elem_stride, const acc_t* mul,
                          idx_t index0, int64_t len, acc_t* sum, acc_t* best, idx_t* arg) {
  int64_t r = 0;
  for (; r + kFoldRows <= rows; r += kFoldRows) {
    fold_rows<kFoldRows, UNIT>(v + r * row_stride, row_stride, elem_stride, mul != nullptr ? mul + r : nullptr,
                               static_cast<idx_t>(index0 + r), len, sum, best, arg);
  }
  for (; r < rows; ++r) {
    fold_rows<1, UNIT>(v + r * row_stride, row_stride, elem_stride, mul != nullptr ? mul + r : nullptr,
                       static_cast<idx_t>(index0 + r), len, sum, best, arg);
  }
}
