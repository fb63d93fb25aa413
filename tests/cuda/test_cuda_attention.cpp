// The CUDA causal attention (kernels/cuda/attention.cu) against the CPU kernel on the same random
// inputs, through the public entry points (kernels/attention.h picks the backend by the device):
// forward (out, lse) and backward (dq written, dk / dv accumulated onto random values) for batches,
// heads, grouped-query heads, head dims, query chunks at an offset (q_begin) and key lengths off the
// 64-row tiles; q, k, v as column slices of one fused QKV buffer (or of a fused KV buffer); chunks of
// a sequence adding up to its full-sequence dk / dv on the GPU; bit-identical repeated runs; shape
// errors on the GPU path.
//
// Tolerance: 1e-5 relative, measured against the largest |value| of the reference tensor (the
// max-norm relative error, max_relative_error with that floor). Elements near 0 come out of sums with
// cancellation (sum_j p_j v_j, dS K, ...) and carry an absolute float32 rounding noise of a few ulps
// of the magnitudes summed, in either kernel: the CPU and the GPU kernel are each ~2e-6 of the RMS
// from a float64 reference, and tensors such as dv (rows of the first keys sum the contributions of
// every query) or large scores (exponents rounded at ~ulp(100)) are heavy-tailed, so an error per
// element, or against the RMS, measures that noise rather than the kernels (up to ~1.2e-5 against
// the RMS, ~1.5e-6 against the largest value, on an emulation of these kernels).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "cuda/gpu_test.h"
#include "kernels/attention.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::max_relative_error;

constexpr double kTol = 1e-5;
constexpr int64_t kPad = 3;  // extra columns of every buffer an operand is a column slice of

// The same tensor on the CPU and on the GPU.
struct Twin {
  Tensor cpu, gpu;
  Twin cols(int64_t begin, int64_t end) const { return {cpu.cols(begin, end), gpu.cols(begin, end)}; }
};

Twin random_twin(const Shape& shape, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> values(static_cast<size_t>(n));
  for (float& x : values) x = dist(rng);
  Tensor cpu = Tensor::from(shape, values);
  return {cpu, cpu.to(Device::CUDA)};
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

// Values (from the GPU) against reference values (from the CPU, or a full-sequence GPU run):
// max |gpu - cpu| / max(|cpu|, floor) <= tol with floor the largest |cpu| (see the top of the file),
// at least `min_floor`.
::testing::AssertionResult close_to(const Tensor& gpu, const Tensor& cpu, double min_floor = 0.0,
                                    double tol = kTol) {
  const std::vector<float> g = gpu.to_vector(), c = cpu.to_vector();
  if (g.size() != c.size())
    return ::testing::AssertionFailure() << "sizes differ: gpu " << g.size() << ", cpu " << c.size();
  for (size_t i = 0; i < g.size(); ++i)
    if (!std::isfinite(g[i]))
      return ::testing::AssertionFailure() << "gpu element " << i << " is " << g[i] << " (cpu " << c[i] << ")";
  const double floor = std::max({max_abs(c), min_floor, 1e-30});
  size_t worst = 0;
  const double err = max_relative_error(g, c, floor, &worst);
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max relative error " << err << " > " << tol << " at element " << worst
                                       << ": gpu " << g[worst] << ", cpu " << c[worst] << " (floor " << floor
                                       << ")";
}

::testing::AssertionResult bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  if (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0) return ::testing::AssertionSuccess();
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i];
  return ::testing::AssertionFailure();
}

struct Case {
  int64_t batch, heads, kv_heads, head_dim, q_begin, q_len, kv_len;
};

std::string case_name(const Case& c) {
  return "B=" + std::to_string(c.batch) + " h=" + std::to_string(c.heads) + " g=" +
         std::to_string(c.kv_heads) + " hd=" + std::to_string(c.head_dim) + " q_begin=" +
         std::to_string(c.q_begin) + " q_len=" + std::to_string(c.q_len) + " kv_len=" +
         std::to_string(c.kv_len);
}

// One forward + backward, its inputs and outputs on both devices. Operands are column slices of
// wider buffers: q, k, v of one fused QKV buffer when the queries are the whole sequence, else q of
// its own buffer and k, v of a fused KV buffer; out, dq of random buffers (written); dk, dv of one
// random buffer (accumulated onto).
struct AttentionRun {
  AttentionShape shape;
  Twin q, k, v, dout;
  Twin out_buf, dq_buf, dkv_buf, lse;
  Twin out, dq, dk, dv;
  std::vector<float> out_init, dq_init, dkv_init;
};

AttentionRun make_run(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t d = c.heads * c.head_dim, kv_d = c.kv_heads * c.head_dim;
  const int64_t q_rows = c.batch * c.q_len, kv_rows = c.batch * c.kv_len;
  AttentionRun r;
  r.shape = AttentionShape{c.batch, c.heads, c.q_begin, c.q_len, c.kv_len, c.kv_heads};
  if (c.q_begin == 0 && c.q_len == c.kv_len) {
    const Twin qkv = random_twin({q_rows, d + 2 * kv_d + kPad}, rng);
    r.q = qkv.cols(kPad, kPad + d);
    r.k = qkv.cols(kPad + d, kPad + d + kv_d);
    r.v = qkv.cols(kPad + d + kv_d, kPad + d + 2 * kv_d);
  } else {
    r.q = random_twin({q_rows, d + kPad}, rng).cols(kPad, kPad + d);
    const Twin kv = random_twin({kv_rows, 2 * kv_d + kPad}, rng);
    r.k = kv.cols(1, 1 + kv_d);
    r.v = kv.cols(1 + kv_d, 1 + 2 * kv_d);
  }
  r.dout = random_twin({q_rows, d + kPad}, rng).cols(1, 1 + d);
  r.out_buf = random_twin({q_rows, d + kPad}, rng);
  r.dq_buf = random_twin({q_rows, d + kPad}, rng);
  r.dkv_buf = random_twin({kv_rows, 2 * kv_d + kPad}, rng);
  r.lse = random_twin({c.batch, c.heads, c.q_len}, rng);
  r.out = r.out_buf.cols(2, 2 + d);
  r.dq = r.dq_buf.cols(kPad, kPad + d);
  r.dk = r.dkv_buf.cols(kPad, kPad + kv_d);
  r.dv = r.dkv_buf.cols(kPad + kv_d, kPad + 2 * kv_d);
  r.out_init = r.out_buf.cpu.to_vector();
  r.dq_init = r.dq_buf.cpu.to_vector();
  r.dkv_init = r.dkv_buf.cpu.to_vector();
  return r;
}

// Forward, then backward from that forward's out and lse, on the tensors of one device.
void run_on(const AttentionRun& r, bool gpu) {
  auto pick = [gpu](const Twin& t) { return gpu ? t.gpu : t.cpu; };
  attention_forward(pick(r.q), pick(r.k), pick(r.v), r.shape, pick(r.out), pick(r.lse));
  attention_backward(pick(r.q), pick(r.k), pick(r.v), pick(r.out), pick(r.lse), pick(r.dout), r.shape,
                     pick(r.dq), pick(r.dk), pick(r.dv));
}

// Elements of a [rows, width] buffer outside what the kernel may write equal their initial values.
template <class Writable>
::testing::AssertionResult untouched_outside(const std::vector<float>& now, const std::vector<float>& before,
                                             int64_t width, const Writable& writable) {
  for (size_t i = 0; i < now.size(); ++i) {
    const int64_t row = static_cast<int64_t>(i) / width, col = static_cast<int64_t>(i) % width;
    if (!writable(row, col) && std::memcmp(&now[i], &before[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "row " << row << ", column " << col << " was written: " << now[i]
                                           << " (was " << before[i] << ")";
  }
  return ::testing::AssertionSuccess();
}

// Runs the case on both devices and compares every output, and that the GPU wrote nothing outside
// out, dq and the rows [0, q_begin + q_len) of each sequence of dk, dv.
void expect_gpu_matches_cpu(const Case& c, uint32_t seed) {
  SCOPED_TRACE(case_name(c));
  const AttentionRun r = make_run(c, seed);
  run_on(r, false);
  run_on(r, true);
  EXPECT_TRUE(close_to(r.out.gpu, r.out.cpu)) << "out";
  EXPECT_TRUE(close_to(r.lse.gpu, r.lse.cpu)) << "lse";
  if (c.q_begin == 0 && c.q_len == 1) {
    // The query sees one key: P = 1 and dS = dP - D = 0, so dq is exactly 0 and both kernels return
    // rounding noise; it must stay small against the inputs' scale (1).
    EXPECT_TRUE(close_to(r.dq.gpu, r.dq.cpu, 1.0)) << "dq";
  } else {
    EXPECT_TRUE(close_to(r.dq.gpu, r.dq.cpu)) << "dq";
  }
  EXPECT_TRUE(close_to(r.dk.gpu, r.dk.cpu)) << "dk";
  EXPECT_TRUE(close_to(r.dv.gpu, r.dv.cpu)) << "dv";

  const int64_t d = c.heads * c.head_dim, kv_d = c.kv_heads * c.head_dim, kv_used = c.q_begin + c.q_len;
  EXPECT_TRUE(untouched_outside(r.out_buf.gpu.to_vector(), r.out_init, d + kPad,
                                [&](int64_t, int64_t col) { return col >= 2 && col < 2 + d; }))
      << "out buffer";
  EXPECT_TRUE(untouched_outside(r.dq_buf.gpu.to_vector(), r.dq_init, d + kPad,
                                [&](int64_t, int64_t col) { return col >= kPad && col < kPad + d; }))
      << "dq buffer";
  EXPECT_TRUE(untouched_outside(r.dkv_buf.gpu.to_vector(), r.dkv_init, 2 * kv_d + kPad,
                                [&](int64_t row, int64_t col) {
                                  return row % c.kv_len < kv_used && col >= kPad && col < kPad + 2 * kv_d;
                                }))
      << "dk / dv buffer (rows at or past q_begin + q_len must not be touched)";
}

// (q_begin, q_len, kv_len): one query at position 0 and deep in a sequence, the 100-query chunk at
// 37, unused trailing key rows, whole sequences off and on the 64-row tile grid.
struct Lengths {
  int64_t q_begin, q_len, kv_len;
};
const std::vector<Lengths> kLengths = {{0, 1, 1},     {70, 1, 80},    {37, 100, 137}, {37, 100, 150},
                                       {0, 130, 130}, {64, 64, 200}, {5, 70, 75}};

TEST(CudaAttention, ForwardAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  uint32_t seed = 1;
  for (int64_t batch : {1, 2})
    for (int64_t heads : {1, 4})
      for (int64_t kv_heads : heads == 1 ? std::vector<int64_t>{1} : std::vector<int64_t>{heads, 1, 2}) {
        for (int64_t head_dim : {16, 64, 128})
          for (const Lengths& l : kLengths)
            expect_gpu_matches_cpu({batch, heads, kv_heads, head_dim, l.q_begin, l.q_len, l.kv_len}, seed++);
      }
}

// Head dims that are padded inside the kernels (1, 8, 12, 48, 100, 200) and the other sizes of
// kernel (32, 256).
TEST(CudaAttention, OtherHeadDimsMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  uint32_t seed = 1000;
  for (int64_t head_dim : {1, 8, 12, 32, 48, 100, 200, 256})
    for (const Lengths& l : std::vector<Lengths>{{37, 100, 137}, {0, 33, 40}})
      expect_gpu_matches_cpu({2, 4, 2, head_dim, l.q_begin, l.q_len, l.kv_len}, seed++);
}

// Scores of magnitude ~100: the softmax is nearly one-hot and most exponentials underflow to 0.
TEST(CudaAttention, LargeScoresMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  const Case c{1, 2, 2, 16, 0, 200, 200};
  AttentionRun r = make_run(c, 77);
  std::mt19937 rng(78);
  const Twin qkv = random_twin({200, 3 * 32}, rng, 3.0f);
  r.q = qkv.cols(0, 32);
  r.k = qkv.cols(32, 64);
  r.v = qkv.cols(64, 96);
  run_on(r, false);
  run_on(r, true);
  EXPECT_TRUE(close_to(r.out.gpu, r.out.cpu)) << "out";
  EXPECT_TRUE(close_to(r.lse.gpu, r.lse.cpu)) << "lse";
  EXPECT_TRUE(close_to(r.dq.gpu, r.dq.cpu)) << "dq";
  EXPECT_TRUE(close_to(r.dk.gpu, r.dk.cpu)) << "dk";
  EXPECT_TRUE(close_to(r.dv.gpu, r.dv.cpu)) << "dv";
}

// Rows [begin, end) of each of `batch` sequences of `seq_len` rows of a GPU tensor, stacked.
Tensor sequence_rows(const Tensor& t, int64_t batch, int64_t seq_len, int64_t begin, int64_t end) {
  Tensor out = Tensor::empty({batch * (end - begin), t.dim(1)}, DType::F32, Device::CUDA);
  for (int64_t b = 0; b < batch; ++b)
    out.rows(b * (end - begin), (b + 1) * (end - begin)).copy_from(t.rows(b * seq_len + begin, b * seq_len + end));
  return out;
}

// On the GPU: the backward of three query chunks of a sequence (each against keys [0, chunk end))
// accumulates into dk, dv what the full-sequence backward gives; each chunk's out, lse and dq are
// the full sequence's rows.
TEST(CudaAttention, ChunksAddUpToFullSequence) {
  AMPIPE_REQUIRE_GPU();
  for (const auto& [heads, kv_heads] : std::vector<std::pair<int64_t, int64_t>>{{4, 2}, {2, 2}}) {
    const int64_t batch = 2, head_dim = 64, n = 300, d = heads * head_dim, kv_d = kv_heads * head_dim;
    SCOPED_TRACE("h=" + std::to_string(heads) + " g=" + std::to_string(kv_heads));
    std::mt19937 rng(static_cast<uint32_t>(500 + heads));
    const Tensor qkv = random_twin({batch * n, d + 2 * kv_d}, rng).gpu;
    const Tensor q = qkv.cols(0, d), k = qkv.cols(d, d + kv_d), v = qkv.cols(d + kv_d, d + 2 * kv_d);
    const Tensor dout = random_twin({batch * n, d}, rng).gpu;

    const AttentionShape full_shape{batch, heads, 0, n, n, kv_heads};
    Tensor out = Tensor::empty({batch * n, d}, DType::F32, Device::CUDA);
    Tensor lse = Tensor::empty({batch, heads, n}, DType::F32, Device::CUDA);
    Tensor dq = Tensor::empty({batch * n, d}, DType::F32, Device::CUDA);
    Tensor dk = Tensor::zeros({batch * n, kv_d}, DType::F32, Device::CUDA);
    Tensor dv = Tensor::zeros({batch * n, kv_d}, DType::F32, Device::CUDA);
    attention_forward(q, k, v, full_shape, out, lse);
    attention_backward(q, k, v, out, lse, dout, full_shape, dq, dk, dv);

    Tensor chunk_dk = Tensor::zeros({batch * n, kv_d}, DType::F32, Device::CUDA);
    Tensor chunk_dv = Tensor::zeros({batch * n, kv_d}, DType::F32, Device::CUDA);
    const std::vector<int64_t> bounds = {0, 37, 150, n};
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      const int64_t c0 = bounds[i], c1 = bounds[i + 1], len = c1 - c0;
      SCOPED_TRACE("chunk [" + std::to_string(c0) + ", " + std::to_string(c1) + ")");
      // Keys [0, c1) of each sequence: kv_len = c1 here, k and v hold only what the chunk sees.
      const AttentionShape shape{batch, heads, c0, len, c1, kv_heads};
      const Tensor cq = sequence_rows(q, batch, n, c0, c1), cdout = sequence_rows(dout, batch, n, c0, c1);
      const Tensor ck = sequence_rows(k, batch, n, 0, c1), cv = sequence_rows(v, batch, n, 0, c1);
      Tensor cout = Tensor::empty({batch * len, d}, DType::F32, Device::CUDA);
      Tensor clse = Tensor::empty({batch, heads, len}, DType::F32, Device::CUDA);
      Tensor cdq = Tensor::empty({batch * len, d}, DType::F32, Device::CUDA);
      Tensor cdk = Tensor::zeros({batch * c1, kv_d}, DType::F32, Device::CUDA);
      Tensor cdv = Tensor::zeros({batch * c1, kv_d}, DType::F32, Device::CUDA);
      attention_forward(cq, ck, cv, shape, cout, clse);
      attention_backward(cq, ck, cv, cout, clse, cdout, shape, cdq, cdk, cdv);
      EXPECT_TRUE(close_to(cout.to(Device::CPU), sequence_rows(out, batch, n, c0, c1).to(Device::CPU)))
          << "out";
      EXPECT_TRUE(close_to(cdq.to(Device::CPU), sequence_rows(dq, batch, n, c0, c1).to(Device::CPU)))
          << "dq";
      Tensor full_lse_rows = Tensor::empty({batch * heads, len}, DType::F32, Device::CUDA);
      const Tensor lse2d = lse.reshape({batch * heads, n});
      for (int64_t bh = 0; bh < batch * heads; ++bh)
        full_lse_rows.rows(bh, bh + 1).copy_from(lse2d.rows(bh, bh + 1).cols(c0, c1));
      EXPECT_TRUE(close_to(clse.reshape({batch * heads, len}).to(Device::CPU), full_lse_rows.to(Device::CPU)))
          << "lse";
      // Add the chunk's dk, dv (rows [0, c1) of each sequence) into the running sums.
      for (int64_t b = 0; b < batch; ++b) {
        Tensor sum_k = chunk_dk.rows(b * n, b * n + c1), sum_v = chunk_dv.rows(b * n, b * n + c1);
        const std::vector<float> ak = sum_k.to_vector(), av = sum_v.to_vector();
        const std::vector<float> bk = cdk.rows(b * c1, (b + 1) * c1).to_vector();
        const std::vector<float> bv = cdv.rows(b * c1, (b + 1) * c1).to_vector();
        std::vector<float> sk(ak.size()), sv(av.size());
        for (size_t e = 0; e < ak.size(); ++e) {
          sk[e] = ak[e] + bk[e];
          sv[e] = av[e] + bv[e];
        }
        sum_k.copy_from(Tensor::from({c1, kv_d}, sk));
        sum_v.copy_from(Tensor::from({c1, kv_d}, sv));
      }
    }
    EXPECT_TRUE(close_to(chunk_dk.to(Device::CPU), dk.to(Device::CPU))) << "dk summed over chunks";
    EXPECT_TRUE(close_to(chunk_dv.to(Device::CPU), dv.to(Device::CPU))) << "dv summed over chunks";
  }
}

// The kernel's own accumulation: three chunks backward into one dk, dv (kv_len = n for every chunk,
// rows past a chunk's end untouched) equal one full-sequence backward into a copy of the same
// initial values.
TEST(CudaAttention, ChunksAccumulateIntoOneDkDv) {
  AMPIPE_REQUIRE_GPU();
  const int64_t batch = 2, heads = 4, kv_heads = 1, head_dim = 32, n = 200;
  const int64_t d = heads * head_dim, kv_d = kv_heads * head_dim;
  std::mt19937 rng(600);
  const Tensor q = random_twin({batch * n, d}, rng).gpu, dout = random_twin({batch * n, d}, rng).gpu;
  const Twin kv = random_twin({batch * n, 2 * kv_d}, rng);
  const Tensor k = kv.gpu.cols(0, kv_d), v = kv.gpu.cols(kv_d, 2 * kv_d);
  const Tensor init = random_twin({batch * n, 2 * kv_d}, rng).gpu;

  const AttentionShape full_shape{batch, heads, 0, n, n, kv_heads};
  Tensor out = Tensor::empty({batch * n, d}, DType::F32, Device::CUDA);
  Tensor lse = Tensor::empty({batch, heads, n}, DType::F32, Device::CUDA);
  Tensor dq = Tensor::empty({batch * n, d}, DType::F32, Device::CUDA);
  Tensor full = init.clone();
  attention_forward(q, k, v, full_shape, out, lse);
  attention_backward(q, k, v, out, lse, dout, full_shape, dq, full.cols(0, kv_d), full.cols(kv_d, 2 * kv_d));

  Tensor chunked = init.clone();
  const std::vector<int64_t> bounds = {0, 64, 101, n};
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    const int64_t c0 = bounds[i], c1 = bounds[i + 1], len = c1 - c0;
    const AttentionShape shape{batch, heads, c0, len, n, kv_heads};
    const Tensor cq = sequence_rows(q, batch, n, c0, c1), cdout = sequence_rows(dout, batch, n, c0, c1);
    Tensor cout = Tensor::empty({batch * len, d}, DType::F32, Device::CUDA);
    Tensor clse = Tensor::empty({batch, heads, len}, DType::F32, Device::CUDA);
    Tensor cdq = Tensor::empty({batch * len, d}, DType::F32, Device::CUDA);
    const std::vector<float> before = chunked.to_vector();
    attention_forward(cq, k, v, shape, cout, clse);
    attention_backward(cq, k, v, cout, clse, cdout, shape, cdq, chunked.cols(0, kv_d), chunked.cols(kv_d, 2 * kv_d));
    EXPECT_TRUE(untouched_outside(chunked.to_vector(), before, 2 * kv_d,
                                  [&](int64_t row, int64_t) { return row % n < c1; }))
        << "chunk [" << c0 << ", " << c1 << ")";
  }
  EXPECT_TRUE(close_to(chunked.to(Device::CPU), full.to(Device::CPU))) << "dk, dv";
}

// Two runs of the same call give the same bits (no atomics; fixed summation order).
TEST(CudaAttention, RepeatedRunsAreBitwiseIdentical) {
  AMPIPE_REQUIRE_GPU();
  for (const Case& c : {Case{2, 4, 2, 64, 37, 100, 150}, Case{2, 8, 2, 128, 0, 300, 300},
                        Case{1, 2, 1, 256, 10, 90, 100}}) {
    SCOPED_TRACE(case_name(c));
    std::vector<std::vector<float>> runs;
    for (int rep = 0; rep < 2; ++rep) {
      const AttentionRun r = make_run(c, 900);
      run_on(r, true);
      std::vector<float> all;
      for (const Twin* t : {&r.out_buf, &r.lse, &r.dq_buf, &r.dkv_buf}) {
        const std::vector<float> values = t->gpu.to_vector();
        all.insert(all.end(), values.begin(), values.end());
      }
      runs.push_back(std::move(all));
    }
    EXPECT_TRUE(bitwise_equal(runs[0], runs[1]));
  }
}

// No queries or no sequences: nothing to do, no error, nothing written.
TEST(CudaAttention, EmptyCallsWriteNothing) {
  AMPIPE_REQUIRE_GPU();
  for (const Case& c : {Case{0, 2, 2, 16, 0, 5, 5}, Case{2, 2, 1, 16, 4, 0, 6}}) {
    SCOPED_TRACE(case_name(c));
    const AttentionRun r = make_run(c, 5);
    run_on(r, true);
    EXPECT_TRUE(bitwise_equal(r.dkv_buf.gpu.to_vector(), r.dkv_init));
  }
}

// Calls fn, which must throw an Error whose message contains `expected`.
template <class Fn>
void expect_error_containing(const Fn& fn, const std::string& expected) {
  try {
    fn();
    FAIL() << "no error thrown; expected one mentioning \"" << expected << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

TEST(CudaAttention, RejectsBadShapesOnTheGpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(7);
  const Tensor qkv = random_twin({10, 24}, rng).gpu;
  const Tensor q = qkv.cols(0, 8), k = qkv.cols(8, 16), v = qkv.cols(16, 24);
  Tensor out = Tensor::empty({10, 8}, DType::F32, Device::CUDA);
  Tensor lse = Tensor::empty({1, 2, 10}, DType::F32, Device::CUDA);
  // Keys shorter than q_begin + q_len.
  expect_error_containing([&] { attention_forward(q, k, v, AttentionShape{1, 2, 5, 10, 10}, out, lse); },
                          "kv_len 10");
  // Hidden size not divisible by the head count.
  EXPECT_THROW(attention_forward(q, k, v, AttentionShape{1, 3, 0, 10, 10}, out, lse), Error);
  // lse of the wrong shape.
  EXPECT_THROW(attention_forward(q, k, v, AttentionShape{1, 2, 0, 10, 10}, out,
                                 Tensor::empty({2, 10}, DType::F32, Device::CUDA)),
               Error);
  // q rows not batch * q_len.
  EXPECT_THROW(attention_forward(q, k, v, AttentionShape{2, 2, 0, 10, 10}, out, lse), Error);
  // num_heads not divisible by num_kv_heads.
  expect_error_containing([&] { attention_forward(q, k, v, AttentionShape{1, 2, 0, 10, 10, 3}, out, lse); },
                          "num_heads 2 is not divisible by num_kv_heads 3");
  // Backward: dk of the wrong width.
  attention_forward(q, k, v, AttentionShape{1, 2, 0, 10, 10}, out, lse);
  Tensor dq = Tensor::empty({10, 8}, DType::F32, Device::CUDA);
  expect_error_containing(
      [&] {
        attention_backward(q, k, v, out, lse, out, AttentionShape{1, 2, 0, 10, 10}, dq,
                           Tensor::zeros({10, 4}, DType::F32, Device::CUDA),
                           Tensor::zeros({10, 8}, DType::F32, Device::CUDA));
      },
      "dk must be a float tensor [10, 8]");
  // Head dims past 256 are refused by the CUDA kernels, forward and backward.
  const Tensor wide = random_twin({4, 3 * 300}, rng).gpu;
  const Tensor wq = wide.cols(0, 300), wk = wide.cols(300, 600), wv = wide.cols(600, 900);
  Tensor wout = Tensor::empty({4, 300}, DType::F32, Device::CUDA);
  Tensor wlse = Tensor::empty({1, 1, 4}, DType::F32, Device::CUDA);
  expect_error_containing([&] { attention_forward(wq, wk, wv, AttentionShape{1, 1, 0, 4, 4}, wout, wlse); },
                          "head dim 300");
  expect_error_containing(
      [&] {
        attention_backward(wq, wk, wv, wout, wlse, wout, AttentionShape{1, 1, 0, 4, 4}, wout,
                           Tensor::zeros({4, 300}, DType::F32, Device::CUDA),
                           Tensor::zeros({4, 300}, DType::F32, Device::CUDA));
      },
      "head dim 300");
}

}  // namespace
}  // namespace ampipe::kernels
