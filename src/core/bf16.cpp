#include "core/bf16.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#define AMPIPE_BF16_X86 1
#else
#define AMPIPE_BF16_X86 0
#endif

namespace ampipe {

namespace detail {

bool bf16_cpu_has_avx512bf16() {
#if AMPIPE_BF16_X86
  // libgcc / compiler-rt also check that the OS saves the AVX-512 registers (XCR0).
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// Branch-free per element, so the compiler vectorises both loops with the build's ISA.
void to_bf16_portable(const float* in, bf16* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_bf16(in[i]);
}

void to_float_portable(const bf16* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_float(in[i]);
}

#if AMPIPE_BF16_X86
#define AMPIPE_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// True when one of the 16 floats is subnormal: |bits| - 1 < 0x7FFFFF as unsigned (zero wraps).
AMPIPE_TARGET_AVX512BF16 static inline bool any_subnormal(__m512 x) {
  const __m512i magnitude = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i below = _mm512_sub_epi32(magnitude, _mm512_set1_epi32(1));
  return _mm512_cmplt_epu32_mask(below, _mm512_set1_epi32(0x7FFFFF)) != 0;
}

AMPIPE_TARGET_AVX512BF16 void to_bf16_avx512bf16(const float* in, bf16* out, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 low = _mm512_loadu_ps(in + i);
    const __m512 high = _mm512_loadu_ps(in + i + 16);
    if (any_subnormal(low) || any_subnormal(high)) {
      // VCVTNE2PS2BF16 flushes subnormals to zero; the contract keeps them (core/bf16.h).
      to_bf16_portable(in + i, out + i, 32);
      continue;
    }
    // The second operand fills the lower 16 results, the first the upper 16.
    const __m512bh packed = _mm512_cvtne2ps_pbh(high, low);
    std::memcpy(out + i, &packed, sizeof(packed));
  }
  to_bf16_portable(in + i, out + i, n - i);
}

AMPIPE_TARGET_AVX512BF16 void to_float_avx512bf16(const bf16* in, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    // The maskz forms (all lanes) because GCC 12 warns -Wmaybe-uninitialized inside the plain
    // ones' _mm512_undefined_epi32 (a GCC bug, not ours).
    const __m512i widened = _mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, halves), 16);
    _mm512_storeu_si512(out + i, widened);
  }
  to_float_portable(in + i, out + i, n - i);
}
#else
void to_bf16_avx512bf16(const float* in, bf16* out, int64_t n) { to_bf16_portable(in, out, n); }
void to_float_avx512bf16(const bf16* in, float* out, int64_t n) { to_float_portable(in, out, n); }
#endif

}  // namespace detail

void to_bf16(const float* in, bf16* out, int64_t n) {
  if (detail::bf16_cpu_has_avx512bf16())
    detail::to_bf16_avx512bf16(in, out, n);
  else
    detail::to_bf16_portable(in, out, n);
}

void to_float(const bf16* in, float* out, int64_t n) {
  if (detail::bf16_cpu_has_avx512bf16())
    detail::to_float_avx512bf16(in, out, n);
  else
    detail::to_float_portable(in, out, n);
}

}  // namespace ampipe
