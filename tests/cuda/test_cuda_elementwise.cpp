// The CUDA gemm, element-wise kernels and AdamW against the CPU kernels on the same random inputs,
// through the public entry points (kernels/*.h pick the backend by the tensors' device).
//
// Operands are contiguous or column slices of a wider buffer; the whole buffers are compared, so a
// write outside a view shows up as well. Reductions are checked to give bit-identical results run
// to run, and shape errors to throw ampipe::Error on the GPU path too.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "cuda/gpu_test.h"
#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::max_relative_error;

// float32 kernels against float32 kernels: a few ulps apart (expf against the CPU's fast exp,
// contraction into FMAs), far below this.
constexpr double kTol = 1e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Columns added to a buffer whose column slice [kViewBegin, kViewBegin + cols) is the operand.
constexpr int64_t kViewPad = 7;
constexpr int64_t kViewBegin = 3;

std::vector<float> random_values(int64_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// The same operand on the CPU and on the GPU, with the buffers that hold them.
struct Twin {
  Tensor cpu, gpu;
  Tensor cpu_buf, gpu_buf;
};

// A [rows, cols] operand: the buffer [rows, cols (+ kViewPad when view)] holds `values`; with
// `view` the operand is its column slice [kViewBegin, kViewBegin + cols).
Twin twin_from(int64_t rows, int64_t cols, bool view, const std::vector<float>& values) {
  const int64_t width = view ? cols + kViewPad : cols;
  Tensor buf = Tensor::from({rows, width}, values);
  Tensor gbuf = buf.to(Device::CUDA);
  if (!view) return {buf, gbuf, buf, gbuf};
  return {buf.cols(kViewBegin, kViewBegin + cols), gbuf.cols(kViewBegin, kViewBegin + cols), buf, gbuf};
}

Twin random_twin(int64_t rows, int64_t cols, bool view, std::mt19937& rng, float lo = -1.0f,
                 float hi = 1.0f) {
  const int64_t width = view ? cols + kViewPad : cols;
  return twin_from(rows, cols, view, random_values(rows * width, rng, lo, hi));
}

// Any shape, contiguous.
Twin random_twin(const Shape& shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  Tensor t = Tensor::from(shape, random_values(n, rng, lo, hi));
  Tensor g = t.to(Device::CUDA);
  return {t, g, t, g};
}

// max_relative_error of the GPU values against the CPU ones (NaN must match NaN: the error measure
// itself skips NaN).
::testing::AssertionResult close_values(const std::vector<float>& gpu, const std::vector<float>& cpu,
                                        double tol, double floor) {
  if (gpu.size() != cpu.size())
    return ::testing::AssertionFailure() << "sizes differ: gpu " << gpu.size() << ", cpu " << cpu.size();
  for (size_t i = 0; i < gpu.size(); ++i)
    if (std::isnan(gpu[i]) != std::isnan(cpu[i]))
      return ::testing::AssertionFailure() << "element " << i << ": gpu " << gpu[i] << ", cpu " << cpu[i];
  size_t worst = 0;
  const double err = max_relative_error(gpu, cpu, floor, &worst);
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max relative error " << err << " > " << tol << " at element "
                                       << worst << ": gpu " << gpu[worst] << ", cpu " << cpu[worst];
}

// The whole buffers of a twin (the operand and, for a view, the columns around it).
::testing::AssertionResult close(const Twin& t, double tol = kTol, double floor = 1e-3) {
  return close_values(t.gpu_buf.to_vector(), t.cpu_buf.to_vector(), tol, floor);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_vector();
  const std::vector<float> vb = b.to_vector();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) == 0;
}

Tensor gpu_zeros(const Shape& shape) { return Tensor::zeros(shape, DType::F32, Device::CUDA); }

struct RC {
  int64_t rows, cols;
};
// Empty, single, not multiples of 32 or of any tile, one warp-row / one block-row softmax either
// side of the 1024-column switch, and wide rows.
const RC kShapes[] = {{0, 5},     {1, 1},    {3, 17},   {17, 3},   {130, 5}, {300, 130},
                      {1000, 33}, {7, 1024}, {7, 1031}, {5, 4099}, {3, 8200}};

// Every shape of kShapes, contiguous and as a column slice.
struct ShapeCase {
  RC s;
  bool view;
};
std::vector<ShapeCase> shape_cases() {
  std::vector<ShapeCase> cases;
  for (const RC& s : kShapes)
    for (bool view : {false, true}) cases.push_back({s, view});
  return cases;
}

::testing::Message describe(const RC& s, bool view) {
  return ::testing::Message() << s.rows << "x" << s.cols << (view ? " view" : "");
}

// --- gemm ---

Shape op_shape(int64_t rows, int64_t cols, bool transpose) {
  return transpose ? Shape{cols, rows} : Shape{rows, cols};
}

// An operand whose op() is [rows, cols].
Twin gemm_operand(int64_t rows, int64_t cols, bool transpose, bool view, std::mt19937& rng) {
  const Shape s = op_shape(rows, cols, transpose);
  return random_twin(s[0], s[1], view, rng);
}

struct Dims {
  int64_t m, k, n;
};

// cuBLAS and OpenBLAS sum the K products in different orders; the rounding errors are ulps of the
// partial sums, which for operands in [-1, 1] are ~sqrt(K) / 3 in size, not of the (possibly
// cancelled) result: errors are measured against max(|c|, sqrt(K)), K >= 1. (A host emulation of
// sequential FMA sums against OpenBLAS at 300x1000x257 gives 1.6e-6 so; 4e-3 against max(|c|, 1e-3).)
double gemm_floor(int64_t k) { return std::max(1.0, std::sqrt(static_cast<double>(k))); }

TEST(CudaGemm, AllTransposesAlphaBetaAndViewsMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(1);
  const Dims dims[] = {{1, 1, 1}, {37, 129, 65}, {300, 1000, 257}, {3, 17, 5}, {64, 1, 17}, {1, 300, 1}};
  struct AlphaBeta {
    float alpha, beta;
  };
  const AlphaBeta scalars[] = {{1.0f, 0.0f}, {0.75f, -1.5f}, {-2.0f, 1.0f}};
  for (const Dims& d : dims)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const AlphaBeta& ab : scalars)
          for (bool view : {false, true}) {
            SCOPED_TRACE(::testing::Message()
                         << "m=" << d.m << " k=" << d.k << " n=" << d.n << " ta=" << ta << " tb=" << tb
                         << " alpha=" << ab.alpha << " beta=" << ab.beta << (view ? " views" : ""));
            const Twin a = gemm_operand(d.m, d.k, ta, view, rng);
            const Twin b = gemm_operand(d.k, d.n, tb, view, rng);
            // beta == 0: c is NaN, which must not be read.
            const int64_t c_width = view ? d.n + kViewPad : d.n;
            const Twin c =
                ab.beta == 0.0f
                    ? twin_from(d.m, d.n, view, std::vector<float>(static_cast<size_t>(d.m * c_width), kNaN))
                    : random_twin(d.m, d.n, view, rng);
            gemm(a.cpu, ta, b.cpu, tb, c.cpu, ab.alpha, ab.beta);
            gemm(a.gpu, ta, b.gpu, tb, c.gpu, ab.alpha, ab.beta);
            for (float x : c.gpu.to_vector()) ASSERT_FALSE(std::isnan(x));
            EXPECT_TRUE(close(c, kTol, gemm_floor(d.k)));
          }
}

TEST(CudaGemm, EmptyInnerDimensionScalesOrZeroesC) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(2);
  for (bool view : {false, true})
    for (float beta : {0.0f, 1.0f, -2.5f}) {
      SCOPED_TRACE(::testing::Message() << "beta=" << beta << (view ? " view" : ""));
      const Twin a = random_twin(5, 0, false, rng);
      const Twin b = random_twin(0, 9, false, rng);
      const int64_t c_width = view ? 9 + kViewPad : 9;
      const Twin c = beta == 0.0f
                         ? twin_from(5, 9, view, std::vector<float>(static_cast<size_t>(5 * c_width), kNaN))
                         : random_twin(5, 9, view, rng);
      const std::vector<float> before = c.cpu.to_vector();
      gemm(a.cpu, false, b.cpu, false, c.cpu, 1.5f, beta);
      gemm(a.gpu, false, b.gpu, false, c.gpu, 1.5f, beta);
      const std::vector<float> after = c.gpu.to_vector();
      for (size_t i = 0; i < after.size(); ++i) ASSERT_EQ(after[i], beta == 0.0f ? 0.0f : beta * before[i]);
      EXPECT_TRUE(close(c, 0.0));
      // Transposed operands with K == 0 too.
      gemm(Tensor::empty({0, 5}, DType::F32, Device::CUDA), true,
           Tensor::empty({9, 0}, DType::F32, Device::CUDA), true, c.gpu, 1.0f, 1.0f);
      EXPECT_TRUE(close(c, 0.0));
    }
}

TEST(CudaGemm, EmptyOutputIsANoOp) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(3);
  // M == 0 and N == 0, with K > 0 and K == 0: nothing to compute, nothing written.
  const Twin a0 = random_twin(0, 4, false, rng);
  const Twin b = random_twin(4, 6, false, rng);
  Tensor c0 = gpu_zeros({0, 6});
  EXPECT_NO_THROW(gemm(a0.gpu, false, b.gpu, false, c0, 1.0f, 0.0f));
  const Twin a = random_twin(3, 4, false, rng);
  const Twin b0 = random_twin(4, 0, false, rng);
  Tensor c1 = gpu_zeros({3, 0});
  EXPECT_NO_THROW(gemm(a.gpu, false, b0.gpu, false, c1, 1.0f, 2.0f));
  EXPECT_NO_THROW(gemm(gpu_zeros({0, 0}), false, gpu_zeros({0, 6}), false, gpu_zeros({0, 6}), 1.0f, 0.0f));
  EXPECT_NO_THROW(gemm(b.gpu, true, gpu_zeros({4, 0}), false, gpu_zeros({6, 0}), 1.0f, 0.0f));
}

TEST(CudaGemm, ShapeErrorsThrow) {
  AMPIPE_REQUIRE_GPU();
  EXPECT_THROW(gemm(gpu_zeros({3, 4}), false, gpu_zeros({5, 6}), false, gpu_zeros({3, 6})), Error);
  EXPECT_THROW(gemm(gpu_zeros({3, 4}), false, gpu_zeros({4, 6}), false, gpu_zeros({3, 5})), Error);
  EXPECT_THROW(gemm(gpu_zeros({3, 4}), true, gpu_zeros({4, 6}), false, gpu_zeros({3, 6})), Error);
  EXPECT_THROW(gemm(gpu_zeros({12}), false, gpu_zeros({4, 6}), false, gpu_zeros({3, 6})), Error);
  // A mix of devices is refused by the dispatcher.
  EXPECT_THROW(gemm(Tensor::zeros({3, 4}), false, gpu_zeros({4, 6}), false, gpu_zeros({3, 6})), Error);
}

TEST(CudaGemm, RepeatedRunsAreBitIdentical) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(4);
  const Twin a = random_twin(300, 1000, true, rng);
  const Twin b = random_twin(257, 1000, false, rng);
  Tensor c1 = gpu_zeros({300, 257});
  Tensor c2 = gpu_zeros({300, 257});
  gemm(a.gpu, false, b.gpu, true, c1);
  gemm(a.gpu, false, b.gpu, true, c2);
  EXPECT_TRUE(bitwise_equal(c1, c2));
}

// --- element-wise and row-wise ---

TEST(CudaElementwise, AddBiasMatchesCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(10);
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    const Twin y = random_twin(s.rows, s.cols, view, rng);
    const Twin bias = random_twin(Shape{s.cols}, rng);
    add_bias(y.cpu, bias.cpu);
    add_bias(y.gpu, bias.gpu);
    EXPECT_TRUE(close(y, 0.0));  // one correctly rounded addition per element: exact
  }
}

TEST(CudaElementwise, BiasBackwardAccumulatesColumnSums) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(11);
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    const Twin dy = random_twin(s.rows, s.cols, view, rng);
    const Twin dbias = random_twin(Shape{s.cols}, rng);  // accumulated into: starts non-zero
    bias_backward(dy.cpu, dbias.cpu);
    bias_backward(dy.gpu, dbias.gpu);
    // Same partial sums in the same order as the CPU: expected exact, checked to the float tolerance.
    EXPECT_TRUE(close(dbias));
  }
  // More rows than one block of partials, and bit-identical run to run.
  const Twin dy = random_twin(5000, 300, true, rng);
  Tensor d1 = gpu_zeros({300});
  Tensor d2 = gpu_zeros({300});
  Tensor dc = Tensor::zeros({300});
  bias_backward(dy.gpu, d1);
  bias_backward(dy.gpu, d2);
  bias_backward(dy.cpu, dc);
  EXPECT_TRUE(bitwise_equal(d1, d2));
  EXPECT_TRUE(close_values(d1.to_vector(), dc.to_vector(), kTol, 1e-3));
}

TEST(CudaElementwise, AddInplaceAndScaleInplaceMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(12);
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    const Twin y = random_twin(s.rows, s.cols, view, rng);
    const Twin x = random_twin(s.rows, s.cols, !view, rng);  // one strided, one not
    add_inplace(y.cpu, x.cpu);
    add_inplace(y.gpu, x.gpu);
    EXPECT_TRUE(close(y, 0.0));
    scale_inplace(y.cpu, -1.7f);
    scale_inplace(y.gpu, -1.7f);
    EXPECT_TRUE(close(y, 0.0));  // single roundings: exact
  }
  for (const Shape& shape : {Shape{}, Shape{100003}, Shape{3, 5, 7}}) {
    const Twin y = random_twin(shape, rng);
    const Twin x = random_twin(shape, rng);
    add_inplace(y.cpu, x.cpu);
    add_inplace(y.gpu, x.gpu);
    scale_inplace(y.cpu, 0.3f);
    scale_inplace(y.gpu, 0.3f);
    EXPECT_TRUE(close(y, 0.0));
  }
}

TEST(CudaElementwise, GeluForwardAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(13);
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    const Twin x = random_twin(s.rows, s.cols, view, rng, -6.0f, 6.0f);
    const Twin y = random_twin(s.rows, s.cols, !view, rng);
    gelu_forward(x.cpu, y.cpu);
    gelu_forward(x.gpu, y.gpu);
    EXPECT_TRUE(close(y));
    const Twin dy = random_twin(s.rows, s.cols, view, rng);
    const Twin dx = random_twin(s.rows, s.cols, view, rng);
    gelu_backward(x.cpu, dy.cpu, dx.cpu);
    gelu_backward(x.gpu, dy.gpu, dx.gpu);
    // gelu' crosses zero (x ~ -0.75), where s + x s (1 - s) 2u' cancels: errors there are ulps of
    // the terms (~0.2), so they are measured against max(|dx|, 1) (|dy| <= 1).
    EXPECT_TRUE(close(dx, kTol, 1.0));
  }
  // Saturated tails (the capped exponent) and a 3-D tensor.
  const std::vector<float> tails = {-200.0f, -90.0f, -40.0f, -11.0f, -1e-30f,
                                    0.0f,    1e-30f, 11.0f,  40.0f,  200.0f};
  const Twin x = twin_from(2, 5, false, tails);
  const Twin y = random_twin(2, 5, false, rng);
  gelu_forward(x.cpu, y.cpu);
  gelu_forward(x.gpu, y.gpu);
  EXPECT_TRUE(close(y));
  const Twin x3 = random_twin(Shape{3, 5, 7}, rng, -4.0f, 4.0f);
  const Twin y3 = random_twin(Shape{3, 5, 7}, rng);
  gelu_forward(x3.cpu, y3.cpu);
  gelu_forward(x3.gpu, y3.gpu);
  EXPECT_TRUE(close(y3));
}

TEST(CudaElementwise, SwigluForwardAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(14);
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    const Twin gate = random_twin(s.rows, s.cols, view, rng, -8.0f, 8.0f);
    const Twin up = random_twin(s.rows, s.cols, !view, rng);
    const Twin out = random_twin(s.rows, s.cols, view, rng);
    swiglu_forward(gate.cpu, up.cpu, out.cpu);
    swiglu_forward(gate.gpu, up.gpu, out.gpu);
    EXPECT_TRUE(close(out));
    const Twin dout = random_twin(s.rows, s.cols, view, rng);
    const Twin dgate = random_twin(s.rows, s.cols, !view, rng);
    const Twin dup = random_twin(s.rows, s.cols, view, rng);
    swiglu_backward(gate.cpu, up.cpu, dout.cpu, dgate.cpu, dup.cpu);
    swiglu_backward(gate.gpu, up.gpu, dout.gpu, dgate.gpu, dup.gpu);
    // silu' = s (1 + z (1 - s)) crosses zero (z ~ -1.28): measured against max(|dgate|, 1) as for gelu.
    EXPECT_TRUE(close(dgate, kTol, 1.0));
    EXPECT_TRUE(close(dup));
  }
  const std::vector<float> tails = {-200.0f, -90.0f, -40.0f, -1e-30f, 0.0f, 1e-30f, 40.0f, 200.0f};
  const Twin gate = twin_from(1, 8, false, tails);
  const Twin up = random_twin(1, 8, false, rng);
  const Twin out = random_twin(1, 8, false, rng);
  const Twin dgate = random_twin(1, 8, false, rng);
  const Twin dup = random_twin(1, 8, false, rng);
  swiglu_forward(gate.cpu, up.cpu, out.cpu);
  swiglu_forward(gate.gpu, up.gpu, out.gpu);
  swiglu_backward(gate.cpu, up.cpu, up.cpu, dgate.cpu, dup.cpu);
  swiglu_backward(gate.gpu, up.gpu, up.gpu, dgate.gpu, dup.gpu);
  EXPECT_TRUE(close(out));
  EXPECT_TRUE(close(dgate, kTol, 1.0));
  EXPECT_TRUE(close(dup));
}

TEST(CudaElementwise, SoftmaxRowsAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(15);
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    const Twin x = random_twin(s.rows, s.cols, view, rng, -8.0f, 8.0f);
    const Twin y = random_twin(s.rows, s.cols, !view, rng);
    softmax_rows(x.cpu, y.cpu);
    softmax_rows(x.gpu, y.gpu);
    EXPECT_TRUE(close(y));
    // The backward gets the same y on both devices: each device's own forward differs in the last
    // bits (expf), and dx = y (dy - dot) amplifies that where dy is close to dot (a test bug the GPU
    // emulator found: the comparison failed at 6e-5 relative on rows with such cancellation).
    Tensor(y.gpu).copy_from(y.cpu);  // a handle: writes y.gpu's storage
    const Twin dy = random_twin(s.rows, s.cols, view, rng);
    const Twin dx = random_twin(s.rows, s.cols, !view, rng);
    softmax_rows_backward(y.cpu, dy.cpu, dx.cpu);
    softmax_rows_backward(y.gpu, dy.gpu, dx.gpu);
    EXPECT_TRUE(close(dx));
    // In place on the GPU gives the same values.
    Tensor inplace = x.gpu.clone();
    softmax_rows(inplace, inplace);
    EXPECT_TRUE(close_values(inplace.to_vector(), y.cpu.to_vector(), kTol, 1e-3));
  }
}

TEST(CudaElementwise, SoftmaxRowsAreBitIdenticalRunToRun) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(16);
  for (const RC& s : {RC{513, 100}, RC{40, 5000}}) {  // warp-per-row and block-per-row kernels
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    const Twin x = random_twin(s.rows, s.cols, true, rng, -8.0f, 8.0f);
    const Twin dy = random_twin(s.rows, s.cols, false, rng);
    Tensor y1 = gpu_zeros({s.rows, s.cols}), y2 = gpu_zeros({s.rows, s.cols});
    softmax_rows(x.gpu, y1);
    softmax_rows(x.gpu, y2);
    EXPECT_TRUE(bitwise_equal(y1, y2));
    Tensor d1 = gpu_zeros({s.rows, s.cols}), d2 = gpu_zeros({s.rows, s.cols});
    softmax_rows_backward(y1, dy.gpu, d1);
    softmax_rows_backward(y1, dy.gpu, d2);
    EXPECT_TRUE(bitwise_equal(d1, d2));
  }
}

TEST(CudaElementwise, SumOfSquaresMatchesCpuInDouble) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(17);
  auto expect_sum = [](const Twin& t) {
    const double cpu = sum_of_squares(t.cpu);
    const double gpu = sum_of_squares(t.gpu);
    if (cpu == 0.0) {
      EXPECT_EQ(gpu, 0.0);
    } else {
      // Exact squares summed in double in different orders: ~1e-16 per addition.
      EXPECT_LE(std::abs(gpu - cpu) / cpu, 1e-12) << "gpu " << gpu << ", cpu " << cpu;
    }
  };
  for (const auto& [s, view] : shape_cases()) {
    SCOPED_TRACE(describe(s, view));
    expect_sum(random_twin(s.rows, s.cols, view, rng, -3.0f, 3.0f));
  }
  for (const Shape& shape : {Shape{}, Shape{100003}, Shape{3, 5, 7}}) expect_sum(random_twin(shape, rng));
  // More than the 1024 first-pass blocks (a grid-stride loop), contiguous and strided.
  expect_sum(random_twin(1100, 4001, false, rng));
  const Twin big = random_twin(1100, 4001, true, rng);
  expect_sum(big);
  EXPECT_EQ(sum_of_squares(big.gpu), sum_of_squares(big.gpu));  // bit-identical run to run
}

TEST(CudaElementwise, ShapeErrorsThrow) {
  AMPIPE_REQUIRE_GPU();
  const Tensor a = gpu_zeros({3, 4});
  const Tensor b = gpu_zeros({3, 5});
  const Tensor v = gpu_zeros({12});
  EXPECT_THROW(add_bias(a, gpu_zeros({5})), Error);
  EXPECT_THROW(add_bias(v, gpu_zeros({12})), Error);
  EXPECT_THROW(bias_backward(a, gpu_zeros({3})), Error);
  EXPECT_THROW(add_inplace(a, b), Error);
  EXPECT_THROW(gelu_forward(a, b), Error);
  EXPECT_THROW(gelu_backward(a, a, b), Error);
  EXPECT_THROW(swiglu_forward(v, v, v), Error);
  EXPECT_THROW(swiglu_forward(a, a, b), Error);
  EXPECT_THROW(swiglu_backward(a, a, a, a, b), Error);
  EXPECT_THROW(softmax_rows(v, v), Error);
  EXPECT_THROW(softmax_rows(a, b), Error);
  EXPECT_THROW(softmax_rows_backward(a, b, a), Error);
  EXPECT_THROW(add_bias(a, Tensor::zeros({4})), Error);  // mixed devices
}

// --- AdamW ---

TEST(CudaAdamW, ThreeStepsMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(20);
  struct Case {
    Shape shape;
    bool view;
  };
  const Case cases[] = {{{1}, false},      {{17}, false},    {{3, 5, 7}, false}, {{130, 64}, false},
                        {{100003}, false}, {{33, 17}, true}, {{300, 130}, true}, {{0, 4}, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << shape_string(c.shape) << (c.view ? " view" : ""));
    auto make = [&](float lo, float hi) {
      return c.shape.size() == 2 ? random_twin(c.shape[0], c.shape[1], c.view, rng, lo, hi)
                                 : random_twin(c.shape, rng, lo, hi);
    };
    const Twin param = make(-1.0f, 1.0f);
    const Twin m = make(-0.01f, 0.01f);
    const Twin v = make(0.0f, 1e-4f);
    AdamWStep hp;
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    for (int64_t step = 1; step <= 3; ++step) {
      hp.step = step;
      const Twin grad = make(-0.1f, 0.1f);
      adamw_update(param.cpu, grad.cpu, m.cpu, v.cpu, hp);
      adamw_update(param.gpu, grad.gpu, m.gpu, v.gpu, hp);
    }
    // m = b1 m + (1-b1) g cancels where the terms (~0.01) do: measured against max(|m|, 0.01). The
    // update lr * mhat / sqrt(vhat) carries that error amplified by 1 / sqrt(vhat): params (~1) are
    // measured against max(|param|, 1). A wrong formula is off by ~lr = 1e-2 there.
    EXPECT_TRUE(close(param, kTol, 1.0));
    EXPECT_TRUE(close(m, kTol, 1e-2));
    EXPECT_TRUE(close(v));
  }
}

TEST(CudaAdamW, ArgumentErrorsThrow) {
  AMPIPE_REQUIRE_GPU();
  const Tensor p = gpu_zeros({3});
  AdamWStep hp;
  hp.lr = 1e-3f;
  EXPECT_THROW(adamw_update(p, gpu_zeros({4}), gpu_zeros({3}), gpu_zeros({3}), hp), Error);
  EXPECT_THROW(adamw_update(p, gpu_zeros({3}), gpu_zeros({1, 3}), gpu_zeros({3}), hp), Error);
  EXPECT_THROW(adamw_update(p, gpu_zeros({3}), gpu_zeros({3}), gpu_zeros({1, 3}), hp), Error);
  hp.step = 0;
  EXPECT_THROW(adamw_update(p, gpu_zeros({3}), gpu_zeros({3}), gpu_zeros({3}), hp), Error);
  hp.step = 1;
  hp.beta1 = 1.0f;
  EXPECT_THROW(adamw_update(p, gpu_zeros({3}), gpu_zeros({3}), gpu_zeros({3}), hp), Error);
  hp.beta1 = 0.9f;
  hp.beta2 = -0.1f;
  EXPECT_THROW(adamw_update(p, gpu_zeros({3}), gpu_zeros({3}), gpu_zeros({3}), hp), Error);
  hp.beta2 = 0.95f;
  hp.eps = -1.0f;
  EXPECT_THROW(adamw_update(p, gpu_zeros({3}), gpu_zeros({3}), gpu_zeros({3}), hp), Error);
}

}  // namespace
}  // namespace ampipe::kernels
