// Top-k routing: selection order, ties, gates, and the gate Jacobian against float64 references.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/parallel.h"
#include "kernels/router.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

// Row softmax of random logits: distinct probabilities, like the router's.
Tensor random_probs(int64_t tokens, int64_t experts, uint64_t seed) {
  Tensor p = random_tensor({tokens, experts}, seed, 2.0f);
  float* d = p.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    double s = 0;
    for (int64_t e = 0; e < experts; ++e) s += std::exp(d[t * experts + e]);
    for (int64_t e = 0; e < experts; ++e)
      d[t * experts + e] = static_cast<float>(std::exp(d[t * experts + e]) / s);
  }
  return p;
}

// Reference selection: stable sort of experts by descending probability (ties keep index order).
std::vector<int32_t> topk_ref(const std::vector<float>& p, int64_t tokens, int64_t experts, int k) {
  std::vector<int32_t> out;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> order(static_cast<size_t>(experts));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return p[t * experts + a] > p[t * experts + b]; });
    out.insert(out.end(), order.begin(), order.begin() + k);
  }
  return out;
}

std::vector<double> gate_ref(const std::vector<double>& p, const std::vector<int32_t>& idx, int64_t tokens,
                             int64_t experts, int k) {
  std::vector<double> g(static_cast<size_t>(tokens * k));
  for (int64_t t = 0; t < tokens; ++t) {
    double s = 0;
    for (int j = 0; j < k; ++j) s += p[t * experts + idx[t * k + j]];
    for (int j = 0; j < k; ++j)
      g[t * k + j] = k == 1 ? p[t * experts + idx[t * k + j]] : p[t * experts + idx[t * k + j]] / s;
  }
  return g;
}

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

TEST(RouterTopK, SelectionAndGatesMatchReference) {
  const int64_t expert_counts[] = {1, 2, 4, 8, 17};
  const int64_t token_counts[] = {1, 3, 130};
  uint64_t seed = 1;
  for (int64_t experts : expert_counts)
    for (int64_t tokens : token_counts)
      for (int k : {1, 2, 3, static_cast<int>(experts)}) {
        if (k > experts) continue;
        SCOPED_TRACE(::testing::Message() << "T=" << tokens << " E=" << experts << " k=" << k);
        Tensor probs = random_probs(tokens, experts, ++seed);
        Tensor index = Tensor::empty({tokens, k}, DType::I32);
        Tensor gate = Tensor::empty({tokens, k});
        router_topk(probs, k, index, gate);
        const std::vector<int32_t> expected = topk_ref(probs.to_vector(), tokens, experts, k);
        EXPECT_EQ(ints(index), expected);
        expect_close(gate, gate_ref(to_double(probs), expected, tokens, experts, k), 1e-7, 1e-6, "gate");
      }
}

TEST(RouterTopK, TiesGoToLowerExpertIndex) {
  Tensor probs = Tensor::from({3, 4}, {0.25f, 0.25f, 0.25f, 0.25f,  //
                                       0.1f, 0.4f, 0.1f, 0.4f,      //
                                       0.3f, 0.2f, 0.3f, 0.2f});
  Tensor index = Tensor::empty({3, 3}, DType::I32);
  Tensor gate = Tensor::empty({3, 3});
  router_topk(probs, 3, index, gate);
  EXPECT_EQ(ints(index), (std::vector<int32_t>{0, 1, 2, 1, 3, 0, 0, 2, 1}));
  Tensor index1 = Tensor::empty({3, 1}, DType::I32);
  Tensor gate1 = Tensor::empty({3, 1});
  router_topk(probs, 1, index1, gate1);
  EXPECT_EQ(ints(index1), (std::vector<int32_t>{0, 1, 0}));
}

TEST(RouterTopK, ChoicesComeInDescendingProbabilityOrder) {
  Tensor probs = random_probs(130, 8, 7);
  Tensor index = Tensor::empty({130, 4}, DType::I32);
  Tensor gate = Tensor::empty({130, 4});
  router_topk(probs, 4, index, gate);
  const std::vector<float> p = probs.to_vector();
  const std::vector<int32_t> idx = ints(index);
  const std::vector<float> g = gate.to_vector();
  for (int64_t t = 0; t < 130; ++t)
    for (int j = 1; j < 4; ++j) {
      EXPECT_GE(p[t * 8 + idx[t * 4 + j - 1]], p[t * 8 + idx[t * 4 + j]]);
      EXPECT_GE(g[t * 4 + j - 1], g[t * 4 + j]);
    }
}

TEST(RouterTopK, GateIsProbabilityForTopOneAndNormalisedOtherwise) {
  Tensor probs = Tensor::from({1, 4}, {0.1f, 0.5f, 0.3f, 0.1f});
  Tensor index1 = Tensor::empty({1, 1}, DType::I32);
  Tensor gate1 = Tensor::empty({1, 1});
  router_topk(probs, 1, index1, gate1);
  EXPECT_EQ(gate1.to_vector()[0], 0.5f);
  Tensor index2 = Tensor::empty({1, 2}, DType::I32);
  Tensor gate2 = Tensor::empty({1, 2});
  router_topk(probs, 2, index2, gate2);
  EXPECT_EQ(ints(index2), (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(gate2.to_vector()[0], 0.625f, 1e-7);
  EXPECT_NEAR(gate2.to_vector()[1], 0.375f, 1e-7);
}

TEST(RouterTopK, InvalidKOrShapesThrow) {
  Tensor probs = random_probs(3, 4, 1);
  Tensor index = Tensor::empty({3, 5}, DType::I32);
  Tensor gate = Tensor::empty({3, 5});
  EXPECT_THROW(router_topk(probs, 5, index, gate), Error);
  EXPECT_THROW(router_topk(probs, 0, Tensor::empty({3, 0}, DType::I32), Tensor::empty({3, 0})), Error);
  EXPECT_THROW(router_topk(probs, 2, Tensor::empty({3, 2}), Tensor::empty({3, 2})),
               Error);  // index not int32
  EXPECT_THROW(router_topk(probs, 2, Tensor::empty({3, 2}, DType::I32), Tensor::empty({2, 2})), Error);
}

// dprobs from router_topk_backward for loss = sum(dgate * gate).
TEST(RouterTopKBackward, MatchesReferenceJacobianAndFiniteDifferences) {
  uint64_t seed = 50;
  for (int64_t experts : {1, 4, 17})
    for (int k : {1, 2, 3, static_cast<int>(experts)}) {
      if (k > experts) continue;
      const int64_t tokens = 5;
      SCOPED_TRACE(::testing::Message() << "E=" << experts << " k=" << k);
      Tensor probs = random_probs(tokens, experts, ++seed);
      Tensor index = Tensor::empty({tokens, k}, DType::I32);
      Tensor gate = Tensor::empty({tokens, k});
      router_topk(probs, k, index, gate);
      Tensor dgate = random_tensor({tokens, k}, ++seed);
      Tensor dprobs = random_tensor({tokens, experts}, ++seed);  // written, so garbage must vanish
      router_topk_backward(probs, index, gate, dgate, dprobs);

      const std::vector<int32_t> idx = ints(index);
      std::vector<double> p = to_double(probs);
      const std::vector<double> dg = to_double(dgate);
      // Analytic: k == 1 -> dgate at the chosen expert; k > 1 -> (dgate_i - sum_j dgate_j gate_j) / S.
      std::vector<double> expected(p.size(), 0.0);
      for (int64_t t = 0; t < tokens; ++t) {
        double s = 0, dot = 0;
        for (int j = 0; j < k; ++j) s += p[t * experts + idx[t * k + j]];
        for (int j = 0; j < k; ++j) dot += dg[t * k + j] * p[t * experts + idx[t * k + j]] / s;
        for (int j = 0; j < k; ++j)
          expected[t * experts + idx[t * k + j]] = k == 1 ? dg[t * k + j] : (dg[t * k + j] - dot) / s;
      }
      expect_close(dprobs, expected, 1e-6, 1e-5, "dprobs vs analytic");
      // Finite differences of the gate map with the selection held fixed (probabilities are distinct
      // by far more than the step, so the selection would not change anyway).
      auto loss = [&] {
        const std::vector<double> g = gate_ref(p, idx, tokens, experts, k);
        double sum = 0;
        for (size_t i = 0; i < g.size(); ++i) sum += g[i] * dg[i];
        return sum;
      };
      expect_close(dprobs, finite_difference(p, loss, 1e-6), 1e-5, 1e-4, "dprobs vs finite differences");
    }
}

TEST(RouterTopKBackward, ExpertIndexOutOfRangeThrows) {
  Tensor probs = random_probs(2, 4, 1);
  Tensor index = Tensor::from_ints({2, 2}, {0, 1, 2, 4});
  Tensor gate = Tensor::zeros({2, 2});
  Tensor dprobs = Tensor::empty({2, 4});
  EXPECT_THROW(router_topk_backward(probs, index, gate, Tensor::zeros({2, 2}), dprobs), Error);
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (indices included).
TEST(RouterTopK, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  Tensor probs = random_probs(3000, 16, 3);
  Tensor dgate = random_tensor({3000, 2}, 4);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor index = Tensor::empty({3000, 2}, DType::I32);
    Tensor gate = Tensor::empty({3000, 2});
    router_topk(probs, 2, index, gate);
    Tensor dprobs = Tensor::empty({3000, 16});
    router_topk_backward(probs, index, gate, dgate, dprobs);
    std::vector<float> all;
    for (int32_t i : ints(index)) all.push_back(static_cast<float>(i));  // small ints: exact
    ampipe::testing::append_values(all, gate);
    ampipe::testing::append_values(all, dprobs);
    return all;
  });
}

}  // namespace
}  // namespace ampipe::kernels
