// Fast float exponentials for the CPU kernels' inner loops (softmax, attention).
//
// fast_exp2 / fast_exp follow Cephes (range reduction to a remainder in [-0.5, 0.5] and a degree-6
// or 5+2 polynomial): relative error about 2e-7 (1-2 ulp) over the normal range. Inputs below
// about -126.5 (base 2) / -87.7 (base e) return exactly 0 instead of a denormal, inputs above the
// float range saturate near FLT_MAX instead of returning inf, and NaN propagates. The scalar
// functions are written without branches so GCC vectorises loops over them at -O3; with AVX2+FMA
// the *_avx2 versions take 8 lanes at a time (same formulas; results may differ from the scalar
// versions in the last bit because of FMA contraction).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AMPIPE_HAVE_AVX2_FMA 1
#else
#define AMPIPE_HAVE_AVX2_FMA 0
#endif

namespace ampipe::kernels::fast_math {

inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2 = 0.693147180559945309f;

namespace detail {
// Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to the nearest integer, which then sits in the
// low mantissa bits: n = bits(x + magic) - bits(magic).
inline constexpr float kRoundMagic = 12582912.0f;
inline constexpr int32_t kRoundMagicBits = 0x4B400000;
// 2^f for f in [-0.5, 0.5] is 1 + f * P(f) (Cephes exp2f coefficients).
inline constexpr float kExp2P0 = 1.535336188319500e-4f;
inline constexpr float kExp2P1 = 1.339887440266574e-3f;
inline constexpr float kExp2P2 = 9.618437357674640e-3f;
inline constexpr float kExp2P3 = 5.550332471162809e-2f;
inline constexpr float kExp2P4 = 2.402264791363012e-1f;
inline constexpr float kExp2P5 = 6.931472028550421e-1f;
// e^r for r in [-ln2/2, ln2/2] is 1 + r + r^2 * Q(r) (Cephes expf coefficients); ln2 split in two
// parts so n * kLn2Hi is exact.
inline constexpr float kLn2Hi = 0.693359375f;
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpQ0 = 1.9875691500e-4f;
inline constexpr float kExpQ1 = 1.3981999507e-3f;
inline constexpr float kExpQ2 = 8.3334519073e-3f;
inline constexpr float kExpQ3 = 4.1665795894e-2f;
inline constexpr float kExpQ4 = 1.6666665459e-1f;
inline constexpr float kExpQ5 = 5.0000001201e-1f;
// Clamping to [-127, 127] makes n = -127 give the scale 2^-127 -> bits 0 -> exactly 0.
inline constexpr float kExp2Min = -127.0f;
inline constexpr float kExp2Max = 127.0f;
}  // namespace detail

// 2^x.
inline float fast_exp2(float x) {
  using namespace detail;
  x = std::min(std::max(x, kExp2Min), kExp2Max);  // NaN passes through both
  const float shifted = x + kRoundMagic;
  const int32_t n = std::bit_cast<int32_t>(shifted) - kRoundMagicBits;
  const float f = x - (shifted - kRoundMagic);
  float p = kExp2P0;
  p = p * f + kExp2P1;
  p = p * f + kExp2P2;
  p = p * f + kExp2P3;
  p = p * f + kExp2P4;
  p = p * f + kExp2P5;
  p = p * f + 1.0f;
  const float scale = std::bit_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(n + 127) << 23));
  return p * scale;
}

// e^x.
inline float fast_exp(float x) {
  using namespace detail;
  x = std::min(std::max(x, kExp2Min * kLn2), kExp2Max * kLn2);
  const float shifted = x * kLog2e + kRoundMagic;
  const int32_t n = std::bit_cast<int32_t>(shifted) - kRoundMagicBits;
  const float nf = shifted - kRoundMagic;
  float r = x - nf * kLn2Hi;
  r = r - nf * kLn2Lo;
  float q = kExpQ0;
  q = q * r + kExpQ1;
  q = q * r + kExpQ2;
  q = q * r + kExpQ3;
  q = q * r + kExpQ4;
  q = q * r + kExpQ5;
  const float p = (q * r) * r + r + 1.0f;
  const float scale = std::bit_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(n + 127) << 23));
  return p * scale;
}

#if AMPIPE_HAVE_AVX2_FMA
// 2^x on 8 lanes.
inline __m256 fast_exp2_avx2(__m256 x) {
  using namespace detail;
  // max/min return their second operand when one is NaN, so x goes second to keep NaN.
  x = _mm256_min_ps(_mm256_set1_ps(kExp2Max), _mm256_max_ps(_mm256_set1_ps(kExp2Min), x));
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  const __m256 shifted = _mm256_add_ps(x, magic);
  const __m256 f = _mm256_sub_ps(x, _mm256_sub_ps(shifted, magic));
  __m256 p = _mm256_set1_ps(kExp2P0);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P1));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P5));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  // bits(shifted) - bits(magic) + 127 = n + 127, shifted into the exponent field.
  const __m256i biased = _mm256_add_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(127 - kRoundMagicBits));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
}

// e^x on 8 lanes.
inline __m256 fast_exp_avx2(__m256 x) {
  using namespace detail;
  x = _mm256_min_ps(_mm256_set1_ps(kExp2Max * kLn2), _mm256_max_ps(_mm256_set1_ps(kExp2Min * kLn2), x));
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  const __m256 shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), magic);
  const __m256 nf = _mm256_sub_ps(shifted, magic);
  __m256 r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(kLn2Lo), r);
  __m256 q = _mm256_set1_ps(kExpQ0);
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ1));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ2));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ3));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ4));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpQ5));
  const __m256 p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(q, r), r, r), _mm256_set1_ps(1.0f));
  const __m256i biased = _mm256_add_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(127 - kRoundMagicBits));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
}
#endif

}  // namespace ampipe::kernels::fast_math
