// Dispatch plans (ordering, capacity dropping) and permute / unpermute against float64 references.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/random.h"
#include "kernels/permute.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

std::vector<int32_t> ints(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

// k distinct random experts per token (as top-k produces), skewed towards low indices so that
// capacity actually drops pairs.
Tensor random_expert_index(int64_t tokens, int k, int experts, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> idx;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> chosen;
    while (static_cast<int>(chosen.size()) < k) {
      const uint64_t a = rng.below(static_cast<uint64_t>(experts));
      const uint64_t b = rng.below(static_cast<uint64_t>(experts));
      const int32_t e = static_cast<int32_t>(std::min(a, b));
      if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
    }
    idx.insert(idx.end(), chosen.begin(), chosen.end());
  }
  return Tensor::from_ints({tokens, k}, idx);
}

// The plan the contract describes, built the obvious way: per expert, walk (token, choice) pairs
// in order, keep the first `capacity`, and lay experts out one after another.
struct PlanRef {
  std::vector<int64_t> expert_counts, routed_counts;
  std::vector<int32_t> token_slot, slot_token;
};

PlanRef plan_ref(const Tensor& expert_index, int experts, int64_t capacity) {
  const std::vector<int32_t> idx = ints(expert_index);
  const int64_t tokens = expert_index.dim(0);
  const int64_t k = expert_index.dim(1);
  PlanRef r;
  r.token_slot.assign(idx.size(), -1);
  for (int e = 0; e < experts; ++e) {
    int64_t routed = 0;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < k; ++j) {
        if (idx[t * k + j] != e) continue;
        if (capacity < 0 || routed < capacity) {
          r.token_slot[t * k + j] = static_cast<int32_t>(r.slot_token.size());
          r.slot_token.push_back(static_cast<int32_t>(t));
        }
        ++routed;
      }
    r.routed_counts.push_back(routed);
    r.expert_counts.push_back(capacity < 0 ? routed : std::min(routed, capacity));
  }
  return r;
}

void expect_plan_equals_reference(const DispatchPlan& plan, const PlanRef& ref) {
  EXPECT_EQ(plan.expert_counts, ref.expert_counts);
  EXPECT_EQ(plan.routed_counts, ref.routed_counts);
  EXPECT_EQ(ints(plan.token_slot), ref.token_slot);
  EXPECT_EQ(ints(plan.slot_token), ref.slot_token);
  EXPECT_EQ(plan.num_slots(), static_cast<int64_t>(ref.slot_token.size()));
}

TEST(DispatchPlan, ExpertMajorWithEarlierTokensFirst) {
  // Tokens 0..4 with k = 2.
  Tensor index = Tensor::from_ints({5, 2}, {2, 0,  //
                                            0, 1,  //
                                            2, 1,  //
                                            0, 2,  //
                                            1, 0});
  const DispatchPlan plan = make_dispatch_plan(index, 3, -1);
  EXPECT_EQ(plan.num_experts, 3);
  EXPECT_EQ(plan.expert_counts, (std::vector<int64_t>{4, 3, 3}));
  EXPECT_EQ(plan.routed_counts, (std::vector<int64_t>{4, 3, 3}));
  // Expert 0: tokens 0, 1, 3, 4 -> slots 0..3; expert 1: tokens 1, 2, 4 -> 4..6; expert 2: 0, 2, 3 -> 7..9.
  EXPECT_EQ(ints(plan.slot_token), (std::vector<int32_t>{0, 1, 3, 4, 1, 2, 4, 0, 2, 3}));
  EXPECT_EQ(ints(plan.token_slot), (std::vector<int32_t>{7, 0, 1, 4, 8, 5, 2, 9, 6, 3}));
  EXPECT_EQ(plan.num_slots(), 10);
}

TEST(DispatchPlan, OneTokenChoosingAnExpertTwiceGetsEarlierChoiceFirst) {
  Tensor index = Tensor::from_ints({2, 2}, {1, 1, 0, 1});
  const DispatchPlan plan = make_dispatch_plan(index, 2, -1);
  EXPECT_EQ(ints(plan.token_slot), (std::vector<int32_t>{1, 2, 0, 3}));
  EXPECT_EQ(ints(plan.slot_token), (std::vector<int32_t>{1, 0, 0, 1}));
}

TEST(DispatchPlan, CapacityDropsLaterTokensFirst_TopOne) {
  // Expert 0 is chosen by tokens 0, 1, 3, 5; expert 1 by 2, 4; capacity 2.
  Tensor index = Tensor::from_ints({6, 1}, {0, 0, 1, 0, 1, 0});
  const DispatchPlan plan = make_dispatch_plan(index, 2, 2);
  EXPECT_EQ(plan.routed_counts, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(plan.expert_counts, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ints(plan.token_slot), (std::vector<int32_t>{0, 1, 2, -1, 3, -1}));
  EXPECT_EQ(ints(plan.slot_token), (std::vector<int32_t>{0, 1, 2, 4}));
}

TEST(DispatchPlan, CapacityDropsLaterTokensFirst_TopTwo) {
  Tensor index = Tensor::from_ints({4, 2}, {0, 1,  //
                                            1, 0,  //
                                            0, 2,  //
                                            0, 1});
  const DispatchPlan plan = make_dispatch_plan(index, 3, 2);
  // Expert 0: tokens 0, 1 kept, 2, 3 dropped; expert 1: tokens 0, 1 kept, 3 dropped; expert 2: token 2.
  EXPECT_EQ(plan.routed_counts, (std::vector<int64_t>{4, 3, 1}));
  EXPECT_EQ(plan.expert_counts, (std::vector<int64_t>{2, 2, 1}));
  EXPECT_EQ(ints(plan.token_slot), (std::vector<int32_t>{0, 2, 3, 1, -1, 4, -1, -1}));
  EXPECT_EQ(ints(plan.slot_token), (std::vector<int32_t>{0, 1, 0, 1, 2}));
}

TEST(DispatchPlan, CapacityZeroDropsEverythingAndDroplessKeepsEverything) {
  Tensor index = random_expert_index(17, 2, 4, 1);
  const DispatchPlan none = make_dispatch_plan(index, 4, 0);
  EXPECT_EQ(none.num_slots(), 0);
  for (int32_t s : ints(none.token_slot)) EXPECT_EQ(s, -1);
  EXPECT_EQ(none.routed_counts, plan_ref(index, 4, -1).routed_counts);
  const DispatchPlan all = make_dispatch_plan(index, 4, -1);
  EXPECT_EQ(all.num_slots(), 34);
  for (int32_t s : ints(all.token_slot)) EXPECT_GE(s, 0);
  // A capacity at least the largest count changes nothing.
  const DispatchPlan big = make_dispatch_plan(index, 4, 34);
  EXPECT_EQ(ints(big.token_slot), ints(all.token_slot));
}

TEST(DispatchPlan, RandomPlansMatchReference) {
  uint64_t seed = 10;
  for (int64_t tokens : {1, 3, 17, 130})
    for (int k : {1, 2})
      for (int experts : {2, 3, 8})
        for (int64_t capacity : {int64_t{-1}, int64_t{0}, int64_t{1}, int64_t{5}, tokens * k / experts}) {
          SCOPED_TRACE(::testing::Message()
                       << "T=" << tokens << " k=" << k << " E=" << experts << " capacity=" << capacity);
          Tensor index = random_expert_index(tokens, k, experts, ++seed);
          expect_plan_equals_reference(make_dispatch_plan(index, experts, capacity),
                                       plan_ref(index, experts, capacity));
        }
}

TEST(DispatchPlan, ExpertIndexOutOfRangeThrowsWithClearMessage) {
  Tensor index = Tensor::from_ints({2, 2}, {0, 1, 3, 1});
  try {
    make_dispatch_plan(index, 3, -1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("expert index 3"), std::string::npos) << what;
    EXPECT_NE(what.find("[0, 3)"), std::string::npos) << what;
  }
  EXPECT_THROW(make_dispatch_plan(Tensor::from_ints({1, 1}, {-1}), 3, -1), Error);
  EXPECT_THROW(make_dispatch_plan(index, 0, -1), Error);
  EXPECT_THROW(make_dispatch_plan(Tensor::zeros({2, 2}), 3, -1), Error);  // float, not int32
}

// ---- permute / unpermute ----

std::vector<double> permute_ref(const std::vector<double>& x, const PlanRef& r, int64_t width) {
  std::vector<double> out(r.slot_token.size() * width);
  for (size_t p = 0; p < r.slot_token.size(); ++p)
    for (int64_t c = 0; c < width; ++c) out[p * width + c] = x[r.slot_token[p] * width + c];
  return out;
}

std::vector<double> unpermute_ref(const std::vector<double>& y, const std::vector<double>& gate,
                                  const PlanRef& r, int64_t tokens, int64_t k, int64_t width) {
  std::vector<double> out(static_cast<size_t>(tokens * width), 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t slot = r.token_slot[t * k + j];
      if (slot < 0) continue;
      for (int64_t c = 0; c < width; ++c) out[t * width + c] += gate[t * k + j] * y[slot * width + c];
    }
  return out;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

struct PermuteCase {
  int64_t tokens;
  int k;
  int experts;
  int64_t capacity;
  int64_t width;
};
const PermuteCase kCases[] = {{1, 1, 1, -1, 1},    {3, 1, 2, -1, 17},   {17, 2, 4, -1, 3}, {17, 2, 4, 3, 130},
                              {130, 1, 8, 10, 33}, {130, 2, 3, 40, 65}, {130, 2, 8, 0, 5}};

TEST(Permute, ForwardAndBackwardMatchReference) {
  uint64_t seed = 100;
  for (const PermuteCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.tokens << " k=" << c.k << " E=" << c.experts
                                      << " capacity=" << c.capacity << " d=" << c.width);
    Tensor index = random_expert_index(c.tokens, c.k, c.experts, ++seed);
    const DispatchPlan plan = make_dispatch_plan(index, c.experts, c.capacity);
    const PlanRef ref = plan_ref(index, c.experts, c.capacity);
    const int64_t slots = plan.num_slots();
    Tensor x = random_tensor({c.tokens, c.width}, ++seed);
    Tensor out = Tensor::empty({slots, c.width});
    permute_forward(x, plan, out);
    expect_close(out, permute_ref(to_double(x), ref, c.width), 1e-12, 0, "permuted");

    // Backward: dx[t] = sum of kept dout rows of t, i.e. the adjoint of permute_forward.
    Tensor dout = random_tensor({slots, c.width}, ++seed);
    Tensor dx = random_tensor({c.tokens, c.width}, ++seed);  // written, so garbage must vanish
    permute_backward(dout, plan, dx);
    const std::vector<double> ones(static_cast<size_t>(c.tokens * c.k), 1.0);
    expect_close(dx, unpermute_ref(to_double(dout), ones, ref, c.tokens, c.k, c.width), 1e-6, 1e-6, "dx");
  }
}

TEST(Permute, BackwardMatchesFiniteDifferences) {
  Tensor index = Tensor::from_ints({4, 2}, {0, 1, 1, 0, 0, 2, 0, 1});
  const DispatchPlan plan = make_dispatch_plan(index, 3, 2);  // drops (2, 0), (3, 0), (3, 1)
  const PlanRef ref = plan_ref(index, 3, 2);
  const int64_t width = 3;
  Tensor x = random_tensor({4, width}, 1);
  Tensor dout = random_tensor({plan.num_slots(), width}, 2);
  Tensor dx = Tensor::empty({4, width});
  permute_backward(dout, plan, dx);
  std::vector<double> xv = to_double(x);
  const std::vector<double> g = to_double(dout);
  auto loss = [&] { return dot(permute_ref(xv, ref, width), g); };
  expect_close(dx, finite_difference(xv, loss), 1e-6, 1e-5, "dx vs finite differences");
  // Token 3 was dropped from every expert: its gradient is exactly zero.
  for (int64_t c = 0; c < width; ++c) EXPECT_EQ(dx.to_vector()[3 * width + c], 0.0f);
}

TEST(Unpermute, ForwardMatchesReferenceAndDroppedPairsContributeZero) {
  uint64_t seed = 200;
  for (const PermuteCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.tokens << " k=" << c.k << " E=" << c.experts
                                      << " capacity=" << c.capacity << " d=" << c.width);
    Tensor index = random_expert_index(c.tokens, c.k, c.experts, ++seed);
    const DispatchPlan plan = make_dispatch_plan(index, c.experts, c.capacity);
    const PlanRef ref = plan_ref(index, c.experts, c.capacity);
    Tensor y = random_tensor({plan.num_slots(), c.width}, ++seed);
    Tensor gate = random_tensor({c.tokens, c.k}, ++seed);
    Tensor out = random_tensor({c.tokens, c.width}, ++seed);  // written
    unpermute_forward(y, plan, gate, out);
    expect_close(out, unpermute_ref(to_double(y), to_double(gate), ref, c.tokens, c.k, c.width), 1e-6, 1e-5,
                 "out");
  }
}

TEST(Unpermute, RoundTripWithGatesSummingToOneRestoresTokens) {
  uint64_t seed = 300;
  for (int k : {1, 2}) {
    SCOPED_TRACE(::testing::Message() << "k=" << k);
    const int64_t tokens = 130, width = 17;
    Tensor index = random_expert_index(tokens, k, 4, ++seed);
    const DispatchPlan plan = make_dispatch_plan(index, 4, -1);
    Tensor x = random_tensor({tokens, width}, ++seed);
    Tensor permuted = Tensor::empty({plan.num_slots(), width});
    permute_forward(x, plan, permuted);
    std::vector<float> g(static_cast<size_t>(tokens * k));
    for (int64_t t = 0; t < tokens; ++t) {
      if (k == 1) {
        g[t] = 1.0f;
      } else {
        g[t * 2] = 0.25f;
        g[t * 2 + 1] = 0.75f;
      }
    }
    Tensor gate = Tensor::from({tokens, k}, g);
    Tensor back = Tensor::empty({tokens, width});
    unpermute_forward(permuted, plan, gate, back);
    expect_close(back, to_double(x), 1e-7, 1e-6, "round trip");
    // Every token appears k times in the permuted buffer.
    std::vector<int> seen(static_cast<size_t>(tokens), 0);
    for (int32_t t : ints(plan.slot_token)) ++seen[t];
    for (int count : seen) EXPECT_EQ(count, k);
  }
}

TEST(Unpermute, RoundTripWithCapacityZeroesTokensDroppedEverywhere) {
  // Token 2 and 3 lose their only choice (k = 1, capacity 2 on expert 0).
  Tensor index = Tensor::from_ints({5, 1}, {0, 0, 0, 0, 1});
  const DispatchPlan plan = make_dispatch_plan(index, 2, 2);
  Tensor x = random_tensor({5, 4}, 1);
  Tensor permuted = Tensor::empty({plan.num_slots(), 4});
  permute_forward(x, plan, permuted);
  Tensor back = Tensor::empty({5, 4});
  unpermute_forward(permuted, plan, Tensor::from({5, 1}, {1, 1, 1, 1, 1}), back);
  std::vector<double> expected = to_double(x);
  for (int64_t c = 0; c < 4; ++c) expected[2 * 4 + c] = expected[3 * 4 + c] = 0.0;
  expect_close(back, expected, 1e-12, 0, "round trip");
}

TEST(Unpermute, BackwardMatchesReferenceAndFiniteDifferences) {
  uint64_t seed = 400;
  for (const PermuteCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.tokens << " k=" << c.k << " E=" << c.experts
                                      << " capacity=" << c.capacity << " d=" << c.width);
    Tensor index = random_expert_index(c.tokens, c.k, c.experts, ++seed);
    const DispatchPlan plan = make_dispatch_plan(index, c.experts, c.capacity);
    const PlanRef ref = plan_ref(index, c.experts, c.capacity);
    const int64_t slots = plan.num_slots();
    Tensor y = random_tensor({slots, c.width}, ++seed);
    Tensor gate = random_tensor({c.tokens, c.k}, ++seed);
    Tensor dout = random_tensor({c.tokens, c.width}, ++seed);
    Tensor dy = random_tensor({slots, c.width}, ++seed);  // written
    Tensor dgate = random_tensor({c.tokens, c.k}, ++seed);
    unpermute_backward(dout, y, plan, gate, dy, dgate);

    const std::vector<double> yv = to_double(y), gv = to_double(gate), gout = to_double(dout);
    std::vector<double> dy_ref(yv.size(), 0.0), dgate_ref(gv.size(), 0.0);
    for (int64_t t = 0; t < c.tokens; ++t)
      for (int64_t j = 0; j < c.k; ++j) {
        const int32_t slot = ref.token_slot[t * c.k + j];
        if (slot < 0) continue;
        for (int64_t d = 0; d < c.width; ++d) {
          dy_ref[slot * c.width + d] = gv[t * c.k + j] * gout[t * c.width + d];
          dgate_ref[t * c.k + j] += gout[t * c.width + d] * yv[slot * c.width + d];
        }
      }
    expect_close(dy, dy_ref, 1e-6, 1e-5, "dy");
    expect_close(dgate, dgate_ref, 1e-5, 1e-5, "dgate");

    if (slots * c.width <= 400) {
      std::vector<double> yf = yv, gf = gv;
      auto loss = [&] { return dot(unpermute_ref(yf, gf, ref, c.tokens, c.k, c.width), gout); };
      expect_close(dy, finite_difference(yf, loss), 1e-6, 1e-5, "dy vs finite differences");
      expect_close(dgate, finite_difference(gf, loss), 1e-5, 1e-5, "dgate vs finite differences");
    }
  }
}

TEST(Permute, ShapeMismatchThrows) {
  Tensor index = Tensor::from_ints({3, 1}, {0, 1, 0});
  const DispatchPlan plan = make_dispatch_plan(index, 2, -1);
  EXPECT_THROW(permute_forward(Tensor::zeros({4, 5}), plan, Tensor::empty({3, 5})), Error);
  EXPECT_THROW(permute_forward(Tensor::zeros({3, 5}), plan, Tensor::empty({3, 4})), Error);
  EXPECT_THROW(permute_backward(Tensor::zeros({2, 5}), plan, Tensor::empty({3, 5})), Error);
  EXPECT_THROW(unpermute_forward(Tensor::zeros({3, 5}), plan, Tensor::zeros({3, 2}), Tensor::empty({3, 5})),
               Error);
  EXPECT_THROW(permute_forward(Tensor::zeros({3, 5}), DispatchPlan{}, Tensor::empty({3, 5})), Error);
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads.
TEST(Permute, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  const int64_t tokens = 1000, width = 65;
  const int k = 2;
  Tensor index = random_expert_index(tokens, k, 8, 1);
  const DispatchPlan plan = make_dispatch_plan(index, 8, 200);
  const int64_t slots = plan.num_slots();
  Tensor x = random_tensor({tokens, width}, 2);
  Tensor y = random_tensor({slots, width}, 3);
  Tensor gate = random_tensor({tokens, k}, 4);
  Tensor dout = random_tensor({tokens, width}, 5);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor permuted = Tensor::empty({slots, width});
    permute_forward(x, plan, permuted);
    Tensor dx = Tensor::empty({tokens, width});
    permute_backward(y, plan, dx);
    Tensor out = Tensor::empty({tokens, width});
    unpermute_forward(y, plan, gate, out);
    Tensor dy = Tensor::empty({slots, width});
    Tensor dgate = Tensor::empty({tokens, k});
    unpermute_backward(dout, y, plan, gate, dy, dgate);
    std::vector<float> all;
    for (const Tensor& t : {permuted, dx, out, dy, dgate}) ampipe::testing::append_values(all, t);
    return all;
  });
}

}  // namespace
}  // namespace ampipe::kernels
