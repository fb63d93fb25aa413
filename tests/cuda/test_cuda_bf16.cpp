// bfloat16 on the GPU against the CPU: convert gives the same bits (core/bf16.h's rule on both
// devices), and gemm on bf16 inputs (cublasGemmEx, float32 compute) equals the CPU's (oneDNN) up to
// summation order. Skipped with the reason where no GPU can be used; run under the GPU emulator in CI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "core/tensor.h"
#include "cuda/gpu_test.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace ampipe::kernels {
namespace {

std::vector<float> random_values(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<uint16_t> bits_of(const Tensor& t) {
  const Tensor host = t.to(Device::CPU).clone();
  std::vector<uint16_t> bits(static_cast<size_t>(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i) bits[i] = host.data<bf16>()[i].bits;
  return bits;
}

TEST(CudaBf16, ConvertGivesTheCpuBitsBothWaysAndInViews) {
  AMPIPE_REQUIRE_GPU();
  std::vector<float> values = random_values(37 * 41, 1, -1e4f, 1e4f);
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -3.4e38f,
                            3.39e38f,
                            1e-40f,
                            -1e-39f,
                            std::numeric_limits<float>::quiet_NaN(),
                            1.0f + 1.0f / 256.0f};
  std::copy(std::begin(specials), std::end(specials), values.begin());
  const Tensor src = Tensor::from({37, 41}, values);
  Tensor cpu = Tensor::zeros({37, 41}, DType::BF16);
  Tensor gpu = Tensor::zeros({37, 41}, DType::BF16, Device::CUDA);
  convert(src, cpu);
  convert(src.to(Device::CUDA), gpu);
  EXPECT_EQ(bits_of(gpu), bits_of(cpu));
  // Back to float32, through column views of wider buffers on both devices.
  Tensor cpu_wide = Tensor::zeros({37, 50}), gpu_wide = Tensor::zeros({37, 50}, DType::F32, Device::CUDA);
  convert(cpu.cols(0, 30), cpu_wide.cols(5, 35));
  convert(gpu.cols(0, 30), gpu_wide.cols(5, 35));
  const std::vector<float> a = gpu_wide.to_vector(), b = cpu_wide.to_vector();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(b[i])) {
      EXPECT_TRUE(std::isnan(a[i])) << i;
    } else {
      EXPECT_EQ(a[i], b[i]) << i;
    }
  }
}

TEST(CudaBf16, GemmOnBf16InputsMatchesTheCpu) {
  AMPIPE_REQUIRE_GPU();
  struct Dims {
    int64_t m, k, n;
  };
  const int64_t big = testing::gpu_test_size(1024, 256);
  for (const Dims d : {Dims{1, 1, 1}, Dims{37, 129, 65}, Dims{64, big, 48}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        SCOPED_TRACE(::testing::Message() << d.m << "x" << d.k << "x" << d.n << " ta=" << ta << " tb=" << tb);
        const Shape as = ta ? Shape{d.k, d.m} : Shape{d.m, d.k};
        const Shape bs = tb ? Shape{d.n, d.k} : Shape{d.k, d.n};
        Tensor a = Tensor::empty(as, DType::BF16), b = Tensor::empty(bs, DType::BF16);
        convert(Tensor::from(as, random_values(d.m * d.k, 2, -1, 1)), a);
        convert(Tensor::from(bs, random_values(d.k * d.n, 3, -1, 1)), b);
        const std::vector<float> c0 = random_values(d.m * d.n, 4, -1, 1);
        Tensor cpu = Tensor::from({d.m, d.n}, c0);
        Tensor gpu = cpu.to(Device::CUDA).clone();
        gemm(a, ta, b, tb, cpu, 0.5f, 2.0f);
        gemm(a.to(Device::CUDA), ta, b.to(Device::CUDA), tb, gpu, 0.5f, 2.0f);
        const double floor = std::max(1.0, std::sqrt(static_cast<double>(d.k)));
        EXPECT_LT(testing::max_relative_error(gpu.to_vector(), cpu.to_vector(), floor), 1e-5);
      }
  }
}

}  // namespace
}  // namespace ampipe::kernels
