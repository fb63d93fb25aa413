// gemm against a naive float64 reference: all transpose combinations, alpha/beta, column slices.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "kernels/gemm.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

// c_ref = alpha * op(a) @ op(b) + beta * c0, all in double on the tensors' logical values.
std::vector<double> reference_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb,
                                   const std::vector<double>& c0, double alpha, double beta) {
  const std::vector<double> av = to_double(a);
  const std::vector<double> bv = to_double(b);
  const int64_t m = ta ? a.dim(1) : a.dim(0);
  const int64_t k = ta ? a.dim(0) : a.dim(1);
  const int64_t n = tb ? b.dim(0) : b.dim(1);
  std::vector<double> c(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double aij = ta ? av[p * a.dim(1) + i] : av[i * a.dim(1) + p];
        const double bij = tb ? bv[j * b.dim(1) + p] : bv[p * b.dim(1) + j];
        s += aij * bij;
      }
      c[i * n + j] = alpha * s + (beta == 0 ? 0.0 : beta * c0[i * n + j]);
    }
  return c;
}

Shape op_shape(int64_t rows, int64_t cols, bool transpose) {
  return transpose ? Shape{cols, rows} : Shape{rows, cols};
}

struct Dims {
  int64_t m, k, n;
};
const Dims kDims[] = {{1, 1, 1}, {3, 17, 5}, {17, 130, 3}, {130, 33, 64}, {64, 1, 17}};

TEST(Gemm, AllTransposeCombinationsMatchReference) {
  uint64_t seed = 1;
  for (const Dims& d : kDims)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "m=" << d.m << " k=" << d.k << " n=" << d.n << " ta=" << ta << " tb=" << tb);
        Tensor a = random_tensor(op_shape(d.m, d.k, ta), ++seed);
        Tensor b = random_tensor(op_shape(d.k, d.n, tb), ++seed);
        Tensor c = random_tensor({d.m, d.n}, ++seed);
        const auto expected = reference_gemm(a, ta, b, tb, to_double(c), 1.0, 0.0);
        gemm(a, ta, b, tb, c);
        expect_close(c, expected, 1e-5, 1e-4, "c");
      }
}

TEST(Gemm, AlphaScalesAndBetaAccumulates) {
  uint64_t seed = 100;
  for (const Dims& d : kDims)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "m=" << d.m << " k=" << d.k << " n=" << d.n << " ta=" << ta << " tb=" << tb);
        Tensor a = random_tensor(op_shape(d.m, d.k, ta), ++seed);
        Tensor b = random_tensor(op_shape(d.k, d.n, tb), ++seed);
        Tensor c = random_tensor({d.m, d.n}, ++seed);
        const auto expected = reference_gemm(a, ta, b, tb, to_double(c), 0.5, -1.5);
        gemm(a, ta, b, tb, c, 0.5f, -1.5f);
        expect_close(c, expected, 1e-5, 1e-4, "c");
      }
}

TEST(Gemm, BetaZeroOverwritesWithoutReadingOutput) {
  Tensor a = random_tensor({17, 9}, 1);
  Tensor b = random_tensor({9, 5}, 2);
  Tensor c = Tensor::empty({17, 5});
  c.fill(NAN);
  const auto expected = reference_gemm(a, false, b, false, std::vector<double>(17 * 5, 0.0), 2.0, 0.0);
  gemm(a, false, b, false, c, 2.0f, 0.0f);
  expect_close(c, expected, 1e-5, 1e-4, "c");
}

TEST(Gemm, ColumnSliceViewsHonourRowStride) {
  // a, b and c are column slices of wider buffers (row stride > width), as Q/K/V out of a fused QKV.
  uint64_t seed = 200;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "ta=" << ta << " tb=" << tb);
      const int64_t m = 13, k = 17, n = 11;
      const Shape as = op_shape(m, k, ta);
      const Shape bs = op_shape(k, n, tb);
      Tensor a_buf = random_tensor({as[0], as[1] * 3}, ++seed);
      Tensor b_buf = random_tensor({bs[0], bs[1] + 7}, ++seed);
      Tensor c_buf = random_tensor({m, n * 2 + 3}, ++seed);
      Tensor a = a_buf.cols(as[1], 2 * as[1]);
      Tensor b = b_buf.cols(5, 5 + bs[1]);
      Tensor c = c_buf.cols(n, 2 * n);
      ASSERT_GT(a.stride(0), a.dim(1));
      ASSERT_GT(c.stride(0), c.dim(1));
      const std::vector<float> before = c_buf.to_vector();
      const auto expected = reference_gemm(a, ta, b, tb, to_double(c), 0.75, 0.25);
      gemm(a, ta, b, tb, c, 0.75f, 0.25f);
      expect_close(c, expected, 1e-5, 1e-4, "c slice");
      // Columns outside the slice are untouched.
      const std::vector<float> after = c_buf.to_vector();
      const int64_t width = c_buf.dim(1);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < width; ++j)
          if (j < n || j >= 2 * n) {
            ASSERT_EQ(after[i * width + j], before[i * width + j]) << i << ", " << j;
          }
    }
}

TEST(Gemm, EmptyInnerDimensionScalesOutputByBeta) {
  Tensor a = Tensor::empty({4, 0});
  Tensor b = Tensor::empty({0, 3});
  Tensor c = random_tensor({4, 3}, 7);
  std::vector<double> expected = to_double(c);
  for (double& v : expected) v *= 0.5;
  gemm(a, false, b, false, c, 1.0f, 0.5f);
  expect_close(c, expected, 1e-12, 0, "c");
  gemm(a, false, b, false, c, 1.0f, 0.0f);
  expect_close(c, std::vector<double>(12, 0.0), 1e-12, 0, "c zeroed");
}

TEST(Gemm, ShapeMismatchThrows) {
  Tensor a = random_tensor({3, 4}, 1);
  Tensor b = random_tensor({5, 6}, 2);
  Tensor c = Tensor::empty({3, 6});
  EXPECT_THROW(gemm(a, false, b, false, c), Error);
  Tensor b_ok = random_tensor({4, 6}, 3);
  Tensor c_bad = Tensor::empty({3, 5});
  EXPECT_THROW(gemm(a, false, b_ok, false, c_bad), Error);
  EXPECT_THROW(gemm(a.reshape({12}), false, b_ok, false, c), Error);
}

// Repeated runs at a fixed thread count (1, 2 and 3) are bitwise identical. Equality ACROSS thread
// counts is deliberately not asserted: gemm.h promises no such thing, and OpenBLAS may split the K
// dimension (and so order its sums) differently for a different thread count.
TEST(Gemm, RepeatedRunsAreBitwiseIdenticalAtEachThreadCount) {
  Tensor a = random_tensor({130, 257}, 1);
  Tensor b = random_tensor({257, 96}, 2);
  ampipe::testing::expect_bitwise_identical_runs(
      [&] {
        Tensor c = Tensor::empty({130, 96});
        gemm(a, false, b, false, c);
        return c.to_vector();
      },
      /*across_thread_counts=*/false);
}

}  // namespace
}  // namespace ampipe::kernels
