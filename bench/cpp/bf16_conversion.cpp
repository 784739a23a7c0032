// float32 -> bfloat16 on AVX-512: the CPU kernels' conversion (ATen's Vectorized<BFloat16>,
// rounding to nearest even in integer lanes, vec512_bfloat16.h's cvtfp32_bf16) against the
// AVX-512 BF16 instruction (vcvtne2ps2bf16). Issue 26 asked to measure both and keep the
// faster; this measures them alone, on the result sizes the kernels write, and lists the
// inputs whose results differ. Built and run by bench/bf16_conversion.py.
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

// ATen's cvtfp32_bf16(a, b), its steps as written there.
__m512i integer_rounding(__m512 a, __m512 b) {
  const __m512i lo = _mm512_castps_si512(a), hi = _mm512_castps_si512(b);
  const __m512i nan = _mm512_set1_epi32(0xffff);
  const __m512i ones = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
  const auto ordered_lo = _mm512_cmp_ps_mask(a, a, _CMP_ORD_Q);
  const auto ordered_hi = _mm512_cmp_ps_mask(b, b, _CMP_ORD_Q);
  __m512i t_lo = _mm512_and_si512(_mm512_srli_epi32(lo, 16), ones);
  __m512i t_hi = _mm512_and_si512(_mm512_srli_epi32(hi, 16), ones);
  t_lo = _mm512_add_epi32(_mm512_add_epi32(t_lo, bias), lo);
  t_hi = _mm512_add_epi32(_mm512_add_epi32(t_hi, bias), hi);
  t_lo = _mm512_mask_blend_epi32(ordered_lo, nan, _mm512_srli_epi32(t_lo, 16));
  t_hi = _mm512_mask_blend_epi32(ordered_hi, nan, _mm512_srli_epi32(t_hi, 16));
  const __m512i packed = _mm512_packus_epi32(t_lo, t_hi);
  return _mm512_permutexvar_epi64(_mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0), packed);
}

__attribute__((target("avx512bf16"))) __m512i instruction(__m512 a, __m512 b) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
}

// The best of `repeats` passes converting n floats (a multiple of 32), in ms.
template <typename Convert>
double best_ms(const float* x, uint16_t* y, size_t n, int repeats, Convert convert) {
  double best = 1e30;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < n; i += 32) {
      _mm512_storeu_si512(y + i, convert(_mm512_loadu_ps(x + i), _mm512_loadu_ps(x + i + 16)));
    }
    const std::chrono::duration<double, std::milli> t = std::chrono::steady_clock::now() - start;
    best = t.count() < best ? t.count() : best;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::printf("skipped: this CPU has no AVX-512 BF16\n");
    return 0;
  }
  const double mib = argc > 1 ? std::atof(argv[1]) : 32.0;  // of float32 input
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 15;
  std::mt19937 generator(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (double size : {0.25, mib}) {  // in cache; the kernels' result size
    const size_t n = static_cast<size_t>(size * (1 << 20) / 4) / 32 * 32;
    std::vector<float> x(n);
    for (float& v : x) v = normal(generator);
    std::vector<uint16_t> a(n), b(n);
    const double t_int = best_ms(x.data(), a.data(), n, repeats, integer_rounding);
    const double t_ins = best_ms(x.data(), b.data(), n, repeats, instruction);
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) differ += a[i] != b[i];
    std::printf("time %g MiB: integer %.4f ms, instruction %.4f ms; %zu of %zu normal results differ\n",
                size, t_int, t_ins, differ, n);
  }
  // Inputs at the edges: subnormal results, NaN, the largest values, ties.
  float edges[32] = {1e-39f, -1e-39f, 1.1e-38f, 5e-40f, 1e-45f, 1.17549435e-38f, NAN, -NAN,
                     INFINITY, -INFINITY, 3.3895314e38f, 3.40282347e38f, 1.0f + 1.0f / 256,
                     1.0f + 3.0f / 256, 0.0f, -0.0f};
  for (int i = 16; i < 32; ++i) edges[i] = std::ldexp(1.0f + i / 64.0f, -150 + 2 * i);
  uint16_t by_int[32], by_ins[32];
  _mm512_storeu_si512(by_int, integer_rounding(_mm512_loadu_ps(edges), _mm512_loadu_ps(edges + 16)));
  _mm512_storeu_si512(by_ins, instruction(_mm512_loadu_ps(edges), _mm512_loadu_ps(edges + 16)));
  for (int i = 0; i < 32; ++i) {
    if (by_int[i] != by_ins[i]) {
      std::printf("differs %.9g: integer 0x%04x, instruction 0x%04x\n", edges[i], by_int[i],
                  by_ins[i]);
    }
  }
  return 0;
}
