// bfloat16 on the GPU against the CPU: convert gives the same bits (core/bf16.h's rule on both
// devices), and gemm on bf16 inputs (cublasGemmEx, float32 compute) equals the CPU's (oneDNN) up to
// summation order; the float32 kernels on bf16 operands (attention, a norm, the row moves) give the
// CPU's results: row moves bit for bit, the rest up to float32 summation order. Skipped with the reason where
// no GPU can be used; run under the GPU emulator in CI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "core/tensor.h"
#include "cuda/gpu_test.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "kernels/permute.h"

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

TEST(CudaBf16, KernelsOnBf16OperandsMatchTheCpu) {
  AMPIPE_REQUIRE_GPU();
  auto bf16_values = [](const Shape& shape, uint32_t seed) {
    Tensor t = Tensor::empty(shape, DType::BF16);
    convert(Tensor::from(shape, random_values(shape[0] * shape[1], seed, -1, 1)), t);
    return t;
  };
  // Row moves: bf16 rows bit for bit, into a column view.
  const Tensor rows = bf16_values({40, 24}, 5);
  const Tensor index = Tensor::from_ints({6}, {39, 0, 3, 3, 17, 8});
  Tensor cpu_rows = Tensor::zeros({6, 48}, DType::BF16),
         gpu_rows = Tensor::zeros({6, 48}, DType::BF16, Device::CUDA);
  gather_rows(rows, index, cpu_rows.cols(24, 48));
  gather_rows(rows.to(Device::CUDA), index.to(Device::CUDA), gpu_rows.cols(24, 48));
  EXPECT_EQ(bits_of(gpu_rows), bits_of(cpu_rows));
  Tensor cpu_back = Tensor::zeros({40, 24}, DType::BF16),
         gpu_back = Tensor::zeros({40, 24}, DType::BF16, Device::CUDA);
  const Tensor distinct = Tensor::from_ints({6}, {1, 2, 30, 4, 5, 39});
  scatter_rows(cpu_rows.cols(24, 48), distinct, cpu_back);
  scatter_rows(gpu_rows.cols(24, 48), distinct.to(Device::CUDA), gpu_back);
  EXPECT_EQ(bits_of(gpu_back), bits_of(cpu_back));

  // RMSNorm into a bf16 output: rounded from float32 results that differ by summation order only.
  const Tensor x = bf16_values({33, 64}, 6);
  const Tensor w = Tensor::from({64}, random_values(64, 7, 0.5f, 1.5f));
  Tensor cpu_y = Tensor::empty({33, 64}, DType::BF16),
         gpu_y = Tensor::empty({33, 64}, DType::BF16, Device::CUDA);
  Tensor cpu_rstd = Tensor::empty({33}), gpu_rstd = Tensor::empty({33}, DType::F32, Device::CUDA);
  rmsnorm_forward(x, w, cpu_y, cpu_rstd, 1e-6f);
  rmsnorm_forward(x.to(Device::CUDA), w.to(Device::CUDA), gpu_y, gpu_rstd, 1e-6f);
  EXPECT_LT(testing::max_relative_error(as_dtype(gpu_y, DType::F32).to_vector(),
                                        as_dtype(cpu_y, DType::F32).to_vector(), 1e-2),
            1.0 / 128);  // at most one bf16 step apart

  // Attention on bf16 q, k, v (column views of one qkv buffer), grouped queries, a chunk inside the
  // sequence; bf16 output, float32 gradients (the backward of both devices from the CPU's forward, so
  // that an output rounded the other way does not count).
  AttentionShape s;
  s.batch = 2;
  s.num_heads = 4;
  s.num_kv_heads = 2;
  s.q_begin = 16;
  s.q_len = 48;
  s.kv_len = 64;
  const int64_t hd = 16, qw = s.num_heads * hd, kw = s.num_kv_heads * hd;
  const Tensor qkv = bf16_values({s.batch * s.kv_len, qw + 2 * kw}, 8);
  const Tensor q = bf16_values({s.batch * s.q_len, qw}, 9), dout = bf16_values({s.batch * s.q_len, qw}, 10);
  const Tensor gqkv = qkv.to(Device::CUDA);
  Tensor cpu_o = Tensor::empty({s.batch * s.q_len, qw}, DType::BF16);
  Tensor gpu_o = Tensor::empty({s.batch * s.q_len, qw}, DType::BF16, Device::CUDA);
  Tensor cpu_lse = Tensor::empty({s.batch, s.num_heads, s.q_len});
  Tensor gpu_lse = Tensor::empty({s.batch, s.num_heads, s.q_len}, DType::F32, Device::CUDA);
  attention_forward(q, qkv.cols(qw, qw + kw), qkv.cols(qw + kw, qw + 2 * kw), s, cpu_o, cpu_lse);
  attention_forward(q.to(Device::CUDA), gqkv.cols(qw, qw + kw), gqkv.cols(qw + kw, qw + 2 * kw), s, gpu_o,
                    gpu_lse);
  EXPECT_LT(testing::max_relative_error(as_dtype(gpu_o, DType::F32).to_vector(),
                                        as_dtype(cpu_o, DType::F32).to_vector(), 1e-2),
            1.0 / 128);
  EXPECT_LT(testing::max_relative_error(gpu_lse.to_vector(), cpu_lse.to_vector()), 1e-5);
  Tensor cpu_dq = Tensor::empty(q.shape()), gpu_dq = Tensor::empty(q.shape(), DType::F32, Device::CUDA);
  Tensor cpu_dkv = Tensor::zeros({s.batch * s.kv_len, 2 * kw});
  Tensor gpu_dkv = Tensor::zeros({s.batch * s.kv_len, 2 * kw}, DType::F32, Device::CUDA);
  attention_backward(q, qkv.cols(qw, qw + kw), qkv.cols(qw + kw, qw + 2 * kw), cpu_o, cpu_lse, dout, s,
                     cpu_dq, cpu_dkv.cols(0, kw), cpu_dkv.cols(kw, 2 * kw));
  attention_backward(q.to(Device::CUDA), gqkv.cols(qw, qw + kw), gqkv.cols(qw + kw, qw + 2 * kw),
                     cpu_o.to(Device::CUDA), cpu_lse.to(Device::CUDA), dout.to(Device::CUDA), s, gpu_dq,
                     gpu_dkv.cols(0, kw), gpu_dkv.cols(kw, 2 * kw));
  EXPECT_LT(testing::max_relative_error(gpu_dq.to_vector(), cpu_dq.to_vector(), 1e-2), 1e-4);
  EXPECT_LT(testing::max_relative_error(gpu_dkv.to_vector(), cpu_dkv.to_vector(), 1e-2), 1e-4);
}

}  // namespace
}  // namespace ampipe::kernels
