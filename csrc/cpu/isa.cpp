#include "isa.h"

#include <cstdlib>
#include <string>

namespace meranet::cpu_isa {

bool use_avx2() {
#ifdef MERANET_CPU_HAVE_AVX2
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* isa = std::getenv("MERANET_CPU_ISA");
  return cpu_has && !(isa != nullptr && std::string(isa) == "default");
#else
  return false;
#endif
}

}  // namespace meranet::cpu_isa
