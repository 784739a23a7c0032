// The CPU kernels' SIMD level, chosen once at load as ATen chooses its own: the highest level
// built (build_config.cpu_levels) that torch's at::get_cpu_capability() allows, so that
// ATEN_CPU_CAPABILITY=avx2 or =default moves these kernels with torch's. Baseline code: it
// runs on every CPU, and calls into a level's kernels only where that level can run.
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <string>

#include "../glu_kernels.h"

namespace glu_fused {

// Each level's entry points (glu_cpu.cpp, compiled with -DCPU_CAPABILITY=<level>).
#define GLU_DECLARE_LEVEL(NAME)                            \
  namespace NAME {                                         \
  void gated_forward_cpu(const ForwardCall& call);         \
  void gated_backward_cpu(const BackwardCall& call);       \
  void gated_forward_fp8_cpu(const Fp8Call& call);         \
  }
#ifdef GLU_FUSED_CPU_LEVEL_DEFAULT
GLU_DECLARE_LEVEL(DEFAULT)
#endif
#ifdef GLU_FUSED_CPU_LEVEL_AVX2
GLU_DECLARE_LEVEL(AVX2)
#endif
#ifdef GLU_FUSED_CPU_LEVEL_AVX512
GLU_DECLARE_LEVEL(AVX512)
#endif
#undef GLU_DECLARE_LEVEL

namespace {

struct Level {
  const char* name = nullptr;  // nullptr: no level built can run here
  void (*forward)(const ForwardCall&) = nullptr;
  void (*backward)(const BackwardCall&) = nullptr;
  void (*forward_fp8)(const Fp8Call&) = nullptr;
};

#define GLU_LEVEL(NAME, name) \
  Level { name, &NAME::gated_forward_cpu, &NAME::gated_backward_cpu, &NAME::gated_forward_fp8_cpu }

// The highest level built at or below torch's (at::get_cpu_capability(): "AVX512", "AVX2",
// or a baseline's name).
Level choose() {
  const std::string torch_level = at::get_cpu_capability();
  [[maybe_unused]] const bool avx512 = torch_level == "AVX512";
  [[maybe_unused]] const bool avx2 = avx512 || torch_level == "AVX2";
#ifdef GLU_FUSED_CPU_LEVEL_AVX512
  if (avx512) return GLU_LEVEL(AVX512, "avx512");
#endif
#ifdef GLU_FUSED_CPU_LEVEL_AVX2
  if (avx2) return GLU_LEVEL(AVX2, "avx2");
#endif
#ifdef GLU_FUSED_CPU_LEVEL_DEFAULT
  return GLU_LEVEL(DEFAULT, "default");
#else
  return {};
#endif
}
#undef GLU_LEVEL

const Level& level() {
  static const Level chosen = choose();
  return chosen;
}

const Level& runnable() {
  const Level& l = level();
  TORCH_CHECK(l.name != nullptr, "glu_fused: the CPU kernels were built for ", cpu_levels_built(),
              " alone, above the level torch runs here; rebuild without "
              "GLU_FUSED_CPU_CAPABILITY to build every level");
  return l;
}

}  // namespace

void gated_forward_cpu(const ForwardCall& call) { runnable().forward(call); }

void gated_backward_cpu(const BackwardCall& call) { runnable().backward(call); }

void gated_forward_fp8_cpu(const Fp8Call& call) { runnable().forward_fp8(call); }

const char* cpu_level() { return level().name != nullptr ? level().name : "none"; }

const char* cpu_levels_built() {
  static const std::string names = [] {
    std::string out;
    for (const char* name : {
#ifdef GLU_FUSED_CPU_LEVEL_DEFAULT
             "default",
#endif
#ifdef GLU_FUSED_CPU_LEVEL_AVX2
             "avx2",
#endif
#ifdef GLU_FUSED_CPU_LEVEL_AVX512
             "avx512",
#endif
         }) {
      out += (out.empty() ? "" : ",") + std::string(name);
    }
    return out;
  }();
  return names.c_str();
}

}  // namespace glu_fused
