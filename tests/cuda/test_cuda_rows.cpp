// The CUDA row kernels (LayerNorm / RMSNorm, embedding, cross-entropy, RoPE) against the CPU ones:
// the same random inputs through the public entry points with CPU tensors and with CUDA tensors
// (kernels/dispatch.cpp picks the backend), shapes that are not multiples of any tile size, row
// strided views (column slices of a wider buffer, whose padding must stay untouched), shape and id
// errors on the GPU path, and bit-identical results run to run for the reductions.
//
// Tolerance: 1e-5 relative, measured against max(|cpu|, 1) for the N(0, 1)-scaled outputs. The
// floor of 1 is their scale: an element that cancels to near zero (y = xhat * w + b, dx = rstd * (g
// - mean(g) - ...)) carries the rounding of its O(1) terms, and the two compilers fuse multiply-adds
// differently, so its error is ~1e-7 of the scale, not of the element. For dx the scale is rstd
// times that (dx = rstd * (...)): rows of width 1 have rstd = 1/sqrt(eps) and a dx that is pure
// rounding noise. Pure sums in the CPU's order (embedding) are compared bit for bit, and so is RoPE
// where the CPU code is compiled with the multiply-adds fused as the CUDA kernel reproduces them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "cuda/gpu_test.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/rope.h"
#include "test_util.h"

namespace ampipe::kernels {
namespace {

using testing::error_of;

using ampipe::testing::max_relative_error;

constexpr double kTol = 1e-5;
constexpr double kScaleFloor = 1.0;

// Whether the CPU kernels were compiled as the CUDA RoPE kernel assumes (GCC, optimised, FMA
// available: it fuses u1 * c - u2 * s into one fma); elsewhere RoPE is compared to 1e-5 only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__) && defined(__FMA__)
constexpr bool kCpuFusesLikeGcc = true;
#else
constexpr bool kCpuFusesLikeGcc = false;
#endif

// N(shift, scale^2) values.
Tensor random_cpu(const Shape& shape, std::mt19937& rng, float scale = 1.0f, float shift = 0.0f) {
  Tensor t = Tensor::empty(shape);
  std::normal_distribution<float> dist(shift, scale);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

Tensor random_ids(int64_t n, int64_t limit, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(limit - 1));
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_ints({n}, v);
}

Tensor gpu(const Tensor& t) { return t.to(Device::CUDA); }

// The same float matrix on both devices: contiguous, or (strided) columns [3, 3 + cols) of a
// [rows, cols + 7] buffer. The buffers are kept to check that the padding is not written.
struct Mat {
  Tensor cpu_buf, gpu_buf, cpu, gpu;
};
Mat make_mat(int64_t rows, int64_t cols, bool strided, std::mt19937& rng, float scale = 1.0f, float shift = 0.0f) {
  const int64_t pad = strided ? 7 : 0;
  Mat m;
  m.cpu_buf = random_cpu({rows, cols + pad}, rng, scale, shift);
  m.gpu_buf = gpu(m.cpu_buf);
  m.cpu = strided ? m.cpu_buf.cols(3, 3 + cols) : m.cpu_buf;
  m.gpu = strided ? m.gpu_buf.cols(3, 3 + cols) : m.gpu_buf;
  return m;
}

// A 1-D float vector on both devices.
struct Vec {
  Tensor cpu, gpu;
};
Vec make_vec(int64_t n, std::mt19937& rng, float scale = 1.0f) {
  Vec v;
  v.cpu = random_cpu({n}, rng, scale);
  v.gpu = gpu(v.cpu);
  return v;
}

void expect_close(const Tensor& g, const Tensor& c, const std::string& what, double floor = kScaleFloor) {
  const std::vector<float> gv = g.to_vector();
  const std::vector<float> cv = c.to_vector();
  ASSERT_EQ(gv.size(), cv.size()) << what;
  size_t worst = 0;
  const double err = max_relative_error(gv, cv, floor, &worst);
  EXPECT_LE(err, kTol) << what << ": element " << worst << " gpu " << gv[worst] << " cpu " << cv[worst];
}

// The scale of dx in the norm backward passes: rstd times O(1) values.
double dx_scale(const Tensor& rstd) {
  double m = 1.0;
  for (float v : rstd.to_vector()) m = std::max(m, static_cast<double>(v));
  return m;
}

size_t bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
  size_t n = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

void expect_bit_equal(const Tensor& g, const Tensor& c, const std::string& what) {
  const std::vector<float> gv = g.to_vector();
  const std::vector<float> cv = c.to_vector();
  ASSERT_EQ(gv.size(), cv.size()) << what;
  const size_t diff = bit_differences(gv, cv);
  if (diff == 0) return;
  size_t worst = 0;
  const double err = max_relative_error(gv, cv, kScaleFloor, &worst);
  ADD_FAILURE() << what << ": " << diff << " of " << gv.size() << " elements differ from the CPU bit for bit; "
                << "largest relative error " << err << " at " << worst << " (gpu " << gv[worst] << ", cpu "
                << cv[worst] << ")";
}

struct RowShape {
  int64_t rows, cols;
};
std::vector<RowShape> row_shapes() {
  std::vector<RowShape> s;
  for (int64_t rows : {1, 7, 300})
    for (int64_t cols : {1, 33, 1000, 4100}) s.push_back({rows, cols});
  s.push_back({5, 8193});
  s.push_back({130, 64});  // three partial blocks of 64 rows, the last one short
  return s;
}

// ----------------------------------------------------------------------------------------------
// LayerNorm / RMSNorm

TEST(CudaRows, LayerNormMatchesCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(1234);
  int index = 0;
  for (const RowShape& s : row_shapes()) {
    const bool strided = (index++ % 2) == 1;
    SCOPED_TRACE(::testing::Message() << "rows " << s.rows << " cols " << s.cols << (strided ? " strided" : ""));
    Mat x = make_mat(s.rows, s.cols, strided, rng, 2.0f, 3.0f);  // an offset mean: the two passes matter
    Mat y = make_mat(s.rows, s.cols, strided, rng);
    Vec w = make_vec(s.cols, rng), b = make_vec(s.cols, rng);
    Vec mean = make_vec(s.rows, rng), rstd = make_vec(s.rows, rng);

    layernorm_forward(x.cpu, w.cpu, b.cpu, y.cpu, mean.cpu, rstd.cpu);
    layernorm_forward(x.gpu, w.gpu, b.gpu, y.gpu, mean.gpu, rstd.gpu);
    expect_close(y.gpu_buf, y.cpu_buf, "y");
    expect_close(mean.gpu, mean.cpu, "mean");
    expect_close(rstd.gpu, rstd.cpu, "rstd", 1e-3);

    Mat dy = make_mat(s.rows, s.cols, strided, rng);
    Mat dx = make_mat(s.rows, s.cols, strided, rng);
    Vec dw = make_vec(s.cols, rng), db = make_vec(s.cols, rng);  // accumulated into
    layernorm_backward(dy.cpu, x.cpu, w.cpu, mean.cpu, rstd.cpu, dx.cpu, dw.cpu, db.cpu);
    layernorm_backward(dy.gpu, x.gpu, w.gpu, mean.gpu, rstd.gpu, dx.gpu, dw.gpu, db.gpu);
    expect_close(dx.gpu_buf, dx.cpu_buf, "dx", dx_scale(rstd.cpu));
    expect_close(dw.gpu, dw.cpu, "dweight");
    expect_close(db.gpu, db.cpu, "dbias");
  }
}

TEST(CudaRows, RmsNormMatchesCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(99);
  int index = 0;
  for (const RowShape& s : row_shapes()) {
    const bool strided = (index++ % 2) == 0;
    SCOPED_TRACE(::testing::Message() << "rows " << s.rows << " cols " << s.cols << (strided ? " strided" : ""));
    Mat x = make_mat(s.rows, s.cols, strided, rng, 1.5f);
    Mat y = make_mat(s.rows, s.cols, strided, rng);
    Vec w = make_vec(s.cols, rng);
    Vec rstd = make_vec(s.rows, rng);
    rmsnorm_forward(x.cpu, w.cpu, y.cpu, rstd.cpu, 1e-6f);
    rmsnorm_forward(x.gpu, w.gpu, y.gpu, rstd.gpu, 1e-6f);
    expect_close(y.gpu_buf, y.cpu_buf, "y");
    expect_close(rstd.gpu, rstd.cpu, "rstd", 1e-3);

    Mat dy = make_mat(s.rows, s.cols, strided, rng);
    Mat dx = make_mat(s.rows, s.cols, strided, rng);
    Vec dw = make_vec(s.cols, rng);
    rmsnorm_backward(dy.cpu, x.cpu, w.cpu, rstd.cpu, dx.cpu, dw.cpu);
    rmsnorm_backward(dy.gpu, x.gpu, w.gpu, rstd.gpu, dx.gpu, dw.gpu);
    expect_close(dx.gpu_buf, dx.cpu_buf, "dx", dx_scale(rstd.cpu));
    expect_close(dw.gpu, dw.cpu, "dweight");
  }
}

TEST(CudaRows, NormBackwardMayWriteDxOverDy) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(5);
  const int64_t rows = 70, cols = 300;
  Mat x = make_mat(rows, cols, false, rng);
  Vec w = make_vec(cols, rng), b = make_vec(cols, rng);
  Tensor y = Tensor::empty({rows, cols}, DType::F32, Device::CUDA);
  Tensor mean = Tensor::empty({rows}, DType::F32, Device::CUDA), rstd = Tensor::empty({rows}, DType::F32, Device::CUDA);
  layernorm_forward(x.gpu, w.gpu, b.gpu, y, mean, rstd);
  Mat dy = make_mat(rows, cols, false, rng);
  Tensor dx = Tensor::empty({rows, cols}, DType::F32, Device::CUDA);
  Tensor dw = Tensor::zeros({cols}, DType::F32, Device::CUDA), db = Tensor::zeros({cols}, DType::F32, Device::CUDA);
  layernorm_backward(dy.gpu, x.gpu, w.gpu, mean, rstd, dx, dw, db);
  Tensor g = dy.gpu.clone();
  Tensor dw2 = Tensor::zeros({cols}, DType::F32, Device::CUDA), db2 = Tensor::zeros({cols}, DType::F32, Device::CUDA);
  layernorm_backward(g, x.gpu, w.gpu, mean, rstd, g, dw2, db2);
  expect_bit_equal(g, dx, "layernorm dx written over dy");
  expect_bit_equal(dw2, dw, "layernorm dweight with dx over dy");
  expect_bit_equal(db2, db, "layernorm dbias with dx over dy");

  Tensor r = Tensor::empty({rows}, DType::F32, Device::CUDA);
  rmsnorm_forward(x.gpu, w.gpu, y, r, 1e-5f);
  Tensor rms_dx = Tensor::empty({rows, cols}, DType::F32, Device::CUDA);
  Tensor rms_dw = Tensor::zeros({cols}, DType::F32, Device::CUDA);
  rmsnorm_backward(dy.gpu, x.gpu, w.gpu, r, rms_dx, rms_dw);
  Tensor g2 = dy.gpu.clone();
  Tensor rms_dw2 = Tensor::zeros({cols}, DType::F32, Device::CUDA);
  rmsnorm_backward(g2, x.gpu, w.gpu, r, g2, rms_dw2);
  expect_bit_equal(g2, rms_dx, "rmsnorm dx written over dy");
  expect_bit_equal(rms_dw2, rms_dw, "rmsnorm dweight with dx over dy");
}

TEST(CudaRows, NormParameterGradientsAreBitIdenticalRunToRun) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(77);
  const int64_t rows = 1000, cols = 1029;
  Mat x = make_mat(rows, cols, true, rng);
  Vec w = make_vec(cols, rng), b = make_vec(cols, rng);
  Mat dy = make_mat(rows, cols, true, rng);
  Tensor y = Tensor::empty({rows, cols}, DType::F32, Device::CUDA);
  Tensor mean = Tensor::empty({rows}, DType::F32, Device::CUDA), rstd = Tensor::empty({rows}, DType::F32, Device::CUDA);
  layernorm_forward(x.gpu, w.gpu, b.gpu, y, mean, rstd);
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 3; ++run) {
    Tensor dx = Tensor::empty({rows, cols}, DType::F32, Device::CUDA);
    Tensor dw = gpu(Tensor::from({cols}, std::vector<float>(static_cast<size_t>(cols), 0.25f)));
    Tensor db = gpu(Tensor::from({cols}, std::vector<float>(static_cast<size_t>(cols), -0.5f)));
    layernorm_backward(dy.gpu, x.gpu, w.gpu, mean, rstd, dx, dw, db);
    Tensor r = Tensor::empty({rows}, DType::F32, Device::CUDA);
    rmsnorm_forward(x.gpu, w.gpu, y, r, 1e-5f);
    Tensor dw_rms = Tensor::zeros({cols}, DType::F32, Device::CUDA);
    rmsnorm_backward(dy.gpu, x.gpu, w.gpu, r, dx, dw_rms);
    std::vector<float> all = dw.to_vector();
    for (const Tensor* t : {&db, &dw_rms, &mean, &rstd, &y}) {
      const std::vector<float> v = t->to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    runs.push_back(all);
  }
  EXPECT_EQ(bit_differences(runs[0], runs[1]), 0u);
  EXPECT_EQ(bit_differences(runs[0], runs[2]), 0u);
}

TEST(CudaRows, NormZeroRowsAndShapeErrors) {
  AMPIPE_REQUIRE_GPU();
  const auto cuda = [](const Shape& s) { return Tensor::zeros(s, DType::F32, Device::CUDA); };
  // Zero rows: nothing to do, no launch.
  layernorm_forward(cuda({0, 8}), cuda({8}), cuda({8}), cuda({0, 8}), cuda({0}), cuda({0}));
  Tensor dw = cuda({8});
  layernorm_backward(cuda({0, 8}), cuda({0, 8}), cuda({8}), cuda({0}), cuda({0}), cuda({0, 8}), dw, cuda({8}));
  rmsnorm_forward(cuda({0, 8}), cuda({8}), cuda({0, 8}), cuda({0}), 1e-5f);
  rmsnorm_backward(cuda({0, 8}), cuda({0, 8}), cuda({8}), cuda({0}), cuda({0, 8}), dw);
  EXPECT_EQ(dw.to_vector(), std::vector<float>(8, 0.0f));

  // The same errors, with the same messages, as the CPU backend.
  const auto cpu = [](const Shape& s) { return Tensor::zeros(s); };
  const std::string gpu_msg = error_of(
      [&] { layernorm_forward(cuda({3, 4}), cuda({5}), cuda({4}), cuda({3, 4}), cuda({3}), cuda({3})); });
  const std::string cpu_msg =
      error_of([&] { layernorm_forward(cpu({3, 4}), cpu({5}), cpu({4}), cpu({3, 4}), cpu({3}), cpu({3})); });
  EXPECT_EQ(gpu_msg, cpu_msg);
  EXPECT_NE(gpu_msg.find("weight [5] must be [4]"), std::string::npos) << gpu_msg;
  EXPECT_THROW(layernorm_forward(cuda({3, 4}), cuda({4}), cuda({4}), cuda({3, 4}), cuda({2}), cuda({3})), Error);
  EXPECT_THROW(layernorm_forward(cuda({3, 4}), cuda({4}), cuda({4}), cuda({3, 4}), cuda({3}), cuda({3}), -1.0f),
               Error);
  EXPECT_THROW(layernorm_forward(cuda({3, 0}), cuda({0}), cuda({0}), cuda({3, 0}), cuda({3}), cuda({3})), Error);
  EXPECT_THROW(layernorm_backward(cuda({3, 4}), cuda({3, 4}), cuda({4}), cuda({3}), cuda({3}), cuda({3, 5}),
                                  cuda({4}), cuda({4})),
               Error);
  EXPECT_THROW(layernorm_backward(cuda({3, 4}), cuda({3, 4}), cuda({4}), cuda({3}), cuda({3}), cuda({3, 4}),
                                  cuda({4}), cuda({5})),
               Error);
  EXPECT_THROW(rmsnorm_forward(cuda({3, 4}), cuda({4}), cuda({3, 4}), cuda({2}), 1e-5f), Error);
  EXPECT_THROW(rmsnorm_backward(cuda({3, 4}), cuda({3, 4}), cuda({4}), cuda({3}), cuda({3, 4}), cuda({3})), Error);
  // Mixed devices are refused by the dispatcher.
  EXPECT_THROW(layernorm_forward(cuda({3, 4}), cpu({4}), cuda({4}), cuda({3, 4}), cuda({3}), cuda({3})), Error);
}

// ----------------------------------------------------------------------------------------------
// Embedding

struct EmbedCase {
  int64_t batch, seq_len, max_seq, vocab, width;
};

TEST(CudaRows, EmbeddingMatchesCpuBitForBit) {
  AMPIPE_REQUIRE_GPU();
  const EmbedCase cases[] = {{1, 1, 1, 1, 1},      {1, 7, 9, 50, 33},    {3, 100, 100, 17, 1000},
                             {2, 150, 160, 500, 4100}, {4, 75, 80, 3, 65}, {1, 300, 300, 50257, 40}};
  std::mt19937 rng(2024);
  int index = 0;
  for (const EmbedCase& c : cases) {
    for (const bool positions : {true, false}) {
      const bool strided = (index++ % 2) == 1;
      SCOPED_TRACE(::testing::Message() << "B " << c.batch << " N " << c.seq_len << " V " << c.vocab << " d "
                                        << c.width << (positions ? " positions" : " no positions")
                                        << (strided ? " strided" : ""));
      const int64_t n = c.batch * c.seq_len;
      // Small vocabularies repeat ids many times (the accumulation order matters there).
      const Tensor ids = random_ids(n, c.vocab, rng);
      const Tensor ids_gpu = gpu(ids);
      Mat tok = make_mat(c.vocab, c.width, strided, rng);
      Mat pos = make_mat(c.max_seq, c.width, !strided, rng);
      Mat x = make_mat(n, c.width, strided, rng);
      embedding_forward(ids, tok.cpu, positions ? pos.cpu : Tensor(), c.seq_len, x.cpu);
      embedding_forward(ids_gpu, tok.gpu, positions ? pos.gpu : Tensor(), c.seq_len, x.gpu);
      expect_bit_equal(x.gpu_buf, x.cpu_buf, "x");

      Mat dx = make_mat(n, c.width, !strided, rng);
      Mat dtok = make_mat(c.vocab, c.width, strided, rng);  // accumulated into
      Mat dpos = make_mat(c.max_seq, c.width, strided, rng);
      embedding_backward(ids, dx.cpu, c.seq_len, dtok.cpu, positions ? dpos.cpu : Tensor());
      embedding_backward(ids_gpu, dx.gpu, c.seq_len, dtok.gpu, positions ? dpos.gpu : Tensor());
      expect_bit_equal(dtok.gpu_buf, dtok.cpu_buf, "dtoken_table");
      expect_bit_equal(dpos.gpu_buf, dpos.cpu_buf, "dposition_table");
    }
  }
}

TEST(CudaRows, EmbeddingBackwardIsBitIdenticalRunToRun) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(8);
  const int64_t batch = 8, seq = 512, vocab = 37, width = 257;
  const Tensor ids = gpu(random_ids(batch * seq, vocab, rng));
  const Mat dx = make_mat(batch * seq, width, false, rng);
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 3; ++run) {
    Tensor dtok = Tensor::zeros({vocab, width}, DType::F32, Device::CUDA);
    Tensor dpos = Tensor::zeros({seq, width}, DType::F32, Device::CUDA);
    embedding_backward(ids, dx.gpu, seq, dtok, dpos);
    std::vector<float> all = dtok.to_vector();
    const std::vector<float> p = dpos.to_vector();
    all.insert(all.end(), p.begin(), p.end());
    runs.push_back(all);
  }
  EXPECT_EQ(bit_differences(runs[0], runs[1]), 0u);
  EXPECT_EQ(bit_differences(runs[0], runs[2]), 0u);
}

TEST(CudaRows, EmbeddingRefusesBadTokensAndShapesOnTheGpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(3);
  Mat tok = make_mat(5, 3, false, rng);
  Mat pos = make_mat(2, 3, false, rng);
  Tensor x = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  Tensor x_cpu = Tensor::zeros({4, 3});
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{0, 1, 5, 7}, std::vector<int32_t>{0, -1, 2, 9}}) {
    const Tensor ids = Tensor::from_ints({4}, bad);
    const std::string gpu_msg = error_of([&] { embedding_forward(gpu(ids), tok.gpu, pos.gpu, 2, x); });
    const std::string cpu_msg = error_of([&] { embedding_forward(ids, tok.cpu, pos.cpu, 2, x_cpu); });
    EXPECT_EQ(gpu_msg, cpu_msg);
    EXPECT_NE(gpu_msg.find(bad[1] < 0 ? "token id -1 at position 1" : "token id 5 at position 2"), std::string::npos)
        << gpu_msg;
    Tensor dtok = Tensor::zeros({5, 3}, DType::F32, Device::CUDA);
    const std::string gpu_back = error_of([&] { embedding_backward(gpu(ids), x, 2, dtok, Tensor()); });
    const std::string cpu_back = error_of([&] { embedding_backward(ids, x_cpu, 2, Tensor::zeros({5, 3}), Tensor()); });
    EXPECT_EQ(gpu_back, cpu_back);
    EXPECT_EQ(dtok.to_vector(), std::vector<float>(15, 0.0f));  // nothing written
  }
  // The first bad id is reported even when many are bad (ids far apart, many blocks).
  std::vector<int32_t> many(100000, 4);
  for (size_t i = 70001; i < many.size(); i += 3) many[i] = 5 + static_cast<int32_t>(i % 11);
  Tensor big_x = Tensor::zeros({100000, 3}, DType::F32, Device::CUDA);
  const std::string msg =
      error_of([&] { embedding_forward(gpu(Tensor::from_ints({100000}, many)), tok.gpu, Tensor(), 1, big_x); });
  EXPECT_NE(msg.find("token id " + std::to_string(many[70001]) + " at position 70001"), std::string::npos) << msg;

  const Tensor ids = gpu(Tensor::from_ints({4}, {0, 1, 2, 3}));
  EXPECT_THROW(embedding_forward(ids, tok.gpu, pos.gpu, 3, x), Error);                           // 4 % 3 != 0
  EXPECT_THROW(embedding_forward(ids, tok.gpu, pos.gpu, 4, x), Error);                           // S < N
  EXPECT_THROW(embedding_forward(ids, tok.gpu, gpu(Tensor::zeros({4, 4})), 2, x), Error);        // width
  EXPECT_THROW(embedding_forward(ids, tok.gpu, pos.gpu, 2, Tensor::zeros({3, 3}, DType::F32, Device::CUDA)),
               Error);
  EXPECT_THROW(embedding_forward(tok.gpu, tok.gpu, pos.gpu, 1, Tensor::zeros({5, 3}, DType::F32, Device::CUDA)),
               Error);  // float tokens
  EXPECT_THROW(embedding_backward(ids, x, 2, Tensor::zeros({5, 4}, DType::F32, Device::CUDA), Tensor()), Error);
  // No tokens: nothing to do.
  embedding_forward(gpu(Tensor::from_ints({0}, {})), tok.gpu, pos.gpu, 2, Tensor::zeros({0, 3}, DType::F32, Device::CUDA));
  embedding_backward(gpu(Tensor::from_ints({0}, {})), Tensor::zeros({0, 3}, DType::F32, Device::CUDA), 2,
                     Tensor::zeros({5, 3}, DType::F32, Device::CUDA), Tensor());
}

// ----------------------------------------------------------------------------------------------
// Cross-entropy

TEST(CudaRows, CrossEntropyMatchesCpu) {
  AMPIPE_REQUIRE_GPU();
  struct Case {
    int64_t tokens, vocab;
  };
  const Case cases[] = {{1, 1}, {7, 33}, {300, 1000}, {5, 4100}, {37, 50257}, {1, 8193}};
  std::mt19937 rng(31337);
  int index = 0;
  for (const Case& c : cases) {
    const bool strided = (index++ % 2) == 1;
    SCOPED_TRACE(::testing::Message() << "T " << c.tokens << " V " << c.vocab << (strided ? " strided" : ""));
    Mat logits = make_mat(c.tokens, c.vocab, strided, rng, 3.0f);
    const Tensor targets = random_ids(c.tokens, c.vocab, rng);
    const Tensor targets_gpu = gpu(targets);
    Vec losses = make_vec(c.tokens, rng);
    cross_entropy_forward(logits.cpu, targets, losses.cpu);
    cross_entropy_forward(logits.gpu, targets_gpu, losses.gpu);
    expect_close(losses.gpu, losses.cpu, "losses");

    const float scale = 1.0f / static_cast<float>(c.tokens);
    Mat dlogits = make_mat(c.tokens, c.vocab, !strided, rng);
    cross_entropy_backward(logits.cpu, targets, scale, dlogits.cpu);
    cross_entropy_backward(logits.gpu, targets_gpu, scale, dlogits.gpu);
    // Softmax probabilities are ~1/V: compared relative to themselves (floor 1e-3 of the 1/T scale
    // is far below them only where they underflow towards 0, where the absolute error is tiny).
    expect_close(dlogits.gpu_buf, dlogits.cpu_buf, "dlogits", 1e-3 * scale);

    // dlogits written over logits: the same values.
    Tensor alias_buf = logits.gpu_buf.clone();
    Tensor alias = strided ? alias_buf.cols(3, 3 + c.vocab) : alias_buf;
    cross_entropy_backward(alias, targets_gpu, scale, alias);
    expect_bit_equal(alias, dlogits.gpu, "dlogits over logits");
  }
}

TEST(CudaRows, CrossEntropyIsBitIdenticalRunToRun) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(4);
  const int64_t tokens = 64, vocab = 50257;
  const Mat logits = make_mat(tokens, vocab, false, rng, 2.0f);
  const Tensor targets = gpu(random_ids(tokens, vocab, rng));
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    Tensor losses = Tensor::empty({tokens}, DType::F32, Device::CUDA);
    cross_entropy_forward(logits.gpu, targets, losses);
    Tensor d = Tensor::empty({tokens, vocab}, DType::F32, Device::CUDA);
    cross_entropy_backward(logits.gpu, targets, 0.5f, d);
    std::vector<float> all = losses.to_vector();
    const std::vector<float> dv = d.to_vector();
    all.insert(all.end(), dv.begin(), dv.end());
    runs.push_back(all);
  }
  EXPECT_EQ(bit_differences(runs[0], runs[1]), 0u);
}

TEST(CudaRows, CrossEntropyRefusesBadTargetsAndShapesOnTheGpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(6);
  Mat logits = make_mat(2, 5, false, rng);
  Tensor losses = Tensor::zeros({2}, DType::F32, Device::CUDA);
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{0, 5}, std::vector<int32_t>{-1, 0}}) {
    const Tensor t = Tensor::from_ints({2}, bad);
    const std::string gpu_msg = error_of([&] { cross_entropy_forward(logits.gpu, gpu(t), losses); });
    const std::string cpu_msg = error_of([&] { cross_entropy_forward(logits.cpu, t, Tensor::zeros({2})); });
    EXPECT_EQ(gpu_msg, cpu_msg);
    EXPECT_NE(gpu_msg.find(bad[0] < 0 ? "target -1 of token 0" : "target 5 of token 1"), std::string::npos)
        << gpu_msg;
    const std::string gpu_back = error_of([&] { cross_entropy_backward(logits.gpu, gpu(t), 1.0f, logits.gpu); });
    const std::string cpu_back = error_of([&] { cross_entropy_backward(logits.cpu, t, 1.0f, logits.cpu.clone()); });
    EXPECT_EQ(gpu_back, cpu_back);
  }
  EXPECT_EQ(bit_differences(logits.gpu.to_vector(), logits.cpu.to_vector()), 0u);  // untouched
  const Tensor ok = gpu(Tensor::from_ints({2}, {0, 4}));
  EXPECT_THROW(cross_entropy_forward(logits.gpu, gpu(Tensor::from_ints({3}, {0, 1, 2})), losses), Error);
  EXPECT_THROW(cross_entropy_forward(logits.gpu, ok, Tensor::zeros({3}, DType::F32, Device::CUDA)), Error);
  EXPECT_THROW(cross_entropy_forward(logits.gpu, Tensor::zeros({2}, DType::F32, Device::CUDA), losses), Error);
  EXPECT_THROW(cross_entropy_backward(logits.gpu, ok, 1.0f, Tensor::zeros({2, 4}, DType::F32, Device::CUDA)), Error);
  EXPECT_THROW(cross_entropy_forward(Tensor::zeros({2, 0}, DType::F32, Device::CUDA), ok, losses), Error);
  // No tokens: nothing to do.
  cross_entropy_forward(Tensor::zeros({0, 5}, DType::F32, Device::CUDA), gpu(Tensor::from_ints({0}, {})),
                        Tensor::zeros({0}, DType::F32, Device::CUDA));
}

// ----------------------------------------------------------------------------------------------
// RoPE

TEST(CudaRows, RopeMatchesCpuBitForBit) {
  AMPIPE_REQUIRE_GPU();
  struct Case {
    int64_t batch, n, heads, head_dim, pos_begin;
    double theta;
  };
  // Widths 2, 34, 1000 (4 x 250), 4100 (1 x 4100 and 2 x 2050), 8 x 64 and 8 x 128 (Llama-like).
  const Case cases[] = {{1, 1, 1, 2, 0, 10000.0},       {1, 7, 1, 34, 3, 10000.0},   {3, 100, 4, 250, 0, 10000.0},
                        {2, 150, 1, 4100, 5, 500000.0}, {1, 7, 2, 2050, 0, 10000.0}, {2, 150, 8, 64, 4000, 1e6},
                        {1, 300, 8, 128, 0, 10000.0},   {2, 33, 3, 16, 100000, 10000.0}};
  std::mt19937 rng(555);
  int index = 0;
  for (const Case& c : cases) {
    const bool strided = (index++ % 2) == 1;
    SCOPED_TRACE(::testing::Message() << "B " << c.batch << " n " << c.n << " heads " << c.heads << " hd "
                                      << c.head_dim << " pos " << c.pos_begin << (strided ? " strided" : ""));
    Mat x = make_mat(c.batch * c.n, c.heads * c.head_dim, strided, rng);
    rope_forward(x.cpu, c.batch, c.heads, c.pos_begin, c.theta);
    rope_forward(x.gpu, c.batch, c.heads, c.pos_begin, c.theta);
    expect_close(x.gpu_buf, x.cpu_buf, "rope_forward");
    if (kCpuFusesLikeGcc) expect_bit_equal(x.gpu_buf, x.cpu_buf, "rope_forward");
    rope_backward(x.cpu, c.batch, c.heads, c.pos_begin, c.theta);
    rope_backward(x.gpu, c.batch, c.heads, c.pos_begin, c.theta);
    expect_close(x.gpu_buf, x.cpu_buf, "rope_backward");
    if (kCpuFusesLikeGcc) expect_bit_equal(x.gpu_buf, x.cpu_buf, "rope_backward");
  }
}

TEST(CudaRows, RopeRefusesBadShapesOnTheGpu) {
  AMPIPE_REQUIRE_GPU();
  Tensor x = Tensor::zeros({12, 6}, DType::F32, Device::CUDA);
  const std::string gpu_msg = error_of([&] { rope_forward(x, 1, 2, 0, 10000.0); });
  const std::string cpu_msg = error_of([&] { rope_forward(Tensor::zeros({12, 6}), 1, 2, 0, 10000.0); });
  EXPECT_EQ(gpu_msg, cpu_msg);
  EXPECT_NE(gpu_msg.find("head_dim 3"), std::string::npos) << gpu_msg;
  EXPECT_THROW(rope_backward(x, 1, 2, 0, 10000.0), Error);
  EXPECT_THROW(rope_forward(x, 5, 1, 0, 10000.0), Error);
  EXPECT_THROW(rope_forward(x, 1, 4, 0, 10000.0), Error);
  EXPECT_THROW(rope_forward(x, 1, 1, -1, 10000.0), Error);
  EXPECT_THROW(rope_forward(x, 1, 1, 0, 0.0), Error);
  EXPECT_THROW(rope_forward(Tensor::zeros({12}, DType::F32, Device::CUDA), 1, 1, 0, 10000.0), Error);
  rope_forward(Tensor::zeros({0, 6}, DType::F32, Device::CUDA), 1, 1, 0, 10000.0);  // no rows: nothing to do
}

}  // namespace
}  // namespace ampipe::kernels
