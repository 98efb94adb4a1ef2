// Run-time choice of the instruction set of the CPU kernels.
//
// A kernel header is compiled twice, into `<prefix>_default` (baseline x86-64) and `<prefix>_avx2`
// (under `#pragma GCC target("avx2,fma")` with fp-contract=fast, so multiply-adds become FMAs), each
// copy including csrc/cpu/simd.h first; MERANET_ISA_PICK(prefix, fn, args...) names the copy of
// fn<args...> to call on this CPU.
#pragma once

namespace meranet::cpu_isa {

// True when the CPU has AVX2 and FMA, unless the environment sets MERANET_CPU_ISA=default.
bool use_avx2();

}  // namespace meranet::cpu_isa

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MERANET_CPU_HAVE_AVX2 1
#define MERANET_ISA_PICK(prefix, fn, ...) \
  (::meranet::cpu_isa::use_avx2() ? prefix##_avx2::fn<__VA_ARGS__> : prefix##_default::fn<__VA_ARGS__>)
#else
#define MERANET_ISA_PICK(prefix, fn, ...) prefix##_default::fn<__VA_ARGS__>
#endif
