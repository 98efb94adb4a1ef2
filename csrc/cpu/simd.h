// SIMD helpers of the CPU kernels: 32-byte vectors (GCC vector extensions), unaligned loads and
// stores, widening loads, a vector exp / sigmoid and the NaN-aware running-max test.
//
// Like the kernel headers that use it, this file is included inside a namespace once per instruction
// set (csrc/cpu/isa.h): the same code becomes ymm instructions under `#pragma GCC target("avx2,fma")`
// and pairs of xmm instructions for baseline x86-64. So it has no include guard and includes nothing;
// the includer provides <ATen/OpMathType.h>, <cmath>, <cstdint> and <type_traits>.

// 32-byte SIMD vectors (GCC vector extensions): ymm registers where AVX2 is compiled in, pairs of xmm
// registers otherwise.
template <typename T>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <>
struct Vec32<int32_t> {
  typedef int32_t type __attribute__((vector_size(32)));
};
template <>
struct Vec32<int64_t> {
  typedef int64_t type __attribute__((vector_size(32)));
};
template <typename T>
using vec_t = typename Vec32<T>::type;
template <typename T>
constexpr int kLanesOf = 32 / sizeof(T);

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
    typedef uint16_t u16x8 __attribute__((vector_size(16)));
    u16x8 bits;
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
