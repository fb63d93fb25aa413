// The float32 kernels on bfloat16 operands (kernels/elementwise.h, "bfloat16 operands"): attention,
// the norms, rope, GELU/SwiGLU, add, permute/unpermute and the row moves. Each is checked against its
// float32 kernel on the same (widened) values: float32 outputs equal it bit for bit, bf16 outputs
// equal its result rounded once. Attention is also checked against float32 on unrounded inputs within
// the bound that bf16 rounding of the inputs allows, and on a sum that bf16 accumulation would get
// wrong.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "core/bf16.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"
#include "kernels/permute.h"
#include "kernels/rope.h"
#include "test_util.h"

namespace ampipe::kernels {
namespace {

std::vector<float> random_values(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

Tensor bf16_random(const Shape& shape, uint32_t seed) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return as_dtype(Tensor::from(shape, random_values(n, seed)), DType::BF16);
}

Tensor f32(const Tensor& t) { return as_dtype(t, DType::F32); }

// got (bf16 or float32) holds exactly want (float32) rounded to got's dtype.
void expect_rounded_from(const Tensor& got, const Tensor& want, const char* what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const std::vector<float> g = f32(got).to_vector();
  const std::vector<float> w = f32(as_dtype(want, got.dtype())).to_vector();
  int64_t differing = 0;
  for (size_t i = 0; i < g.size(); ++i) differing += g[i] != w[i];
  EXPECT_EQ(differing, 0) << what << ": " << differing << " of " << g.size() << " elements differ";
}

TEST(Bf16Kernels, ElementwiseAndNormsEqualFloat32OnTheWidenedValues) {
  const int64_t R = 37, C = 48;
  const Tensor x = bf16_random({R, C}, 1), dy = bf16_random({R, C}, 2), up = bf16_random({R, C}, 3);
  {
    Tensor y = bf16_random({R, C}, 4);
    Tensor want = f32(y);
    add_inplace(y, x);
    add_inplace(want, f32(x));
    expect_rounded_from(y, want, "add_inplace");
  }
  {
    Tensor y = Tensor::empty({R, C}, DType::BF16), want = Tensor::empty({R, C});
    gelu_forward(x, y);
    gelu_forward(f32(x), want);
    expect_rounded_from(y, want, "gelu_forward");
    Tensor dx = Tensor::empty({R, C}),
           dx_want = Tensor::empty({R, C});  // float32 gradient from bf16 operands
    gelu_backward(x, dy, dx);
    gelu_backward(f32(x), f32(dy), dx_want);
    expect_rounded_from(dx, dx_want, "gelu_backward");
  }
  {
    Tensor out = Tensor::empty({R, C}, DType::BF16), want = Tensor::empty({R, C});
    swiglu_forward(x, up, out);
    swiglu_forward(f32(x), f32(up), want);
    expect_rounded_from(out, want, "swiglu_forward");
    Tensor dg = Tensor::empty({R, C}, DType::BF16), du = Tensor::empty({R, C}, DType::BF16);
    Tensor dg_want = Tensor::empty({R, C}), du_want = Tensor::empty({R, C});
    swiglu_backward(x, up, dy, dg, du);
    swiglu_backward(f32(x), f32(up), f32(dy), dg_want, du_want);
    expect_rounded_from(dg, dg_want, "swiglu_backward dgate");
    expect_rounded_from(du, du_want, "swiglu_backward dup");
  }
  const Tensor w = Tensor::from({C}, random_values(C, 5, 0.5f, 1.5f)),
               b = Tensor::from({C}, random_values(C, 6));
  {
    Tensor y = Tensor::empty({R, C}, DType::BF16), want = Tensor::empty({R, C});
    Tensor mean = Tensor::empty({R}), rstd = Tensor::empty({R}), mean2 = Tensor::empty({R}),
           rstd2 = Tensor::empty({R});
    layernorm_forward(x, w, b, y, mean, rstd);
    layernorm_forward(f32(x), w, b, want, mean2, rstd2);
    expect_rounded_from(y, want, "layernorm_forward");
    expect_rounded_from(rstd, rstd2, "layernorm_forward rstd");
    Tensor dx = Tensor::empty({R, C}, DType::BF16), dx_want = Tensor::empty({R, C});
    Tensor dw = Tensor::zeros({C}), db = Tensor::zeros({C}), dw2 = Tensor::zeros({C}),
           db2 = Tensor::zeros({C});
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    layernorm_backward(f32(dy), f32(x), w, mean, rstd, dx_want, dw2, db2);
    expect_rounded_from(dx, dx_want, "layernorm_backward dx");
    expect_rounded_from(dw, dw2, "layernorm_backward dweight");
    expect_rounded_from(db, db2, "layernorm_backward dbias");
  }
  {
    // A column slice of a wider bf16 buffer, as the model's views are.
    Tensor wide = bf16_random({R, 2 * C}, 7);
    Tensor y = wide.cols(C, 2 * C), want = Tensor::empty({R, C});
    Tensor rstd = Tensor::empty({R}), rstd2 = Tensor::empty({R});
    rmsnorm_forward(x, w, y, rstd, 1e-6f);
    rmsnorm_forward(f32(x), w, want, rstd2, 1e-6f);
    expect_rounded_from(y, want, "rmsnorm_forward into a view");
    Tensor dx = Tensor::empty({R, C}, DType::BF16), dx_want = Tensor::empty({R, C});
    Tensor dw = Tensor::zeros({C}), dw2 = Tensor::zeros({C});
    rmsnorm_backward(dy, x, w, rstd, dx, dw);
    rmsnorm_backward(f32(dy), f32(x), w, rstd, dx_want, dw2);
    expect_rounded_from(dx, dx_want, "rmsnorm_backward dx");
    expect_rounded_from(dw, dw2, "rmsnorm_backward dweight");
  }
  {
    const int64_t batch = 1, heads = 3;  // 48 columns: 3 heads of 16
    Tensor r = x.clone(), want = f32(x);
    rope_forward(r, batch, heads, 5, 10000.0);
    rope_forward(want, batch, heads, 5, 10000.0);
    expect_rounded_from(r, want, "rope_forward");
    Tensor back = dy.clone(), back_want = f32(dy);
    rope_backward(back, batch, heads, 5, 10000.0);
    rope_backward(back_want, batch, heads, 5, 10000.0);
    expect_rounded_from(back, back_want, "rope_backward");
  }
}

TEST(Bf16Kernels, PermuteAndRowMovesEqualFloat32) {
  const int64_t T = 29, d = 24, E = 4;
  const int k = 2;
  std::vector<int32_t> choice(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) choice[t * k + j] = static_cast<int32_t>((t * 3 + j * 5) % E);
  const DispatchPlan plan = make_dispatch_plan(Tensor::from_ints({T, k}, choice), E, -1);
  const int64_t P = plan.num_slots();
  const Tensor x = bf16_random({T, d}, 11), gate = Tensor::from({T, k}, random_values(T * k, 12, 0, 1));
  Tensor out = Tensor::empty({P, d}, DType::BF16), want = Tensor::empty({P, d});
  permute_forward(x, plan, out);
  permute_forward(f32(x), plan, want);
  expect_rounded_from(out, want, "permute_forward");
  const Tensor y = bf16_random({P, d}, 13), dout = bf16_random({T, d}, 14);
  Tensor combined = Tensor::empty({T, d}, DType::BF16), combined_want = Tensor::empty({T, d});
  unpermute_forward(y, plan, gate, combined);
  unpermute_forward(f32(y), plan, gate, combined_want);
  expect_rounded_from(combined, combined_want, "unpermute_forward");
  Tensor dy = Tensor::empty({P, d}, DType::BF16), dy_want = Tensor::empty({P, d});
  Tensor dgate = Tensor::empty({T, k}), dgate_want = Tensor::empty({T, k});
  unpermute_backward(dout, y, plan, gate, dy, dgate);
  unpermute_backward(f32(dout), f32(y), plan, gate, dy_want, dgate_want);
  expect_rounded_from(dy, dy_want, "unpermute_backward dy");
  expect_rounded_from(dgate, dgate_want, "unpermute_backward dgate");
  Tensor dx = Tensor::empty({T, d}, DType::BF16), dx_want = Tensor::empty({T, d});
  permute_backward(y, plan, dx);
  permute_backward(f32(y), plan, dx_want);
  expect_rounded_from(dx, dx_want, "permute_backward");

  // Row moves copy bf16 rows bit for bit, views included; a dtype mix is refused.
  const Tensor index = Tensor::from_ints({5}, {28, 0, 7, 7, 13});
  Tensor gathered = Tensor::empty({5, d}, DType::BF16);
  gather_rows(x, index, gathered);
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t c = 0; c < d; ++c)
      ASSERT_EQ(gathered.data<bf16>()[i * d + c].bits, x.data<bf16>()[index.data<int32_t>()[i] * d + c].bits);
  Tensor wide = Tensor::zeros({T, 2 * d}, DType::BF16);
  const Tensor distinct = Tensor::from_ints({5}, {3, 1, 4, 0, 28});
  scatter_rows(gathered, distinct, wide.cols(d, 2 * d));
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t c = 0; c < d; ++c)
      ASSERT_EQ(wide.data<bf16>()[distinct.data<int32_t>()[i] * 2 * d + d + c].bits,
                gathered.data<bf16>()[i * d + c].bits);
  const std::string mixed = testing::error_of([&] { gather_rows(x, index, Tensor::empty({5, d})); });
  EXPECT_NE(mixed.find("must both be float32 or both bfloat16"), std::string::npos) << mixed;
}

// Attention on bf16 q, k, v (column views of one qkv buffer, as the model keeps them), with grouped
// queries and a chunk that starts inside the sequence.
struct AttentionCase {
  AttentionShape shape;
  int64_t hd;
  int64_t q_width() const { return shape.num_heads * hd; }
  int64_t kv_width() const { return shape.num_kv_heads * hd; }
};

TEST(Bf16Kernels, AttentionEqualsFloat32OnTheWidenedValues) {
  AttentionCase c;
  c.hd = 16;
  c.shape.batch = 2;
  c.shape.num_heads = 4;
  c.shape.num_kv_heads = 2;
  c.shape.q_begin = 40;
  c.shape.q_len = 70;
  c.shape.kv_len = 110;
  const int64_t B = c.shape.batch, width = c.q_width() + 2 * c.kv_width();
  const Tensor qkv = bf16_random({B * c.shape.kv_len, width}, 21);
  const Tensor q = bf16_random({B * c.shape.q_len, c.q_width()}, 22);
  const Tensor k = qkv.cols(c.q_width(), c.q_width() + c.kv_width());
  const Tensor v = qkv.cols(c.q_width() + c.kv_width(), width);
  Tensor out = Tensor::empty({B * c.shape.q_len, c.q_width()}, DType::BF16),
         want = Tensor::empty(out.shape());
  Tensor lse = Tensor::empty({B, c.shape.num_heads, c.shape.q_len}), lse_want = Tensor::empty(lse.shape());
  attention_forward(q, k, v, c.shape, out, lse);
  attention_forward(f32(q), f32(k), f32(v), c.shape, want, lse_want);
  expect_rounded_from(out, want, "attention_forward out");
  expect_rounded_from(lse, lse_want, "attention_forward lse");

  const Tensor dout = bf16_random(out.shape(), 23);
  Tensor dq = Tensor::empty(q.shape()), dq_want = Tensor::empty(q.shape());
  Tensor dkv = Tensor::zeros({B * c.shape.kv_len, 2 * c.kv_width()}), dkv_want = dkv.clone();
  attention_backward(q, k, v, out, lse, dout, c.shape, dq, dkv.cols(0, c.kv_width()),
                     dkv.cols(c.kv_width(), 2 * c.kv_width()));
  attention_backward(f32(q), f32(k), f32(v), f32(out), lse, f32(dout), c.shape, dq_want,
                     dkv_want.cols(0, c.kv_width()), dkv_want.cols(c.kv_width(), 2 * c.kv_width()));
  expect_rounded_from(dq, dq_want, "attention_backward dq");
  expect_rounded_from(dkv, dkv_want, "attention_backward dk, dv");
}

// Against float32 on the unrounded values. Bound: each input is rounded with relative error at most
// 2^-9 and entries are in [-1, 1], so a score q.k / sqrt(hd) moves by at most 2 * 2^-9 * hd / sqrt(hd)
// = 2^-8 sqrt(hd); softmax weights then move by a factor within exp(+-2 * 2^-8 sqrt(hd)), so the output
// (a weighted mean of v, |v| <= 1) moves by at most about 4 * 2^-8 sqrt(hd) + 2^-9 (v's rounding) +
// 2^-9 (out's rounding): 0.066 at hd = 16. A dropped softmax term, a sign flip or a zeroed output
// exceeds it by far (outputs here are of order 0.1-1).
TEST(Bf16Kernels, AttentionIsWithinTheRoundingBoundOfFloat32) {
  AttentionShape s;
  s.batch = 1;
  s.num_heads = 2;
  s.num_kv_heads = 2;
  s.q_len = 96;
  s.kv_len = 96;
  const int64_t hd = 16, d = s.num_heads * hd, T = s.q_len;
  const std::vector<float> qv = random_values(T * d, 31), kv = random_values(T * d, 32),
                           vv = random_values(T * d, 33);
  Tensor want = Tensor::empty({T, d}), lse = Tensor::empty({1, s.num_heads, T});
  attention_forward(Tensor::from({T, d}, qv), Tensor::from({T, d}, kv), Tensor::from({T, d}, vv), s, want,
                    lse);
  Tensor out = Tensor::empty({T, d}, DType::BF16), lse16 = Tensor::empty(lse.shape());
  attention_forward(as_dtype(Tensor::from({T, d}, qv), DType::BF16),
                    as_dtype(Tensor::from({T, d}, kv), DType::BF16),
                    as_dtype(Tensor::from({T, d}, vv), DType::BF16), s, out, lse16);
  const double bound = 4.0 * std::ldexp(1.0, -8) * std::sqrt(double(hd)) + 2 * std::ldexp(1.0, -9);
  const std::vector<float> got = f32(out).to_vector(), ref = want.to_vector();
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - double(ref[i])));
  EXPECT_LT(worst, bound);
  EXPECT_GT(worst, 0.0) << "nothing was rounded";
}

// Uniform attention (q = 0) of the last query over 4096 keys whose values alternate 1 + 2^-7 and 2^-8:
// the output is their mean. float32 accumulation gets it to ~1e-6; a bf16 running sum of P V would
// stall once it passes 256 (its spacing there is 2) and end far off.
TEST(Bf16Kernels, AttentionAccumulatesInFloat32) {
  AttentionShape s;
  s.batch = 1;
  s.num_heads = 1;
  s.num_kv_heads = 1;
  s.q_begin = 4095;
  s.q_len = 1;
  s.kv_len = 4096;
  const int64_t hd = 8;
  std::vector<float> values(static_cast<size_t>(s.kv_len * hd));
  double mean = 0;
  for (int64_t j = 0; j < s.kv_len; ++j) {
    const float value = (j % 2 == 0) ? 1.0f + 1.0f / 128.0f : 1.0f / 256.0f;
    for (int64_t c = 0; c < hd; ++c) values[j * hd + c] = value;
    mean += value / double(s.kv_len);
  }
  const Tensor q = Tensor::zeros({1, hd}, DType::BF16), k = Tensor::zeros({s.kv_len, hd}, DType::BF16);
  const Tensor v = as_dtype(Tensor::from({s.kv_len, hd}, values), DType::BF16);
  Tensor out = Tensor::empty({1, hd}), lse = Tensor::empty({1, 1, 1});
  attention_forward(q, k, v, s, out, lse);
  for (float o : out.to_vector()) EXPECT_NEAR(o, mean, 1e-5 * mean);
  EXPECT_NEAR(lse.to_vector()[0], std::log(double(s.kv_len)), 1e-5);
}

}  // namespace
}  // namespace ampipe::kernels
