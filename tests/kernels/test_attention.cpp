// Causal attention (kernels/attention.h) against a naive float64 reference: forward, log-sum-exp,
// backward, query chunks with an offset, accumulation of dK/dV over chunks, determinism, and
// grouped-query attention against ordinary attention on K/V repeated per query head.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/attention.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/gemm.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

// ---------------------------------------------------------------------------------------------
// Float64 reference. q [B*Nq, d], k and v [B*Nk, d], dense row-major.

struct ReferenceForward {
  std::vector<double> out;  // [B*Nq, d]
  std::vector<double> lse;  // [B, h, Nq]
};

struct ReferenceGradients {
  std::vector<double> dq, dk, dv;
};

// Scaled causal scores of query row i (local) of sequence b, head h, against keys [0, q_begin + i].
std::vector<double> reference_scores(const std::vector<double>& q, const std::vector<double>& k,
                                     const AttentionShape& s, int64_t d, int64_t b, int64_t h, int64_t i) {
  const int64_t hd = d / s.num_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const int64_t pos = s.q_begin + i;
  std::vector<double> scores(pos + 1);
  for (int64_t j = 0; j <= pos; ++j) {
    double dotp = 0;
    for (int64_t c = 0; c < hd; ++c)
      dotp += q[(b * s.q_len + i) * d + h * hd + c] * k[(b * s.kv_len + j) * d + h * hd + c];
    scores[j] = dotp * scale;
  }
  return scores;
}

// Softmax of the scores; returns the log-sum-exp.
double softmax_in_place(std::vector<double>& x) {
  double mx = -INFINITY;
  for (double value : x) mx = std::max(mx, value);
  double sum = 0;
  for (double& value : x) sum += (value = std::exp(value - mx));
  for (double& value : x) value /= sum;
  return mx + std::log(sum);
}

ReferenceForward reference_forward(const std::vector<double>& q, const std::vector<double>& k,
                                   const std::vector<double>& v, const AttentionShape& s, int64_t d) {
  const int64_t hd = d / s.num_heads;
  ReferenceForward r{std::vector<double>(s.batch * s.q_len * d, 0.0),
                     std::vector<double>(s.batch * s.num_heads * s.q_len, 0.0)};
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.num_heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        std::vector<double> p = reference_scores(q, k, s, d, b, h, i);
        r.lse[(b * s.num_heads + h) * s.q_len + i] = softmax_in_place(p);
        for (int64_t j = 0; j < static_cast<int64_t>(p.size()); ++j)
          for (int64_t c = 0; c < hd; ++c)
            r.out[(b * s.q_len + i) * d + h * hd + c] += p[j] * v[(b * s.kv_len + j) * d + h * hd + c];
      }
  return r;
}

// Gradients of sum(out * dout) with respect to q, k, v (dk, dv not accumulated onto anything).
ReferenceGradients reference_backward(const std::vector<double>& q, const std::vector<double>& k,
                                      const std::vector<double>& v, const std::vector<double>& dout,
                                      const AttentionShape& s, int64_t d) {
  const int64_t hd = d / s.num_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  ReferenceGradients g{std::vector<double>(q.size(), 0.0), std::vector<double>(k.size(), 0.0),
                       std::vector<double>(v.size(), 0.0)};
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.num_heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        std::vector<double> p = reference_scores(q, k, s, d, b, h, i);
        softmax_in_place(p);
        const int64_t qrow = (b * s.q_len + i) * d + h * hd;
        const int64_t keys = static_cast<int64_t>(p.size());
        std::vector<double> dp(keys, 0.0);
        double weighted = 0;  // sum_j p_j dp_j
        for (int64_t j = 0; j < keys; ++j) {
          const int64_t krow = (b * s.kv_len + j) * d + h * hd;
          for (int64_t c = 0; c < hd; ++c) {
            dp[j] += dout[qrow + c] * v[krow + c];
            g.dv[krow + c] += p[j] * dout[qrow + c];
          }
          weighted += p[j] * dp[j];
        }
        for (int64_t j = 0; j < keys; ++j) {
          const double ds = p[j] * (dp[j] - weighted) * scale;
          const int64_t krow = (b * s.kv_len + j) * d + h * hd;
          for (int64_t c = 0; c < hd; ++c) {
            g.dq[qrow + c] += ds * k[krow + c];
            g.dk[krow + c] += ds * q[qrow + c];
          }
        }
      }
  return g;
}

// ---------------------------------------------------------------------------------------------
// Inputs shaped like the model's: q, k, v are column slices of one fused [B*N, 3d] tensor.

struct FusedQkv {
  Tensor fused, q, k, v;
};

FusedQkv fused_qkv(int64_t rows, int64_t d, uint64_t seed, float scale = 1.0f) {
  Tensor fused = random_tensor({rows, 3 * d}, seed, scale);
  return {fused, fused.cols(0, d), fused.cols(d, 2 * d), fused.cols(2 * d, 3 * d)};
}

// Rows [begin, end) of each of `batch` sequences of `seq_len` rows, stacked: [batch*(end-begin), cols].
Tensor sequence_rows(const Tensor& t, int64_t batch, int64_t seq_len, int64_t begin, int64_t end) {
  Tensor out = Tensor::empty({batch * (end - begin), t.dim(1)});
  for (int64_t b = 0; b < batch; ++b)
    out.rows(b * (end - begin), (b + 1) * (end - begin))
        .copy_from(t.rows(b * seq_len + begin, b * seq_len + end));
  return out;
}

std::vector<double> sequence_rows(const std::vector<double>& x, int64_t cols, int64_t batch, int64_t seq_len,
                                  int64_t begin, int64_t end) {
  std::vector<double> out;
  for (int64_t b = 0; b < batch; ++b)
    out.insert(out.end(), x.begin() + (b * seq_len + begin) * cols, x.begin() + (b * seq_len + end) * cols);
  return out;
}

// lse [B, h, N] restricted to positions [begin, end).
std::vector<double> lse_rows(const std::vector<double>& lse, int64_t groups, int64_t seq_len, int64_t begin,
                             int64_t end) {
  return sequence_rows(lse, 1, groups, seq_len, begin, end);
}

struct Case {
  int64_t batch, heads, head_dim, seq_len;
};

// Shapes around the kernel's tile sizes (64 queries x 128 keys), head sizes with and without a
// multiple-of-8 width.
const std::vector<Case> kCases = {
    {1, 1, 8, 1},    {2, 2, 4, 7},   {1, 4, 16, 65},  {2, 1, 64, 130},
    {1, 2, 12, 300}, {2, 4, 8, 129}, {1, 1, 64, 257},
};

constexpr double kOutAtol = 2e-5, kOutRtol = 1e-4;
constexpr double kGradAtol = 1e-4, kGradRtol = 1e-3;

std::string case_name(const Case& c) {
  return "B=" + std::to_string(c.batch) + " h=" + std::to_string(c.heads) +
         " hd=" + std::to_string(c.head_dim) + " N=" + std::to_string(c.seq_len);
}

TEST(Attention, ForwardMatchesReferenceOnFusedQkvViews) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(case_name(c));
    const int64_t d = c.heads * c.head_dim;
    FusedQkv x = fused_qkv(c.batch * c.seq_len, d, 11 + c.seq_len);
    const AttentionShape shape{c.batch, c.heads, 0, c.seq_len, c.seq_len};
    Tensor out = Tensor::empty({c.batch * c.seq_len, d});
    Tensor lse = Tensor::empty({c.batch, c.heads, c.seq_len});
    attention_forward(x.q, x.k, x.v, shape, out, lse);
    ReferenceForward ref = reference_forward(to_double(x.q), to_double(x.k), to_double(x.v), shape, d);
    expect_close(out, ref.out, kOutAtol, kOutRtol, "out");
  }
}

TEST(Attention, LogSumExpMatchesReference) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(case_name(c));
    const int64_t d = c.heads * c.head_dim;
    FusedQkv x = fused_qkv(c.batch * c.seq_len, d, 21 + c.seq_len);
    const AttentionShape shape{c.batch, c.heads, 0, c.seq_len, c.seq_len};
    Tensor out = Tensor::empty({c.batch * c.seq_len, d});
    Tensor lse = Tensor::empty({c.batch, c.heads, c.seq_len});
    attention_forward(x.q, x.k, x.v, shape, out, lse);
    ReferenceForward ref = reference_forward(to_double(x.q), to_double(x.k), to_double(x.v), shape, d);
    expect_close(lse, ref.lse, kOutAtol, kOutRtol, "lse");
  }
}

// Scores of magnitude ~100: the softmax is nearly one-hot and most exponentials underflow to 0.
TEST(Attention, LargeScoresMatchReference) {
  const Case c{1, 2, 16, 200};
  const int64_t d = c.heads * c.head_dim;
  FusedQkv x = fused_qkv(c.seq_len, d, 5, 3.0f);
  const AttentionShape shape{1, c.heads, 0, c.seq_len, c.seq_len};
  Tensor out = Tensor::empty({c.seq_len, d});
  Tensor lse = Tensor::empty({1, c.heads, c.seq_len});
  attention_forward(x.q, x.k, x.v, shape, out, lse);
  ReferenceForward ref = reference_forward(to_double(x.q), to_double(x.k), to_double(x.v), shape, d);
  expect_close(out, ref.out, 1e-4, 1e-4, "out");
  expect_close(lse, ref.lse, 1e-4, 1e-5, "lse");
}

TEST(Attention, BackwardMatchesReferenceAndAccumulatesDkDv) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(case_name(c));
    const int64_t d = c.heads * c.head_dim, rows = c.batch * c.seq_len;
    FusedQkv x = fused_qkv(rows, d, 31 + c.seq_len);
    const AttentionShape shape{c.batch, c.heads, 0, c.seq_len, c.seq_len};
    Tensor out = Tensor::empty({rows, d});
    Tensor lse = Tensor::empty({c.batch, c.heads, c.seq_len});
    attention_forward(x.q, x.k, x.v, shape, out, lse);
    Tensor dout = random_tensor({rows, d}, 41 + c.seq_len);
    // Gradients land in column slices of a fused buffer, like the QKV projection's input gradient;
    // dq is overwritten (start from garbage), dk and dv are added to what is there.
    Tensor dfused = random_tensor({rows, 3 * d}, 51 + c.seq_len);
    Tensor dq = dfused.cols(0, d), dk = dfused.cols(d, 2 * d), dv = dfused.cols(2 * d, 3 * d);
    std::vector<double> dk_before = to_double(dk), dv_before = to_double(dv);
    attention_backward(x.q, x.k, x.v, out, lse, dout, shape, dq, dk, dv);

    ReferenceGradients ref =
        reference_backward(to_double(x.q), to_double(x.k), to_double(x.v), to_double(dout), shape, d);
    for (size_t i = 0; i < ref.dk.size(); ++i) {
      ref.dk[i] += dk_before[i];
      ref.dv[i] += dv_before[i];
    }
    expect_close(dq, ref.dq, kGradAtol, kGradRtol, "dq");
    expect_close(dk, ref.dk, kGradAtol, kGradRtol, "dk");
    expect_close(dv, ref.dv, kGradAtol, kGradRtol, "dv");
  }
}

// The float64 reference backward is itself checked against central differences of the float64
// forward, at a query offset with an unused trailing key row (its gradient must be 0).
TEST(Attention, ReferenceBackwardMatchesFiniteDifferences) {
  const int64_t d = 6;
  const AttentionShape shape{2, 2, 2, 3, 6};  // B=2, h=2 (hd=3), queries at positions 2..4, 6 key rows
  std::vector<double> q = to_double(random_tensor({shape.batch * shape.q_len, d}, 61));
  std::vector<double> k = to_double(random_tensor({shape.batch * shape.kv_len, d}, 62));
  std::vector<double> v = to_double(random_tensor({shape.batch * shape.kv_len, d}, 63));
  std::vector<double> w = to_double(random_tensor({shape.batch * shape.q_len, d}, 64));
  auto loss = [&] {
    std::vector<double> out = reference_forward(q, k, v, shape, d).out;
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += out[i] * w[i];
    return sum;
  };
  ReferenceGradients g = reference_backward(q, k, v, w, shape, d);
  expect_close(g.dq, ampipe::testing::finite_difference(q, loss), 1e-7, 1e-6, "dq");
  expect_close(g.dk, ampipe::testing::finite_difference(k, loss), 1e-7, 1e-6, "dk");
  expect_close(g.dv, ampipe::testing::finite_difference(v, loss), 1e-7, 1e-6, "dv");
  for (int64_t b = 0; b < shape.batch; ++b)
    for (int64_t c = 0; c < d; ++c) EXPECT_EQ(g.dk[(b * shape.kv_len + 5) * d + c], 0.0) << "unused key row";
}

// ---------------------------------------------------------------------------------------------
// Chunks: the pipeline runs a sequence as query chunks [c0, c1) against keys [0, c1).

struct FullSequence {
  int64_t batch, heads, d, seq_len;
  FusedQkv x;
  Tensor out, lse, dout, dq, dk, dv;
};

FullSequence full_sequence(int64_t batch, int64_t heads, int64_t head_dim, int64_t seq_len, uint64_t seed) {
  const int64_t d = heads * head_dim, rows = batch * seq_len;
  FullSequence f{batch,
                 heads,
                 d,
                 seq_len,
                 fused_qkv(rows, d, seed),
                 Tensor::empty({rows, d}),
                 Tensor::empty({batch, heads, seq_len}),
                 random_tensor({rows, d}, seed + 1),
                 Tensor::empty({rows, d}),
                 Tensor::zeros({rows, d}),
                 Tensor::zeros({rows, d})};
  const AttentionShape shape{batch, heads, 0, seq_len, seq_len};
  attention_forward(f.x.q, f.x.k, f.x.v, shape, f.out, f.lse);
  attention_backward(f.x.q, f.x.k, f.x.v, f.out, f.lse, f.dout, shape, f.dq, f.dk, f.dv);
  return f;
}

TEST(Attention, ChunkWithOffsetEqualsFullSequenceRows) {
  const FullSequence f = full_sequence(2, 2, 64, 300, 71);
  const std::vector<double> full_out = to_double(f.out), full_lse = to_double(f.lse),
                            full_dq = to_double(f.dq);
  // Chunk boundaries on and off the tile grid; keys are the whole sequence (kv_len = N).
  for (const auto& [c0, c1] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 64}, {64, 192}, {100, 101}, {130, 300}}) {
    SCOPED_TRACE("chunk [" + std::to_string(c0) + ", " + std::to_string(c1) + ")");
    const AttentionShape shape{f.batch, f.heads, c0, c1 - c0, f.seq_len};
    Tensor q = sequence_rows(f.x.q, f.batch, f.seq_len, c0, c1);
    Tensor out = Tensor::empty({f.batch * (c1 - c0), f.d});
    Tensor lse = Tensor::empty({f.batch, f.heads, c1 - c0});
    attention_forward(q, f.x.k, f.x.v, shape, out, lse);
    expect_close(out, sequence_rows(full_out, f.d, f.batch, f.seq_len, c0, c1), 1e-6, 1e-5, "out");
    expect_close(lse, lse_rows(full_lse, f.batch * f.heads, f.seq_len, c0, c1), 1e-6, 1e-6, "lse");

    Tensor dout = sequence_rows(f.dout, f.batch, f.seq_len, c0, c1);
    Tensor dq = Tensor::empty({f.batch * (c1 - c0), f.d});
    Tensor dk = Tensor::zeros({f.batch * f.seq_len, f.d}), dv = Tensor::zeros({f.batch * f.seq_len, f.d});
    attention_backward(q, f.x.k, f.x.v, out, lse, dout, shape, dq, dk, dv);
    expect_close(dq, sequence_rows(full_dq, f.d, f.batch, f.seq_len, c0, c1), 1e-5, 1e-4, "dq");
  }
}

// kv_len may be exactly q_begin + q_len: k and v need not hold keys past the chunk.
TEST(Attention, ChunkWithExactKeyRangeEqualsFullSequenceRows) {
  const FullSequence f = full_sequence(1, 4, 16, 200, 81);
  const int64_t c0 = 77, c1 = 150;
  const AttentionShape shape{1, f.heads, c0, c1 - c0, c1};
  Tensor out = Tensor::empty({c1 - c0, f.d});
  Tensor lse = Tensor::empty({1, f.heads, c1 - c0});
  attention_forward(f.x.q.rows(c0, c1), f.x.k.rows(0, c1), f.x.v.rows(0, c1), shape, out, lse);
  expect_close(out, to_double(f.out.rows(c0, c1)), 1e-6, 1e-5, "out");
  expect_close(lse, lse_rows(to_double(f.lse), f.heads, f.seq_len, c0, c1), 1e-6, 1e-6, "lse");
}

// dK and dV summed over the chunks of a sequence (uneven boundaries) equal the full-sequence ones,
// each chunk's dq equals the full dq rows, and rows at or past a chunk's end are never touched.
TEST(Attention, ChunkGradientsSumToFullSequenceGradients) {
  const FullSequence f = full_sequence(2, 2, 32, 300, 91);
  const std::vector<int64_t> bounds = {0, 37, 150, 151, 256, 300};
  Tensor dk = Tensor::zeros({f.batch * f.seq_len, f.d}), dv = Tensor::zeros({f.batch * f.seq_len, f.d});
  Tensor dq = Tensor::empty({f.batch * f.seq_len, f.d});
  for (size_t c = 0; c + 1 < bounds.size(); ++c) {
    const int64_t c0 = bounds[c], c1 = bounds[c + 1], len = c1 - c0;
    SCOPED_TRACE("chunk [" + std::to_string(c0) + ", " + std::to_string(c1) + ")");
    const AttentionShape shape{f.batch, f.heads, c0, len, f.seq_len};
    Tensor q = sequence_rows(f.x.q, f.batch, f.seq_len, c0, c1);
    Tensor out = Tensor::empty({f.batch * len, f.d});
    Tensor lse = Tensor::empty({f.batch, f.heads, len});
    attention_forward(q, f.x.k, f.x.v, shape, out, lse);
    Tensor dout = sequence_rows(f.dout, f.batch, f.seq_len, c0, c1);
    Tensor dq_chunk = Tensor::empty({f.batch * len, f.d});
    std::vector<float> dk_before = dk.to_vector();
    attention_backward(q, f.x.k, f.x.v, out, lse, dout, shape, dq_chunk, dk, dv);
    std::vector<float> dk_after = dk.to_vector();
    for (int64_t b = 0; b < f.batch; ++b) {
      for (int64_t i = (b * f.seq_len + c1) * f.d; i < (b + 1) * f.seq_len * f.d; ++i)
        ASSERT_EQ(dk_after[i], dk_before[i]) << "dk row past the chunk's keys was touched, element " << i;
      dq.rows(b * f.seq_len + c0, b * f.seq_len + c1).copy_from(dq_chunk.rows(b * len, (b + 1) * len));
    }
  }
  expect_close(dk, to_double(f.dk), 1e-5, 1e-4, "dk");
  expect_close(dv, to_double(f.dv), 1e-5, 1e-4, "dv");
  expect_close(dq, to_double(f.dq), 1e-5, 1e-4, "dq");
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (every task owns disjoint output
// elements and sums in a fixed order; see kernels/cpu/attention.cpp).
TEST(Attention, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  ampipe::testing::expect_bitwise_identical_runs([] {
    const FullSequence f = full_sequence(2, 4, 32, 333, 101);
    std::vector<float> all;
    for (const Tensor* t : {&f.out, &f.lse, &f.dq, &f.dk, &f.dv}) ampipe::testing::append_values(all, *t);
    return all;
  });
}

// The softmax's exponential: within 2 ulp of exp2 / exp over the float range, exactly 0 far below
// it (the masked and underflowing scores), +inf above it, NaN kept.
TEST(Attention, FastExpIsAccurateAndSaturates) {
  namespace fm = fast_math;
  double worst2 = 0, worst_e = 0;
  for (float x = -126.0f; x < 127.0f; x += 0.00731f) {
    const double exact2 = std::exp2(static_cast<double>(x));
    worst2 = std::max(worst2, std::abs(fm::fast_exp2(x) - exact2) / exact2);
    const float xe = x * 0.69f;  // e^xe stays in the normal float range
    const double exact_e = std::exp(static_cast<double>(xe));
    worst_e = std::max(worst_e, std::abs(fm::fast_exp(xe) - exact_e) / exact_e);
#if AMPIPE_HAVE_AVX2_FMA
    EXPECT_EQ(_mm256_cvtss_f32(fm::fast_exp2_avx2(_mm256_set1_ps(x))), fm::fast_exp2(x)) << x;
    EXPECT_EQ(_mm256_cvtss_f32(fm::fast_exp_avx2(_mm256_set1_ps(xe))), fm::fast_exp(xe)) << xe;
#endif
  }
  EXPECT_LT(worst2, 2 * 1.2e-7);
  EXPECT_LT(worst_e, 2 * 1.2e-7);
  for (const float tiny : {-127.0f, -1000.0f, -1e30f, -INFINITY}) {
    EXPECT_EQ(fm::fast_exp2(tiny), 0.0f) << tiny;
    EXPECT_EQ(fm::fast_exp(tiny), 0.0f) << tiny;
  }
  for (const float huge : {128.0f, 1e30f, INFINITY}) {
    EXPECT_EQ(fm::fast_exp2(huge), INFINITY) << huge;
    EXPECT_EQ(fm::fast_exp(huge), INFINITY) << huge;
  }
  EXPECT_TRUE(std::isnan(fm::fast_exp2(NAN)));
  EXPECT_TRUE(std::isnan(fm::fast_exp(NAN)));
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

TEST(Attention, RejectsInconsistentShapes) {
  FusedQkv x = fused_qkv(10, 8, 1);
  Tensor out = Tensor::empty({10, 8});
  Tensor lse = Tensor::empty({1, 2, 10});
  // Keys shorter than q_begin + q_len.
  EXPECT_THROW(attention_forward(x.q, x.k, x.v, AttentionShape{1, 2, 5, 10, 10}, out, lse), Error);
  // Hidden size not divisible by the head count.
  EXPECT_THROW(attention_forward(x.q, x.k, x.v, AttentionShape{1, 3, 0, 10, 10}, out, lse), Error);
  // lse of the wrong shape.
  EXPECT_THROW(attention_forward(x.q, x.k, x.v, AttentionShape{1, 2, 0, 10, 10}, out, Tensor::empty({2, 10})),
               Error);
  // q rows not batch * q_len.
  EXPECT_THROW(attention_forward(x.q, x.k, x.v, AttentionShape{2, 2, 0, 10, 10}, out, lse), Error);
  expect_error_containing(
      [&] {
        attention_forward(x.q, x.k, x.v, AttentionShape{1, 2, 5, 10, 10}, out, lse);
      },
      "kv_len 10");
}

// ---------------------------------------------------------------------------------------------
// Grouped-query attention: h query heads share g KV heads, query head j reading KV head j / (h / g).

// kv [rows, g*hd] -> [rows, h*hd] with query head j's columns holding KV head j / (h / g).
Tensor repeat_kv(const Tensor& kv, int64_t heads, int64_t kv_heads) {
  const int64_t hd = kv.dim(1) / kv_heads, group = heads / kv_heads;
  Tensor out = Tensor::empty({kv.dim(0), heads * hd});
  for (int64_t j = 0; j < heads; ++j)
    out.cols(j * hd, (j + 1) * hd).copy_from(kv.cols((j / group) * hd, (j / group + 1) * hd));
  return out;
}

// grad [rows, h*hd] of repeated K or V -> [rows, g*hd]: each KV head sums its query heads' columns.
std::vector<double> sum_over_groups(const std::vector<double>& grad, int64_t rows, int64_t heads,
                                    int64_t kv_heads, int64_t hd) {
  const int64_t group = heads / kv_heads;
  std::vector<double> out(static_cast<size_t>(rows * kv_heads * hd), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < heads; ++j)
      for (int64_t c = 0; c < hd; ++c)
        out[(r * kv_heads + j / group) * hd + c] += grad[(r * heads + j) * hd + c];
  return out;
}

struct GqaCase {
  int64_t heads, kv_heads, head_dim;
};

std::string gqa_name(const GqaCase& c) {
  return "h=" + std::to_string(c.heads) + " g=" + std::to_string(c.kv_heads) +
         " hd=" + std::to_string(c.head_dim);
}

// One chunk of a GQA layer's attention, inputs as the model holds them: q [B*Nq, h*hd]; k and v
// column slices of a fused [B*Nk, 2*g*hd + pad] buffer; dk, dv column slices of a random buffer
// (accumulated into).
struct GqaRun {
  AttentionShape shape;
  Tensor q, kv_fused, k, v, dout;
  Tensor out, lse, dq, dkv_fused, dk, dv;
};

GqaRun gqa_run(const GqaCase& c, int64_t batch, int64_t q_begin, int64_t q_len, int64_t kv_len, uint64_t seed,
               int64_t num_kv_heads_field) {
  const int64_t d = c.heads * c.head_dim, kv_d = c.kv_heads * c.head_dim, pad = 5;
  GqaRun r;
  r.shape = AttentionShape{batch, c.heads, q_begin, q_len, kv_len, num_kv_heads_field};
  r.q = random_tensor({batch * q_len, d}, seed);
  r.kv_fused = random_tensor({batch * kv_len, 2 * kv_d + pad}, seed + 1);
  r.k = r.kv_fused.cols(pad, pad + kv_d);
  r.v = r.kv_fused.cols(pad + kv_d, pad + 2 * kv_d);
  r.dout = random_tensor({batch * q_len, d}, seed + 2);
  r.out = Tensor::empty({batch * q_len, d});
  r.lse = Tensor::empty({batch, c.heads, q_len});
  r.dq = random_tensor({batch * q_len, d}, seed + 3);  // overwritten
  r.dkv_fused = random_tensor({batch * kv_len, 2 * kv_d}, seed + 4);
  r.dk = r.dkv_fused.cols(0, kv_d);
  r.dv = r.dkv_fused.cols(kv_d, 2 * kv_d);
  attention_forward(r.q, r.k, r.v, r.shape, r.out, r.lse);
  attention_backward(r.q, r.k, r.v, r.out, r.lse, r.dout, r.shape, r.dq, r.dk, r.dv);
  return r;
}

std::vector<float> gqa_outputs(const GqaRun& r) {
  std::vector<float> all;
  for (const Tensor* t : {&r.out, &r.lse, &r.dq, &r.dkv_fused}) {
    const std::vector<float> values = t->to_vector();
    all.insert(all.end(), values.begin(), values.end());
  }
  return all;
}

// num_kv_heads = h is the existing multi-head path: bit for bit what num_kv_heads = 0 gives.
TEST(AttentionGqa, AllHeadsAsKvHeadsEqualsDefaultBitForBit) {
  const GqaCase c{4, 4, 16};
  const std::vector<float> by_default = gqa_outputs(gqa_run(c, 2, 53, 77, 130, 500, 0));
  const std::vector<float> explicit_g = gqa_outputs(gqa_run(c, 2, 53, 77, 130, 500, 4));
  ASSERT_EQ(by_default.size(), explicit_g.size());
  EXPECT_EQ(std::memcmp(by_default.data(), explicit_g.data(), by_default.size() * sizeof(float)), 0);
}

// g < h equals ordinary attention on K / V repeated per query head (the kernel on the repeated
// tensors, and the float64 reference), forward and backward; dK / dV of the repeated run are summed
// over the heads of each group. A chunk at q_begin > 0 of B = 2 sequences, lengths off the tile grid.
TEST(AttentionGqa, MatchesAttentionOnRepeatedKeysAndValues) {
  const int64_t batch = 2, q_begin = 53, q_len = 77, kv_len = 130;
  for (const GqaCase& c : {GqaCase{8, 2, 16}, GqaCase{4, 1, 12}, GqaCase{6, 3, 8}}) {
    SCOPED_TRACE(gqa_name(c));
    const int64_t d = c.heads * c.head_dim, kv_d = c.kv_heads * c.head_dim;
    const GqaRun g = gqa_run(c, batch, q_begin, q_len, kv_len, 600 + c.heads, c.kv_heads);
    const std::vector<double> dk_before =
        to_double(random_tensor({batch * kv_len, 2 * kv_d}, 604 + c.heads).cols(0, kv_d));
    const std::vector<double> dv_before =
        to_double(random_tensor({batch * kv_len, 2 * kv_d}, 604 + c.heads).cols(kv_d, 2 * kv_d));

    // The kernel on repeated K / V (ordinary multi-head attention).
    const AttentionShape mha{batch, c.heads, q_begin, q_len, kv_len};
    const Tensor k_rep = repeat_kv(g.k, c.heads, c.kv_heads), v_rep = repeat_kv(g.v, c.heads, c.kv_heads);
    Tensor out = Tensor::empty({batch * q_len, d}), lse = Tensor::empty({batch, c.heads, q_len});
    attention_forward(g.q, k_rep, v_rep, mha, out, lse);
    Tensor dq = Tensor::empty({batch * q_len, d});
    Tensor dk_rep = Tensor::zeros({batch * kv_len, d}), dv_rep = Tensor::zeros({batch * kv_len, d});
    attention_backward(g.q, k_rep, v_rep, out, lse, g.dout, mha, dq, dk_rep, dv_rep);
    std::vector<double> dk_sum =
        sum_over_groups(to_double(dk_rep), batch * kv_len, c.heads, c.kv_heads, c.head_dim);
    std::vector<double> dv_sum =
        sum_over_groups(to_double(dv_rep), batch * kv_len, c.heads, c.kv_heads, c.head_dim);
    for (size_t i = 0; i < dk_sum.size(); ++i) {
      dk_sum[i] += dk_before[i];
      dv_sum[i] += dv_before[i];
    }
    expect_close(g.out, to_double(out), 1e-6, 1e-5, "out vs repeated");
    expect_close(g.lse, to_double(lse), 1e-6, 1e-6, "lse vs repeated");
    expect_close(g.dq, to_double(dq), 1e-6, 1e-5, "dq vs repeated");
    expect_close(g.dk, dk_sum, 1e-5, 1e-5, "dk vs repeated, summed over the group");
    expect_close(g.dv, dv_sum, 1e-5, 1e-5, "dv vs repeated, summed over the group");

    // The float64 reference on the repeated tensors.
    const std::vector<double> qd = to_double(g.q), kd = to_double(k_rep), vd = to_double(v_rep);
    const ReferenceForward ref = reference_forward(qd, kd, vd, mha, d);
    expect_close(g.out, ref.out, kOutAtol, kOutRtol, "out vs reference");
    expect_close(g.lse, ref.lse, kOutAtol, kOutRtol, "lse vs reference");
    const ReferenceGradients grads = reference_backward(qd, kd, vd, to_double(g.dout), mha, d);
    std::vector<double> ref_dk = sum_over_groups(grads.dk, batch * kv_len, c.heads, c.kv_heads, c.head_dim);
    std::vector<double> ref_dv = sum_over_groups(grads.dv, batch * kv_len, c.heads, c.kv_heads, c.head_dim);
    for (size_t i = 0; i < ref_dk.size(); ++i) {
      ref_dk[i] += dk_before[i];
      ref_dv[i] += dv_before[i];
    }
    expect_close(g.dq, grads.dq, kGradAtol, kGradRtol, "dq vs reference");
    expect_close(g.dk, ref_dk, kGradAtol, kGradRtol, "dk vs reference");
    expect_close(g.dv, ref_dv, kGradAtol, kGradRtol, "dv vs reference");
  }
}

// Forward and backward give the same bits at 1 and 2 threads (the backward's tasks own one KV
// head each and sum its query heads in order).
TEST(AttentionGqa, ResultsDoNotDependOnThreadCount) {
  const int saved = num_threads();
  for (const GqaCase& c : {GqaCase{8, 2, 16}, GqaCase{4, 1, 12}}) {
    SCOPED_TRACE(gqa_name(c));
    std::vector<std::vector<float>> runs;
    for (const int threads : {1, 2}) {
      set_kernel_threads(threads);
      runs.push_back(gqa_outputs(gqa_run(c, 2, 53, 77, 130, 700, c.kv_heads)));
    }
    ASSERT_EQ(runs[0].size(), runs[1].size());
    EXPECT_EQ(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)), 0);
  }
  set_kernel_threads(saved);
}

TEST(AttentionGqa, RejectsBadKvHeadCountsNamingTheValues) {
  const int64_t rows = 10, hd = 4;
  Tensor q = random_tensor({rows, 8 * hd}, 1);
  Tensor out = Tensor::empty({rows, 8 * hd});
  Tensor lse = Tensor::empty({1, 8, rows});
  Tensor kv2 = random_tensor({rows, 2 * hd}, 2);
  // h = 8 not divisible by g = 3.
  expect_error_containing(
      [&] {
        attention_forward(q, kv2, kv2, AttentionShape{1, 8, 0, rows, rows, 3}, out, lse);
      },
      "num_heads 8 is not divisible by num_kv_heads 3");
  // k's width 8 is 2 KV heads of hd 4, not g = 4.
  expect_error_containing(
      [&] {
        attention_forward(q, kv2, kv2, AttentionShape{1, 8, 0, rows, rows, 4}, out, lse);
      },
      "k must be a float tensor [10, 16]");
  // Negative count.
  expect_error_containing(
      [&] {
        attention_forward(q, kv2, kv2, AttentionShape{1, 8, 0, rows, rows, -2}, out, lse);
      },
      "num_kv_heads must be >= 0 (0 means num_heads), got -2");
  // Backward: dk of the query width instead of g * hd.
  attention_forward(q, kv2, kv2, AttentionShape{1, 8, 0, rows, rows, 2}, out, lse);
  Tensor dq = Tensor::empty({rows, 8 * hd});
  expect_error_containing(
      [&] {
        attention_backward(q, kv2, kv2, out, lse, out, AttentionShape{1, 8, 0, rows, rows, 2}, dq,
                           Tensor::zeros({rows, 8 * hd}), Tensor::zeros({rows, 2 * hd}));
      },
      "dk must be a float tensor [10, 8]");
}

}  // namespace
}  // namespace ampipe::kernels
