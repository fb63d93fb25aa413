// Fast float exponentials for the CPU kernels' inner loops (softmax, attention).
//
// fast_exp2 / fast_exp follow Cephes: range reduction to a remainder in [-0.5, 0.5] (base 2) and a
// polynomial; relative error below 1e-7 (under 1 ulp) over the normal range. Inputs whose result
// would be below 2^-126.5 return exactly 0 (no denormals), inputs past 2^127.5 return +inf, NaN
// propagates. The scalar functions have no branches and select with integer masks, so GCC
// vectorises loops over them at -O3 even under the default -ftrapping-math; with AVX2+FMA the
// *_avx2 versions take 8 lanes explicitly (same formulas; results can differ from the scalar
// versions in the last bit where the compiler does not contract a*b+c into an FMA).
#pragma once

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
// Outside [kExp2Low, kExp2High) the result is 0 or +inf; inside, n + 127 fits the exponent field.
inline constexpr float kExp2Low = -126.5f;
inline constexpr float kExp2High = 127.5f;
inline constexpr int32_t kInfBits = 0x7F800000;

// 2^f * 2^n from the reduced argument: f in [-0.5, 0.5], shifted = n + kRoundMagic; then the
// out-of-range fix-up for the original argument x, as integer masks (no branches to speculate).
inline float exp2_reconstruct(float x, float f, float shifted) {
  float p = kExp2P0;
  p = p * f + kExp2P1;
  p = p * f + kExp2P2;
  p = p * f + kExp2P3;
  p = p * f + kExp2P4;
  p = p * f + kExp2P5;
  p = p * f + 1.0f;
  // n + 127 into the exponent field (unsigned: out-of-range lanes wrap harmlessly and are masked).
  const uint32_t biased = std::bit_cast<uint32_t>(shifted) - static_cast<uint32_t>(kRoundMagicBits - 127);
  const float result = p * std::bit_cast<float>(biased << 23);
  const int32_t keep = -static_cast<int32_t>(!(x < kExp2Low));  // all ones unless tiny (NaN kept)
  const int32_t huge = -static_cast<int32_t>(x >= kExp2High);
  return std::bit_cast<float>((std::bit_cast<int32_t>(result) & keep & ~huge) | (kInfBits & huge));
}
}  // namespace detail

// 2^x.
inline float fast_exp2(float x) {
  using namespace detail;
  const float shifted = x + kRoundMagic;
  const float f = x - (shifted - kRoundMagic);
  return exp2_reconstruct(x, f, shifted);
}

// e^x, as 2^(x log2 e) with the remainder taken from x itself (ln 2 split in two parts, so
// n * kLn2Hi is exact), which keeps the error near 1 ulp for large |x|.
inline float fast_exp(float x) {
  using namespace detail;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const float shifted = x * kLog2e + kRoundMagic;
  const float n = shifted - kRoundMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;  // x - n ln2, in [-ln2/2, ln2/2]
  return exp2_reconstruct(x * kLog2e, r * kLog2e, shifted);
}

#if AMPIPE_HAVE_AVX2_FMA
namespace detail {
inline __m256 exp2_reconstruct_avx2(__m256 x, __m256 f, __m256 shifted) {
  __m256 p = _mm256_set1_ps(kExp2P0);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P1));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P5));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i biased =
      _mm256_add_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(127 - kRoundMagicBits));
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kExp2Low), _CMP_NLT_UQ);  // true for NaN
  const __m256 huge = _mm256_cmp_ps(x, _mm256_set1_ps(kExp2High), _CMP_GE_OQ);
  return _mm256_blendv_ps(_mm256_and_ps(result, keep), _mm256_castsi256_ps(_mm256_set1_epi32(kInfBits)),
                          huge);
}
}  // namespace detail

// 2^x on 8 lanes.
inline __m256 fast_exp2_avx2(__m256 x) {
  using namespace detail;
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  const __m256 shifted = _mm256_add_ps(x, magic);
  const __m256 f = _mm256_sub_ps(x, _mm256_sub_ps(shifted, magic));
  return exp2_reconstruct_avx2(x, f, shifted);
}

// e^x on 8 lanes.
inline __m256 fast_exp_avx2(__m256 x) {
  using namespace detail;
  const __m256 magic = _mm256_set1_ps(kRoundMagic), log2e = _mm256_set1_ps(kLog2e);
  const __m256 shifted = _mm256_fmadd_ps(x, log2e, magic);
  const __m256 n = _mm256_sub_ps(shifted, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  return exp2_reconstruct_avx2(_mm256_mul_ps(x, log2e), _mm256_mul_ps(r, log2e), shifted);
}
#endif

}  // namespace ampipe::kernels::fast_math
