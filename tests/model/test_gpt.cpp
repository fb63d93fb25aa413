// Whole-model checks: gradients against finite differences of the loss, and learning.
#include <gtest/gtest.h>

#include <cmath>

#include "core/random.h"
#include "grad_check.h"
#include "model/gpt.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace ampipe {
namespace {

ModelConfig tiny_config(int64_t top_k) {
  ModelConfig c;
  c.vocab_size = 11;
  c.max_seq_len = 9;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_layers = 2;
  c.num_experts = 3;
  c.ffn_hidden_size = 6;
  c.top_k = top_k;
  c.aux_loss_weight = 0.05;
  return c;
}

using ::ampipe::testing::random_tokens;

// Directional derivative per parameter tensor: (L(p + h u) - L(p - h u)) / 2h against grad . u for
// a random unit direction u. Float32 forward, so h is moderate and the tolerance a few percent.
void check_gradients(const ModelConfig& config, int64_t B, int64_t N) {
  GptMoe model(config);
  model.initialize(7);
  // Larger weights than the 0.02 init so every path carries signal.
  uint64_t seed = 100;
  for (Parameter& p : model.params().all()) {
    if (p.name.find(".weight") != std::string::npos && p.name.find("ln") == std::string::npos)
      p.value.copy_from(testing::random_tensor(p.value.shape(), seed++, 0.3f));
  }
  Tensor tokens = random_tokens(B * N, config.vocab_size, 1), targets = random_tokens(B * N, config.vocab_size, 2);
  model.params().zero_grad();
  ForwardState state;
  model.forward(state, tokens, targets, B);
  model.backward(state);
  auto loss = [&]() {
    ForwardState s;
    return model.forward(s, tokens, targets, B).total;
  };
  for (Parameter& p : model.params().all()) {
    std::vector<float> base = p.value.to_vector(), g = p.grad.to_vector();
    // Top-k routing is piecewise smooth: a direction whose step flips a routing decision is
    // detected (the differences at h and h/2 disagree) and replaced by another random direction.
    bool checked = false;
    for (int attempt = 0; attempt < 6 && !checked; ++attempt) {
      std::vector<float> uv = testing::random_tensor(p.value.shape(), seed++).to_vector();
      double norm = 0;
      for (float x : uv) norm += double(x) * x;
      norm = std::sqrt(norm);
      double analytic = 0;
      for (size_t i = 0; i < uv.size(); ++i) analytic += double(g[i]) * uv[i] / norm;
      auto at = [&](double step) {
        std::vector<float> v(base.size());
        for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(base[i] + step * uv[i] / norm);
        p.value.copy_from(Tensor::from(p.value.shape(), v));
        return loss();
      };
      const double h = 4e-3;
      const double numeric = (at(h) - at(-h)) / (2 * h);
      const double numeric_half = (at(h / 2) - at(-h / 2)) / h;
      p.value.copy_from(Tensor::from(p.value.shape(), base));
      if (std::abs(numeric - numeric_half) > 2e-3 + 0.02 * std::abs(numeric)) continue;
      // Above 2e-3 the sign must agree and the error stay within 6e-4 + 3%, so a zero or negated
      // gradient fails; below, |analytic - numeric| <= 2e-3 (float32 loss noise at this step).
      testing::GradientTolerance tol;
      tol.floor = 2e-3;
      tol.atol = 6e-4;
      EXPECT_TRUE(testing::gradient_element_ok(analytic, numeric, tol))
          << p.name << ": analytic " << analytic << " numeric " << numeric;
      checked = true;
    }
    EXPECT_TRUE(checked) << p.name << ": no direction without a routing flip";
  }
}

TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_Top1) { check_gradients(tiny_config(1), 2, 7); }
TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_Top2) { check_gradients(tiny_config(2), 2, 7); }

// Sequences longer than the attention kernel's tiles and a wider model.
TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_LongerThanTiles) {
  ModelConfig c = tiny_config(2);
  c.max_seq_len = 150;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 24;
  check_gradients(c, 2, 150);
}

// The Mixtral family (RMSNorm, rope, grouped-query attention, SwiGLU experts, no biases, untied
// head, gates normalised for every k), and each of its parts alone in the GPT family.
ModelConfig tiny_mixtral(int64_t top_k) {
  ModelConfig c = tiny_config(top_k);
  c.set_family("mixtral");
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.rotary_base = 100;  // angles that turn noticeably over 9 positions
  return c;
}

TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_MixtralTop1) { check_gradients(tiny_mixtral(1), 2, 7); }
TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_MixtralTop2) { check_gradients(tiny_mixtral(2), 2, 9); }

TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_MixtralLongerThanTiles) {
  ModelConfig c = tiny_mixtral(2);
  c.max_seq_len = 150;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_query_groups = 1;
  c.ffn_hidden_size = 24;
  c.rotary_base = 1e4;
  // One sequence: 300 tokens through top-2 of 3 experts leave no direction of the embedding
  // without a routing flip at this step size.
  check_gradients(c, 1, 150);
}

TEST(GptMoe, WholeModelGradientMatchesFiniteDifferences_EachPartAlone) {
  for (int part = 0; part < 6; ++part) {
    ModelConfig c = tiny_config(2);
    c.hidden_size = 16;
    c.num_attention_heads = 4;
    switch (part) {
      case 0: c.normalization = "RMSNorm"; break;
      case 1: c.position_embedding_type = "rope"; break;
      case 2: c.swiglu = true; break;
      case 3: c.num_query_groups = 2; break;
      case 4: c.add_bias_linear = false; break;
      case 5: c.untie_embeddings_and_output_weights = true; break;
    }
    SCOPED_TRACE("part " + std::to_string(part));
    check_gradients(c, 2, 7);
  }
}

TEST(GptMoe, ParameterNamesFollowTheFamily) {
  GptMoe gpt(tiny_config(1));
  for (const char* name : {"embed.position.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias",
                           "blocks.1.moe.fc1.weight", "blocks.1.ln2.bias", "final_ln.bias"})
    EXPECT_TRUE(gpt.params().contains(name)) << name;
  EXPECT_FALSE(gpt.params().contains("lm_head.weight"));
  const ModelConfig mc = tiny_mixtral(2);
  GptMoe mixtral(mc);
  const int64_t hd = mc.head_dim();
  EXPECT_EQ(mixtral.params().get("blocks.0.attn.q.weight").value.shape(), (Shape{4 * hd, 16}));
  EXPECT_EQ(mixtral.params().get("blocks.0.attn.k.weight").value.shape(), (Shape{2 * hd, 16}));
  EXPECT_EQ(mixtral.params().get("blocks.0.attn.v.weight").value.shape(), (Shape{2 * hd, 16}));
  EXPECT_EQ(mixtral.params().get("blocks.0.attn.o.weight").value.shape(), (Shape{16, 4 * hd}));
  EXPECT_EQ(mixtral.params().get("blocks.1.moe.w1.weight").value.shape(), (Shape{3, 6, 16}));
  EXPECT_EQ(mixtral.params().get("blocks.1.moe.w3.weight").value.shape(), (Shape{3, 6, 16}));
  EXPECT_EQ(mixtral.params().get("blocks.1.moe.w2.weight").value.shape(), (Shape{3, 16, 6}));
  EXPECT_EQ(mixtral.params().get("lm_head.weight").value.shape(), (Shape{11, 16}));
  for (const Parameter& p : mixtral.params().all()) {
    EXPECT_EQ(p.name.find(".bias"), std::string::npos) << p.name;
    EXPECT_NE(p.name, "embed.position.weight");
  }
  // A GQA model in the GPT family keeps the fused projection, narrower by the shared KV heads.
  ModelConfig g = tiny_config(1);
  g.hidden_size = 16;
  g.num_attention_heads = 4;
  g.num_query_groups = 1;
  GptMoe gqa(g);
  EXPECT_EQ(gqa.params().get("blocks.0.attn.qkv.weight").value.shape(), (Shape{(4 + 2) * 4, 16}));
}

// With k == 1 the Mixtral gate is p / p = 1, so the output does not scale with the router's
// confidence, unlike the GPT family's Switch gate (p itself).
TEST(GptMoe, MixtralGateIsNormalisedForTopOne) {
  const ModelConfig mixtral = tiny_mixtral(1);
  ModelConfig gpt = mixtral;
  gpt.set_family("gpt");
  ParameterRegistry params;
  const Router mixtral_router(mixtral, params, "mixtral.");
  const Router switch_router(gpt, params, "gpt.");
  for (Parameter& p : params.all()) p.value.copy_from(testing::random_tensor(p.value.shape(), 8, 0.5f));
  const Tensor x = testing::random_tensor({5, mixtral.hidden_size}, 3, 0.5f);
  RouterContext a, b;
  RoutingStats stats;
  mixtral_router.forward(a, x, stats);
  switch_router.forward(b, x, stats);
  for (float g : a.gate.to_vector()) EXPECT_FLOAT_EQ(g, 1.0f);
  for (float g : b.gate.to_vector()) EXPECT_LT(g, 1.0f);
}

TEST(GptMoe, InitializationIsDeterministicAndScaled) {
  GptMoe a(tiny_config(1)), b(tiny_config(1));
  a.initialize(5);
  b.initialize(5);
  for (size_t i = 0; i < a.params().all().size(); ++i)
    EXPECT_EQ(a.params().all()[i].value.to_vector(), b.params().all()[i].value.to_vector());
  EXPECT_EQ(a.params().get("final_ln.weight").value.to_vector(), std::vector<float>(8, 1.0f));
  EXPECT_EQ(a.params().get("blocks.0.attn.qkv.bias").value.to_vector(), std::vector<float>(24, 0.0f));
}

TEST(GptMoe, AFewTrainingStepsLowerTheLoss) {
  ModelConfig c = tiny_config(2);
  GptMoe model(c);
  model.initialize(3);
  AdamWConfig ac;
  ac.weight_decay = 0.0;
  AdamW opt(model.params(), ac);
  // A repeating pattern is learnable: token t+1 = (token t + 1) mod V.
  std::vector<int32_t> tok(2 * 8), tgt(2 * 8);
  for (int i = 0; i < 16; ++i) {
    tok[i] = (i * 3) % 11;
    tgt[i] = (tok[i] + 1) % 11;
  }
  Tensor tokens = Tensor::from_ints({16}, tok), targets = Tensor::from_ints({16}, tgt);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    model.params().zero_grad();
    ForwardState s;
    double l = model.forward(s, tokens, targets, 2).lm_loss;
    model.backward(s);
    opt.step(1e-2);
    if (step == 0) first = l;
    last = l;
  }
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

}  // namespace
}  // namespace ampipe

namespace ampipe {
namespace {

// Every element of every parameter (elements whose step flips a routing decision are skipped and
// counted): catches an error confined to a few rows that a random direction would average away.
TEST(GptMoe, EveryParameterElementMatchesFiniteDifferences) {
  ModelConfig c = tiny_config(2);
  c.max_seq_len = 70;
  c.hidden_size = 8;
  c.num_layers = 1;
  GptMoe model(c);
  model.initialize(9);
  uint64_t seed = 500;
  for (Parameter& p : model.params().all())
    if (p.name.find(".weight") != std::string::npos && p.name.find("ln") == std::string::npos)
      p.value.copy_from(testing::random_tensor(p.value.shape(), seed++, 0.3f));
  const int64_t B = 2, N = 70;
  Tensor tokens = random_tokens(B * N, c.vocab_size, 3), targets = random_tokens(B * N, c.vocab_size, 4);
  model.params().zero_grad();
  ForwardState state;
  model.forward(state, tokens, targets, B);
  model.backward(state);
  int64_t checked = 0, skipped = 0;
  for (Parameter& p : model.params().all()) {
    float* v = p.value.data<float>();
    const std::vector<float> g = p.grad.to_vector();
    std::vector<double> analytic, numerics;  // the checked elements
    for (int64_t i = 0; i < p.value.numel(); ++i) {
      const float saved = v[i];
      auto at = [&](double step) {
        v[i] = static_cast<float>(saved + step);
        ForwardState s;
        return model.forward(s, tokens, targets, B).total;
      };
      const double h = 2e-3;
      const double numeric = (at(h) - at(-h)) / (2 * h);
      const double numeric_half = (at(h / 2) - at(-h / 2)) / h;
      v[i] = saved;
      if (std::abs(numeric - numeric_half) > 1e-3 + 0.05 * std::abs(numeric)) {
        ++skipped;
        continue;
      }
      ++checked;
      analytic.push_back(g[i]);
      numerics.push_back(numeric);
    }
    // Per element: |numeric| > 1e-3 needs the same sign and |a - n| <= 3e-4 + 3% |n| (a zero or
    // negated gradient fails); smaller ones |a - n| <= 1e-3. Per tensor: cosine > 0.999 and relative
    // L2 error < 1e-2. (Element numbers in a failure count the checked elements only.)
    testing::expect_gradient_matches(analytic, numerics, testing::GradientTolerance{}, p.name);
  }
  EXPECT_GT(checked, model.params().num_elements() * 9 / 10);
  EXPECT_LT(skipped, checked / 20) << "too many routing flips to trust the check (" << skipped << " skipped)";
}

}  // namespace
}  // namespace ampipe
