// The bfloat16 number format as the engine sees it: 1 sign bit, 8 exponent bits, 7 mantissa bits,
// i.e. the upper half of an IEEE float32. No third-party header; kernels that hand bf16 buffers to a
// library (kernels/cpu/gemm_bf16.h) pass `bf16*` and the library reads the same bits.
//
// Contract of float32 -> bf16 (every function below, scalar and array, bit for bit the same):
// - round to nearest, ties to even, as IEEE 754 roundTiesToEven would with 8 significant bits;
//   float32 subnormals round to bf16 subnormals (not flushed to zero), so the result never
//   depends on the CPU;
// - overflow rounds to infinity of the same sign (magnitudes from 0x1.ffp127, halfway
//   past the largest bf16, up), infinities
//   stay infinities;
// - NaN stays NaN: the sign and the upper 7 payload bits are kept and the quiet bit is set
//   (0x0040), so a signalling NaN becomes quiet and no NaN becomes an infinity.
// bf16 -> float32 is exact (a shift); NaN payloads survive it.
//
// The array converters use AVX512-BF16 (VCVTNE2PS2BF16) where the CPU has it, checked at run time,
// so the binary still runs on CPUs without it; elsewhere a loop the compiler vectorises. The
// instruction flushes subnormals to zero, so the AVX512 path converts any 32-float block holding a
// subnormal with the scalar rule: the contract above holds on every path. Thread-safe, no state.
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

namespace ampipe {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2 && std::is_trivial_v<bf16>, "bf16 is two bytes, trivially copyable");

// float32 -> bf16, rounding as the contract above says.
inline bf16 to_bf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  // Adding 0x7FFF plus the lowest kept bit carries into the kept bits exactly when the dropped half
  // is above one half, or exactly one half with an odd kept part (ties to even). Carrying out of
  // the mantissa bumps the exponent, which is right, and into 0x7F80 (infinity) on overflow.
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return bf16{static_cast<uint16_t>(is_nan ? quiet_nan : rounded)};
}

// bf16 -> float32, exact.
inline float to_float(bf16 value) { return std::bit_cast<float>(static_cast<uint32_t>(value.bits) << 16); }

// out[i] = to_bf16(in[i]) for i in [0, n). in and out must not overlap.
void to_bf16(const float* in, bf16* out, int64_t n);
// out[i] = to_float(in[i]) for i in [0, n). in and out must not overlap.
void to_float(const bf16* in, float* out, int64_t n);

namespace detail {
// The individual paths, for tests that compare them with each other. The portable loops run
// anywhere; the AVX512-BF16 ones only where bf16_cpu_has_avx512bf16() is true.
bool bf16_cpu_has_avx512bf16();
void to_bf16_portable(const float* in, bf16* out, int64_t n);
void to_float_portable(const bf16* in, float* out, int64_t n);
void to_bf16_avx512bf16(const float* in, bf16* out, int64_t n);
void to_float_avx512bf16(const bf16* in, float* out, int64_t n);
}  // namespace detail

}  // namespace ampipe
