// bfloat16 tensors and the kernels that take them on the CPU: Tensor's bf16 storage, convert (bit
// for bit core/bf16.h's rule), and gemm on bf16 inputs through the public entry point
// (kernels/gemm.h), against float32 gemm on the same (bf16-representable) values. The oneDNN kernel
// itself is tested in depth by test_gemm_bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "core/tensor.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "test_util.h"

namespace ampipe {
namespace {

std::vector<float> random_values(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// The values rounded to bf16 and widened back (what a bf16 tensor of them holds).
std::vector<float> rounded(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = to_float(to_bf16(v[i]));
  return r;
}

// Largest |a - b| / max(|b|, floor).
double max_relative_error(const std::vector<float>& a, const std::vector<float>& b, double floor) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / std::max(std::abs(double(b[i])), floor));
  return worst;
}

Tensor bf16_from(const Shape& shape, const std::vector<float>& values) {
  Tensor t = Tensor::empty(shape, DType::BF16);
  kernels::convert(Tensor::from(shape, values), t);
  return t;
}

TEST(Bf16Tensor, TwoBytesAnElementFillAndReadBack) {
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_STREQ(dtype_name(DType::BF16), "bfloat16");
  Tensor t = Tensor::zeros({3, 5}, DType::BF16);
  EXPECT_EQ(t.to_vector(), std::vector<float>(15, 0.0f));
  t.fill(1.0f + 1.0f / 256.0f);  // exactly halfway between two bf16 values: ties to even (1.0)
  EXPECT_EQ(t.to_vector(), std::vector<float>(15, 1.0f));
  t.rows(1, 2).fill(3.0f);
  const std::vector<float> v = t.to_vector();
  EXPECT_EQ(v[4], 1.0f);
  EXPECT_EQ(v[5], 3.0f);
  EXPECT_EQ(v[10], 1.0f);
  EXPECT_EQ(t.bytes() + 2 * 5, t.rows(1, 2).bytes());  // bytes() follows the view's offset
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_THROW(Tensor::zeros({2}).data<bf16>(), Error);
  // Views and copies move the two-byte elements.
  Tensor c = t.cols(1, 3).clone();
  EXPECT_EQ(c.to_vector(), (std::vector<float>{1, 1, 3, 3, 1, 1}));
}

TEST(Bf16Convert, RoundsAsCoreBf16AndWidensExactly) {
  std::vector<float> values = random_values(1000, 3, -1e3f, 1e3f);
  const float inf = std::numeric_limits<float>::infinity();
  for (float special : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), 3.4e38f, 1e-40f,
                        1.0f + 1.0f / 256.0f, 1.0f + 3.0f / 256.0f})
    values.push_back(special);
  const int64_t n = static_cast<int64_t>(values.size());
  Tensor half = Tensor::empty({n}, DType::BF16);
  kernels::convert(Tensor::from({n}, values), half);
  const bf16* h = half.data<bf16>();
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(h[i].bits, to_bf16(values[i]).bits) << "value " << values[i];
  Tensor back = Tensor::empty({n});
  kernels::convert(half, back);
  const std::vector<float> want = rounded(values);
  const std::vector<float> got = back.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i]));
    } else {
      EXPECT_EQ(got[i], want[i]) << i;
    }
  }
  EXPECT_EQ(got[n - 2], 1.0f);                  // a tie rounds to the even neighbour, down
  EXPECT_EQ(got[n - 1], 1.0f + 4.0f / 256.0f);  // and up
}

TEST(Bf16Convert, ViewsAndRefusals) {
  const std::vector<float> values = random_values(6 * 9, 5);
  Tensor src = Tensor::from({6, 9}, values);
  Tensor dst = Tensor::zeros({6, 12}, DType::BF16);
  kernels::convert(src.cols(2, 7), dst.cols(4, 9));
  const std::vector<float> got = dst.to_vector();
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t j = 0; j < 12; ++j) {
      const float want = (j >= 4 && j < 9) ? to_float(to_bf16(values[r * 9 + (j - 4 + 2)])) : 0.0f;
      ASSERT_EQ(got[r * 12 + j], want) << r << "," << j;  // nothing outside the view is written
    }
  EXPECT_NE(testing::error_of([&] {
              kernels::convert(src, Tensor::zeros({6, 8}, DType::BF16));
            }).find("one shape"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] {
              kernels::convert(Tensor::zeros({2}, DType::I32), Tensor::zeros({2}));
            }).find("float32 and bfloat16 only"),
            std::string::npos);
}

// bf16 inputs, float32 accumulation: equal to float32 gemm on the same values up to summation order.
TEST(Bf16Gemm, EqualsFloat32GemmOnTheSameValues) {
  struct Dims {
    int64_t m, k, n;
  };
  for (const Dims d : {Dims{1, 1, 1}, Dims{37, 129, 65}, Dims{64, 1024, 48}, Dims{5, 0, 3}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(::testing::Message() << d.m << "x" << d.k << "x" << d.n << " ta=" << ta << " tb=" << tb);
        const Shape as = ta ? Shape{d.k, d.m} : Shape{d.m, d.k};
        const Shape bs = tb ? Shape{d.n, d.k} : Shape{d.k, d.n};
        const std::vector<float> av = rounded(random_values(d.m * d.k, 7)),
                                 bv = rounded(random_values(d.k * d.n, 8));
        Tensor want = Tensor::from({d.m, d.n}, random_values(d.m * d.n, 9));
        Tensor got = want.clone();
        kernels::gemm(Tensor::from(as, av), ta, Tensor::from(bs, bv), tb, want, 0.5f, -1.0f);
        kernels::gemm(bf16_from(as, av), ta, bf16_from(bs, bv), tb, got, 0.5f, -1.0f);
        const double floor = std::max(1.0, std::sqrt(static_cast<double>(d.k)));
        EXPECT_LT(max_relative_error(got.to_vector(), want.to_vector(), floor), 1e-5);
      }
  }
}

// A sum that bf16 accumulation would get wrong: 4096 products of 1 x (1 + 2^-7) and of 1 x 2^-8.
// float32 accumulation is exact here; a bf16 running sum stalls once it passes 256 (its spacing
// there is 2), far from the true total.
TEST(Bf16Gemm, AccumulatesInFloat32) {
  const int64_t k = 4096;
  std::vector<float> a(static_cast<size_t>(k), 1.0f), b(static_cast<size_t>(k));
  double want = 0;
  for (int64_t i = 0; i < k; ++i) {
    b[i] = (i % 2 == 0) ? 1.0f + 1.0f / 128.0f : 1.0f / 256.0f;
    want += b[i];
  }
  Tensor c = Tensor::zeros({1, 1});
  kernels::gemm(bf16_from({1, k}, a), false, bf16_from({k, 1}, b), false, c);
  EXPECT_NEAR(c.to_vector()[0], want, 1e-3 * want);
  EXPECT_NE(testing::error_of([&] {
              kernels::gemm(bf16_from({1, k}, a), false, Tensor::from({k, 1}, b), false, c);
            }).find("both float32 or both bfloat16"),
            std::string::npos);
}

}  // namespace
}  // namespace ampipe
