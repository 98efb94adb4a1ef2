// Compiles a kernel header twice (csrc/cpu/isa.h): into namespace <PREFIX>_default for baseline
// x86-64 and into <PREFIX>_avx2 under `#pragma GCC target("avx2,fma")` with fp-contract=fast (so
// multiply-adds become FMAs), each copy preceded by the SIMD helpers (csrc/cpu/simd.h) with vectors of
// MERANET_VEC_BYTES = 16 and 32 bytes.
//
//   #define MERANET_KERNELS_HEADER "st_attention_cpu_kernels.h"
//   #define MERANET_KERNELS_PREFIX maps
//   #include "isa_variants.h"
//   ... MERANET_ISA_PICK(maps, fn, template args...)(args...)
//
// No include guard: it is meant to be included once per kernel header; it undefines both macros.

#ifndef MERANET_KERNELS_HEADER
#error "define MERANET_KERNELS_HEADER and MERANET_KERNELS_PREFIX before including isa_variants.h"
#endif

#define MERANET_ISA_CAT2(a, b) a##b
#define MERANET_ISA_CAT(a, b) MERANET_ISA_CAT2(a, b)

// -Wpsabi (for the rest of the file, where the templates are instantiated): the 32-byte vector
// helpers are internal and inlined, so no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
#define MERANET_VEC_BYTES 16
namespace MERANET_ISA_CAT(MERANET_KERNELS_PREFIX, _default) {
#include "simd.h"
#include MERANET_KERNELS_HEADER
}  // namespace
#ifdef MERANET_CPU_HAVE_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#undef MERANET_VEC_BYTES
#define MERANET_VEC_BYTES 32
namespace MERANET_ISA_CAT(MERANET_KERNELS_PREFIX, _avx2) {
#include "simd.h"
#include MERANET_KERNELS_HEADER
}  // namespace
#pragma GCC pop_options
#endif

#undef MERANET_VEC_BYTES
#undef MERANET_ISA_CAT
#undef MERANET_ISA_CAT2
#undef MERANET_KERNELS_HEADER
#undef MERANET_KERNELS_PREFIX
