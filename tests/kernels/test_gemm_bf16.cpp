// The bf16 number format (core/bf16.h) and the bf16 GEMM (kernels/cpu/gemm_bf16.h).
//
// Conversions: float32 -> bf16 against an independent reference that picks the nearer of the two
// neighbouring bf16 values by distance (ties to even), over special values and random bit patterns;
// every array path bit for bit against the scalar rule.
//
// GEMM: gemm_bf16 and gemm_f32_onednn against a float64 reference on the same bf16-valued inputs.
// Products of bf16 values are exact in float32, so the only errors are the float32 additions:
// |c - ref| <= (K + 4) * 2^-24 * (|alpha| * sum_p |a_ip * b_pj| + |beta * c0_ij|)
// (K - 1 additions, the alpha scale, the beta term and its sum, each one rounding of relative 2^-24;
// first order, any summation order). bf16 accumulation errs by up to 2^-9 per addition and cannot
// meet it (BF16AccumulationWouldFail_K4096 shows that on a simulated one).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/random.h"
#include "core/tensor.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/gemm.h"

namespace ampipe::kernels {
namespace {

using cpu::gemm_bf16;
using cpu::gemm_f32_onednn;

float from_bits(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }

// The bf16 nearest to x by distance, ties to the even one; written without the bias trick that
// core/bf16.h uses. NaN: sign and upper payload kept, quiet bit set (the contract).
uint16_t reference_to_bf16(float x) {
  const uint32_t bits = bits_of(x);
  if (std::isnan(x)) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  const uint16_t toward_zero = static_cast<uint16_t>(bits >> 16);  // sign-magnitude: truncation
  if (std::isinf(x)) return toward_zero;
  const uint16_t away = static_cast<uint16_t>(toward_zero + 1);  // next magnitude up, same sign
  const double lo = std::bit_cast<float>(static_cast<uint32_t>(toward_zero) << 16);
  // Past the largest finite bf16 the next value, with the exponent unbounded, is 2^128 (IEEE
  // overflow rule); its bit pattern is infinity's.
  const bool past_max = (away & 0x7FFF) == 0x7F80;
  const double hi = past_max ? std::copysign(std::ldexp(1.0, 128), static_cast<double>(x))
                             : std::bit_cast<float>(static_cast<uint32_t>(away) << 16);
  const double to_lo = std::abs(static_cast<double>(x) - lo), to_hi = std::abs(hi - static_cast<double>(x));
  if (to_lo != to_hi) return to_lo < to_hi ? toward_zero : away;
  return (toward_zero & 1) == 0 ? toward_zero : away;
}

TEST(Bf16Conversion, SpecialValuesFollowTheContract) {
  struct Case {
    uint32_t in;
    uint16_t out;
    const char* what;
  };
  const Case cases[] = {
      {0x3F800000, 0x3F80, "1 exact"},
      {0x3F808000, 0x3F80, "1 + 2^-8: tie between 1 and 1 + 2^-7, to the even 1"},
      {0x3F818000, 0x3F82, "1 + 3 * 2^-8: tie, odd below, to the even above"},
      {0x3F808001, 0x3F81, "just above the tie"},
      {0x3F807FFF, 0x3F80, "just below the tie"},
      {0xBF818000, 0xBF82, "negative tie, to even"},
      {0x00000000, 0x0000, "+0"},
      {0x80000000, 0x8000, "-0 keeps its sign"},
      {0x7F800000, 0x7F80, "+inf"},
      {0xFF800000, 0xFF80, "-inf"},
      {0x7F7F0000, 0x7F7F, "largest bf16"},
      {0x7F7F7FFF, 0x7F7F, "below the overflow tie"},
      {0x7F7F8000, 0x7F80, "overflow tie rounds to +inf (even)"},
      {0x7F7FFFFF, 0x7F80, "FLT_MAX rounds to +inf"},
      {0xFF7FFFFF, 0xFF80, "-FLT_MAX rounds to -inf"},
      {0x00400000, 0x0040, "subnormal kept, not flushed"},
      {0x80400000, 0x8040, "negative subnormal kept"},
      {0x00000001, 0x0000, "smallest float subnormal: below half of the smallest bf16 one"},
      {0x00008000, 0x0000, "tie at half the smallest bf16 subnormal, to even zero"},
      {0x00008001, 0x0001, "above it: the smallest bf16 subnormal"},
      {0x00018000, 0x0002, "subnormal tie, odd below, to even above"},
      {0x007FFFFF, 0x0080, "largest float subnormal rounds up to the smallest normal"},
      {0x7FC00000, 0x7FC0, "quiet NaN"},
      {0x7F800001, 0x7FC0, "signalling NaN, payload below the kept bits: stays NaN, quiet"},
      {0x7FA00000, 0x7FE0, "signalling NaN: upper payload kept, quiet bit set"},
      {0xFF800001, 0xFFC0, "negative signalling NaN keeps its sign"},
      {0x7FFFFFFF, 0x7FFF, "NaN with every payload bit: no carry into the sign"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(to_bf16(from_bits(c.in)).bits, c.out) << c.what << " (0x" << std::hex << c.in << ")";
    EXPECT_EQ(reference_to_bf16(from_bits(c.in)), c.out) << "reference: " << c.what;
  }
}

TEST(Bf16Conversion, ScalarMatchesDistanceReferenceOnRandomBits) {
  Rng rng(7);
  for (int i = 0; i < 2'000'000; ++i) {
    // Random bit patterns cover every class; a third are near ties (low 16 bits close to 0x8000).
    uint32_t bits = static_cast<uint32_t>(rng.next_u64());
    if (i % 3 == 0) bits = (bits & 0xFFFF0000u) | (0x8000u + static_cast<uint32_t>(rng.below(5)) - 2u);
    const float x = from_bits(bits);
    ASSERT_EQ(to_bf16(x).bits, reference_to_bf16(x)) << "bits 0x" << std::hex << bits;
  }
}

TEST(Bf16Conversion, ToFloatIsExactAndRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const bf16 value{static_cast<uint16_t>(h)};
    const float f = to_float(value);
    ASSERT_EQ(bits_of(f), h << 16) << std::hex << h;
    const bool nan = (h & 0x7FFF) > 0x7F80;
    // A quiet NaN and every non-NaN comes back unchanged; a signalling NaN comes back quiet.
    const uint16_t expected = nan ? static_cast<uint16_t>(h | 0x0040) : static_cast<uint16_t>(h);
    ASSERT_EQ(to_bf16(f).bits, expected) << std::hex << h;
  }
}

// Floats of every class: mostly normal values of varied magnitude, with NaNs, infinities, ties and
// (rarely, so that many 32-wide blocks hold none) subnormals.
std::vector<float> mixed_floats(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    const uint64_t kind = rng.below(200);
    const uint32_t r = static_cast<uint32_t>(rng.next_u64());
    if (kind == 0)
      x = from_bits(r & 0x807FFFFFu);  // subnormal or zero
    else if (kind == 1)
      x = from_bits((r | 0x7F800000u));  // NaN (or inf)
    else if (kind == 2)
      x = from_bits((r & 0xFFFF0000u) | 0x8000u);  // tie
    else if (kind == 3)
      x = from_bits(0x7F7F8000u | (r & 0x80000000u));  // overflow tie
    else
      x = static_cast<float>(rng.normal() * std::ldexp(1.0, static_cast<int>(rng.below(60)) - 30));
  }
  return v;
}

using ToBf16Array = void (*)(const float*, bf16*, int64_t);
using ToFloatArray = void (*)(const bf16*, float*, int64_t);

// The array path against the scalar rule over lengths 0..99 and a few long ones, at every start
// offset modulo 4 (unaligned starts; tails of every length modulo 16 and 32).
void expect_array_paths_match_scalar(ToBf16Array to_bf16_array, ToFloatArray to_float_array) {
  std::vector<int64_t> lengths;
  for (int64_t n = 0; n < 100; ++n) lengths.push_back(n);
  for (int64_t n : {1000, 4096, 4097, 65536 + 31}) lengths.push_back(n);
  uint64_t seed = 1;
  for (const int64_t n : lengths)
    for (int64_t offset = 0; offset < 4; ++offset) {
      const std::vector<float> in = mixed_floats(n + offset, ++seed);
      std::vector<bf16> out(static_cast<size_t>(n + offset), bf16{0xDEAD});
      to_bf16_array(in.data() + offset, out.data() + offset, n);
      for (int64_t i = 0; i < n + offset; ++i) {
        const uint16_t expected = i < offset ? 0xDEAD : to_bf16(in[i]).bits;
        ASSERT_EQ(out[i].bits, expected)
            << "n=" << n << " offset=" << offset << " i=" << i << " in=0x" << std::hex << bits_of(in[i]);
      }
      std::vector<float> back(static_cast<size_t>(n + offset), -1.0f);
      to_float_array(out.data() + offset, back.data() + offset, n);
      for (int64_t i = 0; i < n + offset; ++i) {
        const uint32_t expected = i < offset ? bits_of(-1.0f) : static_cast<uint32_t>(out[i].bits) << 16;
        ASSERT_EQ(bits_of(back[i]), expected) << "n=" << n << " offset=" << offset << " i=" << i;
      }
    }
}

TEST(Bf16Conversion, DispatchedArrayMatchesScalar) { expect_array_paths_match_scalar(to_bf16, to_float); }

TEST(Bf16Conversion, PortableArrayMatchesScalar) {
  expect_array_paths_match_scalar(detail::to_bf16_portable, detail::to_float_portable);
}

TEST(Bf16Conversion, Avx512Bf16ArrayMatchesScalar) {
  if (!detail::bf16_cpu_has_avx512bf16()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  expect_array_paths_match_scalar(detail::to_bf16_avx512bf16, detail::to_float_avx512bf16);
}

// ---- GEMM -------------------------------------------------------------------------------------

// A row-major matrix as stored: [rows, ld], of which the first `cols` columns are the operand. Its
// values are bf16-representable; the padding holds NaN, so reading it would poison the result.
struct Stored {
  int64_t rows = 0, cols = 0, ld = 0;
  std::vector<bf16> half;
  std::vector<float> wide;  // the same values in float32
  double at(int64_t r, int64_t c) const { return wide[static_cast<size_t>(r * ld + c)]; }
};

Stored random_stored(int64_t rows, int64_t cols, int64_t ld, uint64_t seed, double mean = 0.0) {
  Stored s{rows, cols, ld, {}, {}};
  s.wide.assign(static_cast<size_t>(rows * ld), std::numeric_limits<float>::quiet_NaN());
  Rng rng(seed);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      s.wide[static_cast<size_t>(r * ld + c)] = to_float(to_bf16(static_cast<float>(mean + rng.normal())));
  s.half.resize(s.wide.size());
  to_bf16(s.wide.data(), s.half.data(), static_cast<int64_t>(s.wide.size()));
  return s;
}

struct GemmCase {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t a_pad = 0, b_pad = 0, c_pad = 0;  // row stride = width + pad
  float alpha = 1.0f, beta = 0.0f;
  double a_mean = 0.0, b_mean = 0.0;
};

// One case's operands, its float64 reference and the bound of the header comment per element.
struct GemmProblem {
  GemmCase g;
  Stored a, b, c0;
  std::vector<double> reference, bound;
};

GemmProblem make_problem(const GemmCase& g, uint64_t seed) {
  GemmProblem p{g, {}, {}, {}, {}, {}};
  p.a = g.ta ? random_stored(g.k, g.m, g.m + g.a_pad, seed, g.a_mean)
             : random_stored(g.m, g.k, g.k + g.a_pad, seed, g.a_mean);
  p.b = g.tb ? random_stored(g.n, g.k, g.k + g.b_pad, seed + 1, g.b_mean)
             : random_stored(g.k, g.n, g.n + g.b_pad, seed + 1, g.b_mean);
  p.c0 = random_stored(g.m, g.n, g.n + g.c_pad, seed + 2);
  const double u = std::ldexp(1.0, -24);
  for (int64_t i = 0; i < g.m; ++i)
    for (int64_t j = 0; j < g.n; ++j) {
      double sum = 0, magnitude = 0;
      for (int64_t q = 0; q < g.k; ++q) {
        const double product = (g.ta ? p.a.at(q, i) : p.a.at(i, q)) * (g.tb ? p.b.at(j, q) : p.b.at(q, j));
        sum += product;
        magnitude += std::abs(product);
      }
      const double c_term = g.beta == 0.0f ? 0.0 : g.beta * p.c0.at(i, j);
      p.reference.push_back(g.alpha * sum + c_term);
      p.bound.push_back((g.k + 4) * u * (std::abs(g.alpha) * magnitude + std::abs(c_term)) + 1e-37);
    }
  return p;
}

enum class Kernel { bf16, f32_onednn };

// Runs the kernel on the problem's operands into a copy of c0 (padding included) and returns it.
std::vector<float> run_kernel(Kernel kernel, const GemmProblem& p) {
  const GemmCase& g = p.g;
  std::vector<float> c = p.c0.wide;
  if (kernel == Kernel::bf16)
    gemm_bf16(g.ta, g.tb, g.m, g.n, g.k, g.alpha, p.a.half.data(), p.a.ld, p.b.half.data(), p.b.ld, g.beta,
              c.data(), p.c0.ld);
  else
    gemm_f32_onednn(g.ta, g.tb, g.m, g.n, g.k, g.alpha, p.a.wide.data(), p.a.ld, p.b.wide.data(), p.b.ld,
                    g.beta, c.data(), p.c0.ld);
  return c;
}

// The engine's float32 GEMM (OpenBLAS, kernels/gemm.h) on the same values through Tensor views.
std::vector<float> run_float32_gemm(const GemmProblem& p) {
  auto view_of = [](const Stored& s) {
    Tensor t = Tensor::empty({s.rows, s.ld});
    std::copy(s.wide.begin(), s.wide.end(), t.data<float>());
    return t.cols(0, s.cols);
  };
  Tensor c = view_of(p.c0);
  gemm(view_of(p.a), p.g.ta, view_of(p.b), p.g.tb, c, p.g.alpha, p.g.beta);
  std::vector<float> out(static_cast<size_t>(p.g.m * p.c0.ld));
  std::copy(c.data<float>(), c.data<float>() + p.g.m * p.c0.ld - p.c0.ld + p.g.n, out.data());
  return out;
}

// Every element of c within the bound of the reference (2x the bound against the float32 GEMM,
// which has its own); the padding of c untouched (NaN stays NaN).
void expect_within_bound(const GemmProblem& p, const std::vector<float>& c, const std::vector<float>& f32) {
  const GemmCase& g = p.g;
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.n; ++j) {
      const size_t e = static_cast<size_t>(i * g.n + j), at = static_cast<size_t>(i * p.c0.ld + j);
      ASSERT_LE(std::abs(c[at] - p.reference[e]), p.bound[e])
          << "c[" << i << "," << j << "] = " << c[at] << ", reference " << p.reference[e];
      ASSERT_LE(std::abs(static_cast<double>(c[at]) - f32[at]), 2 * p.bound[e])
          << "c[" << i << "," << j << "] = " << c[at] << ", float32 gemm " << f32[at];
    }
    for (int64_t j = g.n; j < p.c0.ld; ++j)
      ASSERT_TRUE(std::isnan(c[static_cast<size_t>(i * p.c0.ld + j)]))
          << "padding written at " << i << "," << j;
  }
}

void check_case(const GemmCase& g, uint64_t seed) {
  const GemmProblem p = make_problem(g, seed);
  const std::vector<float> f32 = run_float32_gemm(p);
  for (const Kernel kernel : {Kernel::bf16, Kernel::f32_onednn}) {
    SCOPED_TRACE(kernel == Kernel::bf16 ? "gemm_bf16" : "gemm_f32_onednn");
    expect_within_bound(p, run_kernel(kernel, p), f32);
  }
}

std::string describe(const GemmCase& g) {
  std::ostringstream s;
  s << "ta=" << g.ta << " tb=" << g.tb << " m=" << g.m << " n=" << g.n << " k=" << g.k << " pads=" << g.a_pad
    << "," << g.b_pad << "," << g.c_pad << " alpha=" << g.alpha << " beta=" << g.beta;
  return s.str();
}

struct Dims {
  int64_t m, n, k;
};
const Dims kDims[] = {{1, 1, 1}, {3, 5, 17}, {17, 3, 130}, {130, 64, 33}, {64, 17, 1}, {257, 129, 300}};

TEST(GemmBf16, AllTransposeCombinationsWithinFloat32AccumulationBound) {
  uint64_t seed = 10;
  for (const Dims& d : kDims)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const GemmCase g{ta, tb, d.m, d.n, d.k};
        SCOPED_TRACE(describe(g));
        check_case(g, seed += 3);
      }
}

TEST(GemmBf16, StridedViewsAlphaAndBeta) {
  uint64_t seed = 100;
  for (const Dims& d : kDims)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const auto& [alpha, beta] :
             {std::pair{0.5f, -1.5f}, std::pair{1.0f, 1.0f}, std::pair{-2.0f, 0.0f}}) {
          const GemmCase g{ta, tb, d.m, d.n, d.k, 3, 7, 5, alpha, beta};
          SCOPED_TRACE(describe(g));
          check_case(g, seed += 3);
        }
}

TEST(GemmBf16, BetaZeroOverwritesWithoutReadingOutput) {
  for (const Kernel kernel : {Kernel::bf16, Kernel::f32_onednn}) {
    GemmProblem p = make_problem(GemmCase{false, true, 33, 19, 70, 0, 2, 4, 2.0f, 0.0f}, 5);
    for (int64_t i = 0; i < p.g.m; ++i)
      for (int64_t j = 0; j < p.g.n; ++j) p.c0.wide[static_cast<size_t>(i * p.c0.ld + j)] = NAN;
    const std::vector<float> c = run_kernel(kernel, p);
    for (int64_t i = 0; i < p.g.m; ++i)
      for (int64_t j = 0; j < p.g.n; ++j) {
        const size_t e = static_cast<size_t>(i * p.g.n + j);
        ASSERT_LE(std::abs(c[static_cast<size_t>(i * p.c0.ld + j)] - p.reference[e]), p.bound[e])
            << "kernel " << static_cast<int>(kernel) << " c[" << i << "," << j << "]";
      }
  }
}

TEST(GemmBf16, EmptyInnerDimensionScalesOutput) {
  for (const Kernel kernel : {Kernel::bf16, Kernel::f32_onednn})
    for (const float beta : {0.0f, 1.0f, -0.5f}) {
      GemmProblem p = make_problem(GemmCase{false, false, 5, 6, 0, 0, 0, 3, 1.5f, beta}, 9);
      if (beta == 0.0f)
        for (int64_t i = 0; i < p.g.m; ++i) p.c0.wide[static_cast<size_t>(i * p.c0.ld)] = NAN;
      const std::vector<float> c = run_kernel(kernel, p);
      for (int64_t i = 0; i < p.g.m; ++i)
        for (int64_t j = 0; j < p.c0.ld; ++j) {
          const float before = p.c0.wide[static_cast<size_t>(i * p.c0.ld + j)];
          const float after = c[static_cast<size_t>(i * p.c0.ld + j)];
          if (j >= p.g.n)
            ASSERT_TRUE(std::isnan(after)) << "padding written";
          else
            ASSERT_EQ(after, beta == 0.0f ? 0.0f : beta * before) << "beta=" << beta << " " << i << "," << j;
        }
    }
}

TEST(GemmBf16, EmptyOutputTouchesNothing) {
  std::vector<float> c(8, 3.0f);
  const bf16 one = to_bf16(1.0f);
  gemm_bf16(false, false, 0, 4, 2, 1.0f, &one, 2, &one, 4, 0.0f, c.data(), 4);
  gemm_bf16(false, false, 2, 0, 2, 1.0f, &one, 2, &one, 1, 0.0f, c.data(), 4);
  for (const float x : c) EXPECT_EQ(x, 3.0f);
}

TEST(GemmBf16, RejectsStridesShorterThanRows) {
  std::vector<bf16> a(64), b(64);
  std::vector<float> c(64);
  EXPECT_THROW(gemm_bf16(false, false, 4, 4, 4, 1.0f, a.data(), 3, b.data(), 4, 0.0f, c.data(), 4), Error);
  EXPECT_THROW(gemm_bf16(true, false, 4, 5, 3, 1.0f, a.data(), 3, b.data(), 5, 0.0f, c.data(), 5), Error);
  EXPECT_THROW(gemm_bf16(false, false, 4, 4, 4, 1.0f, a.data(), 4, b.data(), 4, 0.0f, c.data(), 3), Error);
  EXPECT_THROW(gemm_bf16(false, false, -1, 4, 4, 1.0f, a.data(), 4, b.data(), 4, 0.0f, c.data(), 4), Error);
}

// Sums whose bf16 running value would stall: K = 4096 products near 1, so the sums pass 256, where
// the bf16 spacing is 2 and adding ~1 rounds back. Float32 accumulation stays within the bound;
// the same check on a simulated bf16 accumulation fails, which shows the check can tell them apart.
TEST(GemmBf16, BF16AccumulationWouldFail_K4096) {
  const GemmCase g{false, true, 8, 8, 4096, 0, 0, 0, 1.0f, 0.0f, 1.0, 1.0};
  const GemmProblem p = make_problem(g, 77);
  double worst = 0;
  for (const Kernel kernel : {Kernel::bf16, Kernel::f32_onednn}) {
    const std::vector<float> c = run_kernel(kernel, p);
    for (size_t e = 0; e < c.size(); ++e) {
      ASSERT_LE(std::abs(c[e] - p.reference[e]), p.bound[e])
          << "kernel " << static_cast<int>(kernel) << " " << e;
      worst = std::max(worst, std::abs(c[e] - p.reference[e]) / std::abs(p.reference[e]));
    }
  }
  EXPECT_LT(worst, std::ldexp(1.0, -14)) << "float32 accumulation keeps the relative error far below bf16's";
  int rejected = 0;
  for (int64_t i = 0; i < g.m; ++i)
    for (int64_t j = 0; j < g.n; ++j) {
      bf16 sum = to_bf16(0.0f);
      for (int64_t q = 0; q < g.k; ++q)  // each product is exact in float32; each sum rounds to bf16
        sum = to_bf16(to_float(sum) + static_cast<float>(p.a.at(i, q) * p.b.at(j, q)));
      const size_t e = static_cast<size_t>(i * g.n + j);
      rejected += std::abs(to_float(sum) - p.reference[e]) > p.bound[e];
    }
  EXPECT_EQ(rejected, g.m * g.n) << "a bf16 accumulation must fail the bound everywhere";
}

// Concurrent callers of different shapes (each primitive and scratchpad shared only as the header
// promises) get the same results as one caller.
TEST(GemmBf16, ConcurrentCallersMatchSequential) {
  std::vector<GemmProblem> problems;
  for (int t = 0; t < 4; ++t)
    problems.push_back(make_problem(
        GemmCase{t % 2 == 1, t >= 2, 40 + t, 24 + 3 * t, 96 + t, 1, 2, 3, 1.0f, 0.5f}, 300 + 10 * t));
  std::vector<std::vector<float>> sequential;
  for (const GemmProblem& p : problems) sequential.push_back(run_kernel(Kernel::bf16, p));
  std::vector<std::vector<float>> concurrent(problems.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < problems.size(); ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < 20; ++r)
        concurrent[t] = run_kernel(r % 2 ? Kernel::bf16 : Kernel::f32_onednn, problems[t]);
      concurrent[t] = run_kernel(Kernel::bf16, problems[t]);
    });
  for (std::thread& t : threads) t.join();
  for (size_t t = 0; t < problems.size(); ++t)
    for (size_t e = 0; e < sequential[t].size(); ++e)
      ASSERT_EQ(bits_of(concurrent[t][e]), bits_of(sequential[t][e])) << "thread " << t << " element " << e;
}

// More distinct shapes than the plan cache holds: evicted plans are recreated and still right.
TEST(GemmBf16, PlanCacheEvictionKeepsResultsRight) {
  const GemmProblem first = make_problem(GemmCase{false, false, 7, 5, 9, 0, 0, 0, 1.0f, 0.0f}, 900);
  const std::vector<float> before = run_kernel(Kernel::f32_onednn, first);
  for (int64_t m = 1; m <= 300; ++m) {
    const GemmProblem p = make_problem(GemmCase{false, false, m, 3, 2}, 1000 + m);
    const std::vector<float> c = run_kernel(m % 2 ? Kernel::bf16 : Kernel::f32_onednn, p);
    ASSERT_LE(std::abs(c[0] - p.reference[0]), p.bound[0]) << "m=" << m;
  }
  const std::vector<float> after = run_kernel(Kernel::f32_onednn, first);
  for (size_t e = 0; e < before.size(); ++e) ASSERT_EQ(bits_of(after[e]), bits_of(before[e])) << e;
}

TEST(GemmBf16, ImplementationIsNamed) {
  const std::string bf16_impl = cpu::gemm_bf16_implementation();
  const std::string f32_impl = cpu::gemm_f32_onednn_implementation();
  std::printf("gemm_bf16: %s, gemm_f32_onednn: %s, AVX512-BF16: %d\n", bf16_impl.c_str(), f32_impl.c_str(),
              detail::bf16_cpu_has_avx512bf16());
  EXPECT_FALSE(bf16_impl.empty());
  EXPECT_FALSE(f32_impl.empty());
  // Where the CPU has AVX512-BF16 oneDNN has a bf16 matmul; the OpenBLAS fallback there would be a
  // lost factor of two.
  if (detail::bf16_cpu_has_avx512bf16()) {
    EXPECT_EQ(bf16_impl.find("openblas"), std::string::npos);
  }
}

}  // namespace
}  // namespace ampipe::kernels
