// --bf16 (docs/MODEL.md "Precision"): the model in mixed precision against the float32 model.
//
// What bf16 may change: every GEMM operand is rounded to bf16 (8 significant bits, relative error
// <= 2^-8 per element), products accumulate in float32. A layer's output then differs from float32
// by about 2^-8 * sqrt(K) * (typical |operand product|) over K terms, a few 1e-3 relative; the
// tolerances below allow ~10x that and no more, so a gradient that is zeroed, sign-flipped or read
// from a stale weight fails (tests/grad_check.h's criterion).
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "kernels/elementwise.h"
#include "model/gpt.h"
#include "model/linear.h"
#include "test_util.h"

namespace ampipe {
namespace {

ModelConfig small(bool mixtral, int64_t top_k, bool bf16) {
  ModelConfig c;
  if (mixtral) {
    c.set_family("mixtral");
    c.num_query_groups = 1;
  }
  c.vocab_size = 23;
  c.max_seq_len = 32;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.num_layers = 2;
  c.num_experts = 4;
  c.ffn_hidden_size = 48;
  c.top_k = top_k;
  c.aux_loss_weight = 0.05;
  c.bf16 = bf16;
  return c;
}

struct Pass {
  LossParts loss;
  std::vector<double> logits;
  std::vector<std::vector<double>> grads;  // registry order
};

Pass run_pass(GptMoe& model, int64_t batch, int64_t seq_len) {
  const int64_t T = batch * seq_len;
  const int64_t V = model.config().vocab_size;
  ForwardState state;
  Pass p;
  model.params().zero_grad();
  p.loss = model.forward(state, testing::random_tokens(T, V, 3), testing::random_tokens(T, V, 4), batch);
  p.logits = testing::to_double(state.logits);
  model.backward(state);
  for (const Parameter& q : model.params().all()) p.grads.push_back(testing::to_double(q.grad));
  return p;
}

// The float32 model's gradient is the reference; bf16's must match it element by element (sign
// and magnitude above a floor set from the tensor's own scale) and as a whole (cosine, L2).
void expect_tracks_float32(const Pass& bf16, const Pass& f32, const GptMoe& model) {
  EXPECT_NEAR(bf16.loss.lm_loss, f32.loss.lm_loss, 2e-3 * f32.loss.lm_loss);
  EXPECT_NEAR(bf16.loss.aux_loss, f32.loss.aux_loss, 2e-3 * f32.loss.aux_loss);
  testing::expect_close(bf16.logits, f32.logits, 2e-2, 2e-2, "logits");
  for (size_t i = 0; i < f32.grads.size(); ++i) {
    const std::vector<double>& n = f32.grads[i];
    double rms = 0;
    for (double v : n) rms += v * v;
    rms = std::sqrt(rms / static_cast<double>(n.size()));
    testing::GradientTolerance tol;
    tol.floor = 0.2 * rms;  // elements this small relative to their tensor only need |a - n| <= floor
    tol.atol = 0.05 * rms;  // < floor / 2: a zero or negated element above the floor fails
    tol.rtol = 0.1;
    tol.min_cosine = 0.995;
    tol.max_relative_l2 = 0.08;
    testing::expect_gradient_matches(bf16.grads[i], n, tol, model.params().all()[i].name);
  }
}

class Bf16Model : public ::testing::TestWithParam<std::tuple<bool, int64_t>> {};

TEST_P(Bf16Model, LossLogitsAndEveryGradientTrackFloat32) {
  const auto [mixtral, top_k] = GetParam();
  GptMoe f32(small(mixtral, top_k, false)), bf16(small(mixtral, top_k, true));
  f32.initialize(5);
  bf16.initialize(5);
  const Pass a = run_pass(bf16, 2, 29), b = run_pass(f32, 2, 29);
  expect_tracks_float32(a, b, f32);
  // Mixed precision is not float32: something is rounded (else this test would not test it).
  double max_diff = 0;
  for (size_t i = 0; i < a.logits.size(); ++i)
    max_diff = std::max(max_diff, std::abs(a.logits[i] - b.logits[i]));
  EXPECT_GT(max_diff, 1e-6) << "the bf16 model computed exactly the float32 logits: nothing ran in bf16";
}

INSTANTIATE_TEST_SUITE_P(FamilyAndTopK, Bf16Model,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(int64_t{1}, int64_t{2})),
                         [](const ::testing::TestParamInfo<std::tuple<bool, int64_t>>& param) {
                           return std::string(std::get<0>(param.param) ? "Mixtral" : "Gpt") + "_Top" +
                                  std::to_string(std::get<1>(param.param));
                         });

// Which parameters get bf16 copies: the GEMM weights (linear layers, experts, the LM head), not
// norms, biases, position embeddings or the router (--moe-router-dtype fp32). Values, gradients and
// the optimizer's view stay float32.
TEST(Bf16Parameters, OnlyGemmWeightsHaveCopiesAndValuesStayFloat32) {
  for (bool mixtral : {false, true}) {
    GptMoe model(small(mixtral, 2, true));
    model.initialize(1);
    int copies = 0;
    for (const Parameter& p : model.params().all()) {
      SCOPED_TRACE(p.name);
      EXPECT_EQ(p.value.dtype(), DType::F32);
      EXPECT_EQ(p.grad.dtype(), DType::F32);
      // The token embedding is a GEMM operand only as the tied LM head (GPT); Mixtral unties them.
      const bool embedding = p.name.find("embed.") == 0;
      const bool gemm = p.name.find("router") == std::string::npos &&
                        p.name.find("ln") == std::string::npos && p.name.find("bias") == std::string::npos &&
                        (!embedding || (!mixtral && p.name == "embed.token.weight"));
      EXPECT_EQ(p.compute.defined(), gemm);
      if (!p.compute.defined()) continue;
      ++copies;
      EXPECT_EQ(p.compute.dtype(), DType::BF16);
      EXPECT_EQ(p.operand().dtype(), DType::BF16);
      // The copy is the value rounded: within half a bf16 ulp (2^-8 relative).
      const std::vector<double> v = testing::to_double(p.value), c = testing::to_double(p.compute);
      for (size_t i = 0; i < v.size(); ++i) ASSERT_LE(std::abs(v[i] - c[i]), std::abs(v[i]) * 0x1p-8) << i;
    }
    EXPECT_GT(copies, 4);
    GptMoe f32(small(mixtral, 2, false));
    for (const Parameter& p : f32.params().all()) EXPECT_FALSE(p.compute.defined()) << p.name;
  }
}

// The copies follow the values: a change of the values (optimizer step, checkpoint load, import)
// reaches the next forward pass without any call by the writer.
TEST(Bf16Parameters, ForwardSeesValuesWrittenAfterConstruction) {
  const ModelConfig config = small(false, 1, true);
  GptMoe a(config), b(config);
  a.initialize(1);
  b.initialize(2);
  const Tensor tokens = testing::random_tokens(16, config.vocab_size, 9);
  const std::vector<double> before = testing::to_double(a.logits(tokens, 1));
  for (size_t i = 0; i < a.params().all().size(); ++i)
    a.params().all()[i].value.copy_from(b.params().all()[i].value);
  const std::vector<double> after = testing::to_double(a.logits(tokens, 1));
  const std::vector<double> expected = testing::to_double(b.logits(tokens, 1));
  EXPECT_NE(before, expected);
  EXPECT_EQ(after, expected);  // the same values, the same rounding: bit for bit
}

// The linear layer in bf16: the weight's dtype decides; float32 inputs are rounded, float32 out.
TEST(Bf16Linear, RoundsInputsAndAccumulatesInFloat32) {
  const int64_t T = 5, in = 300, out = 7;
  Tensor x = testing::random_tensor({T, in}, 1), w = testing::random_tensor({out, in}, 2);
  Tensor wb = kernels::as_dtype(w, DType::BF16), xb = kernels::as_dtype(x, DType::BF16);
  Tensor y = Tensor::empty({T, out});
  linear_forward(x, wb, Tensor(), y);
  // Reference: the rounded operands, multiplied in double.
  const std::vector<double> xr = testing::to_double(xb), wr = testing::to_double(wb);
  std::vector<double> ref(T * out);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += xr[t * in + i] * wr[o * in + i];
      ref[t * out + o] = s;
    }
  // float32 accumulation of 300 terms of size ~1: error ~1e-5; bf16 accumulation would be ~1e-1.
  testing::expect_close(y, ref, 1e-4, 1e-5, "bf16 linear forward");
  Tensor dy = testing::random_tensor({T, out}, 3), dx = Tensor::empty({T, in}), dw = Tensor::zeros({out, in});
  linear_backward(xb, wb, dy, dx, dw, Tensor());
  const std::vector<double> dyr = testing::to_double(kernels::as_dtype(dy, DType::BF16));
  std::vector<double> dw_ref(out * in, 0.0), dx_ref(T * in, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        dw_ref[o * in + i] += dyr[t * out + o] * xr[t * in + i];
        dx_ref[t * in + i] += dyr[t * out + o] * wr[o * in + i];
      }
  testing::expect_close(dw, dw_ref, 1e-5, 1e-5, "dweight");
  testing::expect_close(dx, dx_ref, 1e-5, 1e-5, "dx");
}

}  // namespace
}  // namespace ampipe
