// CUDA routing and token permutation (kernels/router.h, kernels/permute.h) against the CPU kernels
// on the same inputs: top-k selection (ties, NaN, descending order) and gates, the dispatch plan
// identical to the CPU's (slots, sources, counts; dropless, with capacity, experts left empty),
// permute / unpermute and their backwards, gather / scatter rows, over row-strided views whose
// neighbouring columns must survive; shape errors and bad expert indices throw the CPU's errors;
// the reductions repeat bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/gpu_test.h"
#include "kernels/permute.h"
#include "kernels/router.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::max_relative_error;

constexpr double kTolerance = 1e-5;
constexpr float kSentinel = -12345.0f;  // the columns around a view: no kernel may write them

// How a 2-D operand is laid out: contiguous, a column slice whose rows start 16-byte aligned (the
// float4 path with a row stride), or a slice at an odd column (the scalar path with a row stride).
enum class Layout { Contiguous, AlignedSlice, OddSlice };
constexpr Layout kLayouts[] = {Layout::Contiguous, Layout::AlignedSlice, Layout::OddSlice};

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::Contiguous:
      return "contiguous";
    case Layout::AlignedSlice:
      return "aligned slice";
    case Layout::OddSlice:
      return "odd slice";
  }
  return "?";
}

// The same values on both devices: `cpu` / `gpu` are the operands the kernels see, views of the
// `*_buffer` tensors (the whole rows, neighbours included) unless contiguous.
struct Operand {
  Tensor cpu_buffer, gpu_buffer, cpu, gpu;
};

Operand make_operand(int64_t rows, int64_t cols, Layout layout, std::mt19937& rng, bool random_values) {
  int64_t offset = 0, width = cols;
  if (layout == Layout::AlignedSlice) {
    offset = 4;
    width = (cols + 3) / 4 * 4 + 8;  // a multiple of 4: rows stay 16-byte aligned
  } else if (layout == Layout::OddSlice) {
    offset = 1;
    width = cols + 3;
  }
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(rows * width));
  for (float& v : values) v = random_values ? uniform(rng) : kSentinel;
  Operand o;
  o.cpu_buffer = Tensor::from({rows, width}, values);
  o.gpu_buffer = o.cpu_buffer.to(Device::CUDA);
  o.cpu = layout == Layout::Contiguous ? o.cpu_buffer : o.cpu_buffer.cols(offset, offset + cols);
  o.gpu = layout == Layout::Contiguous ? o.gpu_buffer : o.gpu_buffer.cols(offset, offset + cols);
  return o;
}

Operand random_operand(int64_t rows, int64_t cols, Layout layout, std::mt19937& rng) {
  return make_operand(rows, cols, layout, rng, true);
}
Operand output_operand(int64_t rows, int64_t cols, Layout layout, std::mt19937& rng) {
  return make_operand(rows, cols, layout, rng, false);
}

// An int32 [rows, cols] on both devices, as a column slice of a wider buffer when `strided`.
struct IntOperand {
  Tensor cpu, gpu;
};

IntOperand int_operand(const std::vector<int32_t>& values, int64_t rows, int64_t cols, bool strided) {
  if (!strided) {
    const Tensor t = Tensor::from_ints({rows, cols}, values);
    return {t, t.to(Device::CUDA)};
  }
  const int64_t width = cols + 3;
  std::vector<int32_t> wide(static_cast<size_t>(rows * width), -7);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) wide[r * width + 2 + c] = values[r * cols + c];
  const Tensor t = Tensor::from_ints({rows, width}, wide);
  return {t.cols(2, 2 + cols), t.to(Device::CUDA).cols(2, 2 + cols)};
}

std::vector<int32_t> ints(const Tensor& t) {
  const Tensor h = t.device() == Device::CUDA ? t.to(Device::CPU) : t.clone();
  const int32_t* p = h.data<int32_t>();
  return std::vector<int32_t>(p, p + h.numel());
}

std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// Float results within kTolerance of the CPU's (relative, floored at `floor`), NaN where it has NaN.
void expect_close_to_cpu(const Tensor& gpu, const Tensor& cpu, const std::string& what, double floor = 1e-3) {
  const std::vector<float> g = gpu.to_vector(), c = cpu.to_vector();
  ASSERT_EQ(g.size(), c.size()) << what;
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_EQ(std::isnan(g[i]), std::isnan(c[i]))
        << what << ": element " << i << " gpu " << g[i] << " cpu " << c[i];
  size_t worst = 0;
  const double err = max_relative_error(g, c, floor, &worst);
  EXPECT_LE(err, kTolerance) << what << ": element " << worst << " gpu " << g[worst] << " cpu " << c[worst];
}

// ---------------------------------------------------------------------------------------------
// Routing inputs

// Rows of random probabilities (a softmax of N(0, 2^2) logits, as the router makes them).
std::vector<float> random_probs(int64_t tokens, int64_t experts, std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<float> p(static_cast<size_t>(tokens * experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> z(static_cast<size_t>(experts));
    double s = 0;
    for (double& v : z) s += (v = std::exp(normal(rng)));
    for (int64_t e = 0; e < experts; ++e) p[t * experts + e] = static_cast<float>(z[e] / s);
  }
  return p;
}

// Few distinct values (ties everywhere, +0 and -0 among them) and, in some rows, NaN and infinities.
std::vector<float> tied_probs(int64_t tokens, int64_t experts, std::mt19937& rng) {
  std::uniform_int_distribution<int> level(0, 4), coin(0, 9);
  std::vector<float> p(static_cast<size_t>(tokens * experts));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t e = 0; e < experts; ++e) {
      float v = 0.25f * static_cast<float>(level(rng));
      if (v == 0.0f && coin(rng) < 5) v = -0.0f;
      if (t % 3 == 1 && coin(rng) < 2) v = std::numeric_limits<float>::quiet_NaN();
      if (t % 5 == 2 && coin(rng) == 0) v = coin(rng) < 5 ? INFINITY : -INFINITY;
      p[t * experts + e] = v;
    }
  if (tokens > 0) p[0] = std::numeric_limits<float>::quiet_NaN();  // NaN as the first free expert
  return p;
}

// Routing for a plan: k experts per token, skewed towards low indices so that capacity drops
// pairs; drawn from the first `used` experts only (the rest receive no token); distinct within a
// token unless `repeats` (the plan allows a token to choose one expert twice).
std::vector<int32_t> random_routing(int64_t tokens, int k, int used, bool repeats, std::mt19937& rng) {
  std::uniform_int_distribution<int> pick(0, used - 1);
  std::vector<int32_t> idx;
  idx.reserve(static_cast<size_t>(tokens * k));
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> chosen;
    while (static_cast<int>(chosen.size()) < k) {
      const int32_t e = static_cast<int32_t>(std::min(pick(rng), pick(rng)));
      if (repeats || std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
    }
    idx.insert(idx.end(), chosen.begin(), chosen.end());
  }
  return idx;
}

void expect_same_plan(const DispatchPlan& gpu, const DispatchPlan& cpu, const std::string& what) {
  EXPECT_EQ(gpu.num_experts, cpu.num_experts) << what;
  EXPECT_EQ(gpu.expert_counts, cpu.expert_counts) << what;
  EXPECT_EQ(gpu.routed_counts, cpu.routed_counts) << what;
  EXPECT_EQ(gpu.num_slots(), cpu.num_slots()) << what;
  ASSERT_EQ(gpu.token_slot.device(), Device::CUDA) << what;
  ASSERT_EQ(gpu.slot_token.device(), Device::CUDA) << what;
  EXPECT_EQ(gpu.token_slot.shape(), cpu.token_slot.shape()) << what;
  EXPECT_EQ(gpu.slot_token.shape(), cpu.slot_token.shape()) << what;
  EXPECT_EQ(ints(gpu.token_slot), ints(cpu.token_slot)) << what;
  EXPECT_EQ(ints(gpu.slot_token), ints(cpu.slot_token)) << what;
}

// ---------------------------------------------------------------------------------------------
// Router

void check_router_case(const std::vector<float>& values, int64_t tokens, int64_t experts, int k,
                       bool normalize_single, bool strided, std::mt19937& rng) {
  const std::string what = "T=" + std::to_string(tokens) + " E=" + std::to_string(experts) +
                           " k=" + std::to_string(k) + (normalize_single ? " normalize_single" : "") +
                           (strided ? " strided" : "");
  SCOPED_TRACE(what);
  const Layout layout = strided ? Layout::OddSlice : Layout::Contiguous;
  Operand probs = make_operand(tokens, experts, layout, rng, false);
  {
    const int64_t ps = probs.cpu_buffer.dim(1), off = strided ? 1 : 0;
    std::vector<float> buffer = probs.cpu_buffer.to_vector();
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t e = 0; e < experts; ++e) buffer[t * ps + off + e] = values[t * experts + e];
    probs.cpu_buffer.copy_from(Tensor::from(probs.cpu_buffer.shape(), buffer));
    probs.gpu_buffer.copy_from(probs.cpu_buffer);
  }
  const std::vector<int32_t> no_index(static_cast<size_t>(tokens * k), -1);
  IntOperand index = int_operand(no_index, tokens, k, strided);
  Operand gate = output_operand(tokens, k, layout, rng);
  router_topk(probs.cpu, k, index.cpu, gate.cpu, normalize_single);
  router_topk(probs.gpu, k, index.gpu, gate.gpu, normalize_single);
  EXPECT_EQ(ints(index.gpu), ints(index.cpu));
  expect_close_to_cpu(gate.gpu_buffer, gate.cpu_buffer, "gate");

  // Backward from the same selection.
  Operand dgate = random_operand(tokens, k, layout, rng);
  Operand dprobs = output_operand(tokens, experts, layout, rng);
  router_topk_backward(probs.cpu, index.cpu, gate.cpu, dgate.cpu, dprobs.cpu, normalize_single);
  router_topk_backward(probs.gpu, index.gpu, gate.gpu, dgate.gpu, dprobs.gpu, normalize_single);
  expect_close_to_cpu(dprobs.gpu_buffer, dprobs.cpu_buffer, "dprobs");
}

TEST(CudaRouterTopK, SelectionGatesAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(1234);
  for (int64_t experts : {1, 4, 8, 33, 256})
    for (int k : {1, 2, 4, 8, 256}) {
      if (k > experts) continue;
      for (int64_t tokens : {1, 13, 1000}) {
        const bool strided = (experts + k + tokens) % 2 == 0;
        const std::vector<float> p = random_probs(tokens, experts, rng);
        check_router_case(p, tokens, experts, k, false, strided, rng);
        if (k == 1) check_router_case(p, tokens, experts, k, true, !strided, rng);
      }
    }
  // k == E (every expert chosen, in descending order).
  for (int64_t experts : {4, 33}) {
    const std::vector<float> p = random_probs(13, experts, rng);
    check_router_case(p, 13, experts, static_cast<int>(experts), false, true, rng);
  }
}

TEST(CudaRouterTopK, TiesZerosNaNAndInfinitiesSelectLikeCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(99);
  for (int64_t experts : {1, 4, 8, 40, 256})
    for (int k : {1, 2, 4, 40}) {
      if (k > experts) continue;
      const std::vector<float> p = tied_probs(200, experts, rng);
      check_router_case(p, 200, experts, k, false, k % 2 == 0, rng);
      check_router_case(p, 200, experts, k, true, k % 2 == 1, rng);
    }
  // A row that is all NaN, and one with NaN at the end only.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check_router_case({nan, nan, nan, nan, 0.5f, 0.1f, 0.2f, nan}, 2, 4, 3, false, false, rng);
}

TEST(CudaRouterTopK, ZeroTokensIsANoOp) {
  AMPIPE_REQUIRE_GPU();
  const Tensor probs = Tensor::empty({0, 4}, DType::F32, Device::CUDA);
  Tensor index = Tensor::empty({0, 2}, DType::I32, Device::CUDA);
  Tensor gate = Tensor::empty({0, 2}, DType::F32, Device::CUDA);
  EXPECT_NO_THROW(router_topk(probs, 2, index, gate));
  Tensor dprobs = Tensor::empty({0, 4}, DType::F32, Device::CUDA);
  EXPECT_NO_THROW(router_topk_backward(probs, index, gate, gate, dprobs));
}

TEST(CudaRouterTopK, ShapeErrorsThrowOnTheGpuPath) {
  AMPIPE_REQUIRE_GPU();
  const Tensor probs = Tensor::zeros({3, 4}, DType::F32, Device::CUDA);
  Tensor index = Tensor::empty({3, 2}, DType::I32, Device::CUDA);
  Tensor gate = Tensor::empty({3, 2}, DType::F32, Device::CUDA);
  EXPECT_THROW(router_topk(probs, 5, Tensor::empty({3, 5}, DType::I32, Device::CUDA),
                           Tensor::empty({3, 5}, DType::F32, Device::CUDA)),
               Error);
  EXPECT_THROW(router_topk(probs, 0, Tensor::empty({3, 0}, DType::I32, Device::CUDA),
                           Tensor::empty({3, 0}, DType::F32, Device::CUDA)),
               Error);
  EXPECT_THROW(router_topk(probs, 2, Tensor::empty({3, 2}, DType::F32, Device::CUDA), gate), Error);
  EXPECT_THROW(router_topk(probs, 2, index, Tensor::empty({2, 2}, DType::F32, Device::CUDA)), Error);
  EXPECT_THROW(router_topk(probs, 2, index, Tensor::empty({3, 2})), Error);  // gate on the host
  Tensor dprobs = Tensor::empty({3, 4}, DType::F32, Device::CUDA);
  EXPECT_THROW(
      router_topk_backward(probs, index, gate, Tensor::empty({3, 3}, DType::F32, Device::CUDA), dprobs),
      Error);
  EXPECT_THROW(
      router_topk_backward(probs, index, gate, gate, Tensor::empty({3, 5}, DType::F32, Device::CUDA)), Error);
  // The messages are the CPU's.
  std::string cpu_message, gpu_message;
  try {
    router_topk(Tensor::zeros({3, 4}), 5, Tensor::empty({3, 5}, DType::I32), Tensor::empty({3, 5}));
  } catch (const Error& e) {
    cpu_message = e.what();
  }
  try {
    router_topk(probs, 5, Tensor::empty({3, 5}, DType::I32, Device::CUDA),
                Tensor::empty({3, 5}, DType::F32, Device::CUDA));
  } catch (const Error& e) {
    gpu_message = e.what();
  }
  EXPECT_FALSE(cpu_message.empty());
  EXPECT_EQ(gpu_message, cpu_message);
}

TEST(CudaRouterTopK, RepeatedRunsAreBitwiseIdentical) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(5);
  const int64_t tokens = 777, experts = 64;
  const int k = 4;
  const Tensor probs = Tensor::from({tokens, experts}, random_probs(tokens, experts, rng)).to(Device::CUDA);
  const Tensor dgate = random_operand(tokens, k, Layout::Contiguous, rng).gpu;
  std::vector<int32_t> first_index;
  std::vector<uint32_t> first_gate, first_dprobs;
  for (int run = 0; run < 3; ++run) {
    Tensor index = Tensor::empty({tokens, k}, DType::I32, Device::CUDA);
    Tensor gate = Tensor::empty({tokens, k}, DType::F32, Device::CUDA);
    Tensor dprobs = Tensor::empty({tokens, experts}, DType::F32, Device::CUDA);
    router_topk(probs, k, index, gate);
    router_topk_backward(probs, index, gate, dgate, dprobs);
    if (run == 0) {
      first_index = ints(index);
      first_gate = bits(gate.to_vector());
      first_dprobs = bits(dprobs.to_vector());
    } else {
      EXPECT_EQ(ints(index), first_index);
      EXPECT_EQ(bits(gate.to_vector()), first_gate);
      EXPECT_EQ(bits(dprobs.to_vector()), first_dprobs);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Dispatch plan

TEST(CudaDispatchPlan, MatchesCpuExactlyWithAndWithoutCapacity) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(42);
  int cases_with_empty_experts = 0, cases_with_drops = 0;
  for (int experts : {1, 4, 8})
    for (int k : {1, 2, 4}) {
      if (k > experts) continue;
      for (int64_t tokens : {1, 13, 1000})
        for (int variant = 0; variant < 3; ++variant) {
          // variant 0: all experts, distinct choices; 1: only the lower half of the experts used;
          // 2: a token may choose one expert twice.
          const int used = variant == 1 ? std::max(k, experts / 2) : experts;
          const bool repeats = variant == 2;
          const std::vector<int32_t> routing = random_routing(tokens, k, used, repeats, rng);
          const IntOperand index = int_operand(routing, tokens, k, variant == 1);
          const int64_t balanced = tokens * k / experts;
          for (int64_t capacity :
               {int64_t{-1}, int64_t{0}, std::max<int64_t>(1, balanced / 2), balanced + 1, tokens * k}) {
            const std::string what = "E=" + std::to_string(experts) + " k=" + std::to_string(k) +
                                     " T=" + std::to_string(tokens) + " variant=" + std::to_string(variant) +
                                     " capacity=" + std::to_string(capacity);
            const DispatchPlan cpu = make_dispatch_plan(index.cpu, experts, capacity);
            const DispatchPlan gpu = make_dispatch_plan(index.gpu, experts, capacity);
            expect_same_plan(gpu, cpu, what);
            if (std::count(cpu.routed_counts.begin(), cpu.routed_counts.end(), 0) > 0)
              ++cases_with_empty_experts;
            if (cpu.num_slots() < tokens * k) ++cases_with_drops;
          }
        }
    }
  EXPECT_GT(cases_with_empty_experts, 10);  // the cases cover experts that receive no token
  EXPECT_GT(cases_with_drops, 10);          // and capacity dropping pairs
}

TEST(CudaDispatchPlan, LargePlansSpanningManyBlocksMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(7);
  // 4000 pairs (2 blocks), 560k pairs (hundreds of blocks), 2.4M pairs (more rounds per block), and
  // 256 experts.
  struct Case {
    int64_t tokens;
    int k, experts;
  };
  for (const Case& c : {Case{1000, 4, 8}, Case{70000, 8, 64}, Case{300000, 8, 64}, Case{20000, 8, 256}}) {
    const std::vector<int32_t> routing = random_routing(c.tokens, c.k, c.experts, false, rng);
    const IntOperand index = int_operand(routing, c.tokens, c.k, c.tokens == 70000);
    for (int64_t capacity : {int64_t{-1}, c.tokens * c.k / c.experts}) {
      const std::string what = "T=" + std::to_string(c.tokens) + " E=" + std::to_string(c.experts) +
                               " capacity=" + std::to_string(capacity);
      expect_same_plan(make_dispatch_plan(index.gpu, c.experts, capacity),
                       make_dispatch_plan(index.cpu, c.experts, capacity), what);
    }
  }
}

TEST(CudaDispatchPlan, EmptyRoutingGivesAnEmptyPlan) {
  AMPIPE_REQUIRE_GPU();
  for (const Shape& shape : {Shape{0, 2}, Shape{5, 0}}) {
    const Tensor index = Tensor::empty(shape, DType::I32);
    expect_same_plan(make_dispatch_plan(index.to(Device::CUDA), 3, -1), make_dispatch_plan(index, 3, -1),
                     shape_string(shape));
  }
}

TEST(CudaDispatchPlan, BadExpertIndexThrowsTheCpuMessageForTheFirstBadPair) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(3);
  std::vector<int32_t> routing = random_routing(5000, 2, 4, false, rng);
  routing[2 * 3001 + 1] = 9;   // token 3001 choice 1: the first bad pair
  routing[2 * 4999 + 0] = -1;  // a later one
  routing[2 * 4000 + 1] = 4;
  const IntOperand index = int_operand(routing, 5000, 2, true);
  std::string cpu_message, gpu_message;
  try {
    make_dispatch_plan(index.cpu, 4, -1);
  } catch (const Error& e) {
    cpu_message = e.what();
  }
  try {
    make_dispatch_plan(index.gpu, 4, -1);
  } catch (const Error& e) {
    gpu_message = e.what();
  }
  EXPECT_NE(cpu_message.find("token 3001 choice 1"), std::string::npos) << cpu_message;
  EXPECT_EQ(gpu_message, cpu_message);
  // The stream is usable afterwards.
  routing[2 * 3001 + 1] = 0;
  routing[2 * 4999 + 0] = 1;
  routing[2 * 4000 + 1] = 2;
  const IntOperand fixed = int_operand(routing, 5000, 2, false);
  expect_same_plan(make_dispatch_plan(fixed.gpu, 4, 100), make_dispatch_plan(fixed.cpu, 4, 100),
                   "after error");
  EXPECT_THROW(make_dispatch_plan(fixed.gpu, 0, -1), Error);
  EXPECT_THROW(make_dispatch_plan(Tensor::zeros({2, 2}, DType::F32, Device::CUDA), 3, -1), Error);
}

TEST(CudaDispatchPlan, RepeatedRunsAreIdentical) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(11);
  const std::vector<int32_t> routing = random_routing(50000, 2, 16, false, rng);
  const Tensor index = Tensor::from_ints({50000, 2}, routing).to(Device::CUDA);
  const DispatchPlan first = make_dispatch_plan(index, 16, 5000);
  for (int run = 0; run < 3; ++run) expect_same_plan(make_dispatch_plan(index, 16, 5000), first, "repeat");
}

// ---------------------------------------------------------------------------------------------
// Permute / unpermute

struct PermuteCase {
  int experts, k;
  int64_t tokens, capacity, width;
  Layout layout;
};

std::string describe(const PermuteCase& c) {
  return "E=" + std::to_string(c.experts) + " k=" + std::to_string(c.k) + " T=" + std::to_string(c.tokens) +
         " capacity=" + std::to_string(c.capacity) + " d=" + std::to_string(c.width) + " " +
         layout_name(c.layout);
}

// Every (E, k <= E) in {1, 4, 8} x {1, 2, 4}, T in {1, 13, 1000}, dropless and two capacities;
// widths and layouts rotate so that every (d, layout) pair of {1, 33, 1024} x kLayouts occurs.
std::vector<PermuteCase> permute_cases() {
  std::vector<PermuteCase> cases;
  int n = 0;
  for (int experts : {1, 4, 8})
    for (int k : {1, 2, 4}) {
      if (k > experts) continue;
      for (int64_t tokens : {1, 13, 1000})
        for (int cap_kind = 0; cap_kind < 3; ++cap_kind) {
          const int64_t balanced = tokens * k / experts;
          const int64_t capacity = cap_kind == 0   ? -1
                                   : cap_kind == 1 ? std::max<int64_t>(1, balanced / 2)
                                                   : 0;
          const int64_t widths[] = {1, 33, 1024};
          cases.push_back({experts, k, tokens, capacity, widths[n % 3], kLayouts[(n / 3) % 3]});
          ++n;
        }
    }
  return cases;
}

// The plans of one case on both devices (experts >= 4 use only the lower half: empty experts).
struct Plans {
  DispatchPlan cpu, gpu;
  Tensor gate_cpu, gate_gpu;  // [T, k] positive gates (a strided view in the slice layouts)
};

Plans make_plans(const PermuteCase& c, std::mt19937& rng) {
  const int used = c.experts >= 4 ? std::max(c.k, c.experts / 2) : c.experts;
  const std::vector<int32_t> routing = random_routing(c.tokens, c.k, used, false, rng);
  const Tensor index = Tensor::from_ints({c.tokens, c.k}, routing);
  Plans p;
  p.cpu = make_dispatch_plan(index, c.experts, c.capacity);
  p.gpu = make_dispatch_plan(index.to(Device::CUDA), c.experts, c.capacity);
  Operand gate = random_operand(c.tokens, c.k, c.layout, rng);
  std::vector<float> g = gate.cpu_buffer.to_vector();
  for (float& v : g) v = 0.05f + 0.5f * (v + 1.0f);  // in (0.05, 1.05)
  gate.cpu_buffer.copy_from(Tensor::from(gate.cpu_buffer.shape(), g));
  gate.gpu_buffer.copy_from(gate.cpu_buffer);
  p.gate_cpu = gate.cpu;
  p.gate_gpu = gate.gpu;
  return p;
}

TEST(CudaPermute, ForwardAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(2024);
  for (const PermuteCase& c : permute_cases()) {
    SCOPED_TRACE(describe(c));
    const Plans plans = make_plans(c, rng);
    const int64_t slots = plans.cpu.num_slots();
    ASSERT_EQ(plans.gpu.num_slots(), slots);

    const Operand x = random_operand(c.tokens, c.width, c.layout, rng);
    Operand out = output_operand(slots, c.width, c.layout, rng);
    permute_forward(x.cpu, plans.cpu, out.cpu);
    permute_forward(x.gpu, plans.gpu, out.gpu);
    EXPECT_EQ(bits(out.gpu_buffer.to_vector()), bits(out.cpu_buffer.to_vector()))
        << "permute_forward (a copy)";

    const Operand dout = random_operand(slots, c.width, c.layout, rng);
    Operand dx = output_operand(c.tokens, c.width, c.layout, rng);
    permute_backward(dout.cpu, plans.cpu, dx.cpu);
    permute_backward(dout.gpu, plans.gpu, dx.gpu);
    expect_close_to_cpu(dx.gpu_buffer, dx.cpu_buffer, "permute_backward");
  }
}

TEST(CudaUnpermute, ForwardAndBackwardMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(77);
  for (const PermuteCase& c : permute_cases()) {
    SCOPED_TRACE(describe(c));
    const Plans plans = make_plans(c, rng);
    const int64_t slots = plans.cpu.num_slots();

    const Operand y = random_operand(slots, c.width, c.layout, rng);
    Operand out = output_operand(c.tokens, c.width, c.layout, rng);
    unpermute_forward(y.cpu, plans.cpu, plans.gate_cpu, out.cpu);
    unpermute_forward(y.gpu, plans.gpu, plans.gate_gpu, out.gpu);
    // A sum of k gate * y terms of size ~1 can cancel to near 0: the error is measured against the
    // terms' scale (floor 1), not against the cancelled result.
    expect_close_to_cpu(out.gpu_buffer, out.cpu_buffer, "unpermute_forward", 1.0);

    const Operand dout = random_operand(c.tokens, c.width, c.layout, rng);
    Operand dy = output_operand(slots, c.width, c.layout, rng);
    Operand dgate = output_operand(c.tokens, c.k, c.layout, rng);
    unpermute_backward(dout.cpu, y.cpu, plans.cpu, plans.gate_cpu, dy.cpu, dgate.cpu);
    unpermute_backward(dout.gpu, y.gpu, plans.gpu, plans.gate_gpu, dy.gpu, dgate.gpu);
    expect_close_to_cpu(dy.gpu_buffer, dy.cpu_buffer, "unpermute_backward dy");
    expect_close_to_cpu(dgate.gpu_buffer, dgate.cpu_buffer, "unpermute_backward dgate");
  }
}

TEST(CudaPermute, WideRowsAndEmptyWidthsMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(8);
  for (const PermuteCase& c : {PermuteCase{8, 2, 300, -1, 8193, Layout::OddSlice},
                               PermuteCase{8, 2, 300, 40, 8192, Layout::AlignedSlice},
                               PermuteCase{4, 2, 13, -1, 0, Layout::Contiguous}}) {
    SCOPED_TRACE(describe(c));
    const Plans plans = make_plans(c, rng);
    const int64_t slots = plans.cpu.num_slots();
    const Operand x = random_operand(c.tokens, c.width, c.layout, rng);
    Operand out = output_operand(slots, c.width, c.layout, rng);
    permute_forward(x.cpu, plans.cpu, out.cpu);
    permute_forward(x.gpu, plans.gpu, out.gpu);
    expect_close_to_cpu(out.gpu_buffer, out.cpu_buffer, "permute_forward");
    Operand back = output_operand(c.tokens, c.width, c.layout, rng);
    unpermute_forward(out.cpu, plans.cpu, plans.gate_cpu, back.cpu);
    unpermute_forward(out.gpu, plans.gpu, plans.gate_gpu, back.gpu);
    expect_close_to_cpu(back.gpu_buffer, back.cpu_buffer, "unpermute_forward", 1.0);
    Operand dy = output_operand(slots, c.width, c.layout, rng);
    Operand dgate = output_operand(c.tokens, c.k, c.layout, rng);
    unpermute_backward(x.cpu, out.cpu, plans.cpu, plans.gate_cpu, dy.cpu, dgate.cpu);
    unpermute_backward(x.gpu, out.gpu, plans.gpu, plans.gate_gpu, dy.gpu, dgate.gpu);
    expect_close_to_cpu(dy.gpu_buffer, dy.cpu_buffer, "dy");
    expect_close_to_cpu(dgate.gpu_buffer, dgate.cpu_buffer, "dgate");
  }
}

TEST(CudaUnpermute, ReductionsRepeatBitForBit) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(13);
  const PermuteCase c{8, 4, 1000, 300, 1031, Layout::OddSlice};
  const Plans plans = make_plans(c, rng);
  const int64_t slots = plans.gpu.num_slots();
  const Operand y = random_operand(slots, c.width, c.layout, rng);
  const Operand dout = random_operand(c.tokens, c.width, c.layout, rng);
  std::vector<uint32_t> first_out, first_dx, first_dgate;
  for (int run = 0; run < 3; ++run) {
    Tensor out = Tensor::empty({c.tokens, c.width}, DType::F32, Device::CUDA);
    Tensor dx = Tensor::empty({c.tokens, c.width}, DType::F32, Device::CUDA);
    Tensor dy = Tensor::empty({slots, c.width}, DType::F32, Device::CUDA);
    Tensor dgate = Tensor::empty({c.tokens, c.k}, DType::F32, Device::CUDA);
    unpermute_forward(y.gpu, plans.gpu, plans.gate_gpu, out);
    permute_backward(y.gpu, plans.gpu, dx);
    unpermute_backward(dout.gpu, y.gpu, plans.gpu, plans.gate_gpu, dy, dgate);
    if (run == 0) {
      first_out = bits(out.to_vector());
      first_dx = bits(dx.to_vector());
      first_dgate = bits(dgate.to_vector());
    } else {
      EXPECT_EQ(bits(out.to_vector()), first_out);
      EXPECT_EQ(bits(dx.to_vector()), first_dx);
      EXPECT_EQ(bits(dgate.to_vector()), first_dgate);
    }
  }
}

TEST(CudaPermute, ShapeErrorsThrowOnTheGpuPath) {
  AMPIPE_REQUIRE_GPU();
  const Tensor index = Tensor::from_ints({3, 2}, {0, 1, 1, 2, 2, 0}).to(Device::CUDA);
  const DispatchPlan plan = make_dispatch_plan(index, 3, -1);  // 6 slots
  auto gpu = [](const Shape& shape) { return Tensor::zeros(shape, DType::F32, Device::CUDA); };
  EXPECT_THROW(permute_forward(gpu({4, 5}), plan, gpu({6, 5})), Error);
  EXPECT_THROW(permute_forward(gpu({3, 5}), plan, gpu({6, 4})), Error);
  EXPECT_THROW(permute_backward(gpu({5, 5}), plan, gpu({3, 5})), Error);
  EXPECT_THROW(permute_backward(gpu({6, 5}), plan, gpu({3, 4})), Error);
  EXPECT_THROW(unpermute_forward(gpu({6, 5}), plan, gpu({3, 3}), gpu({3, 5})), Error);
  EXPECT_THROW(unpermute_forward(gpu({6, 5}), plan, gpu({3, 2}), gpu({2, 5})), Error);
  EXPECT_THROW(unpermute_backward(gpu({3, 5}), gpu({6, 4}), plan, gpu({3, 2}), gpu({6, 5}), gpu({3, 2})),
               Error);
  EXPECT_THROW(unpermute_backward(gpu({3, 5}), gpu({6, 5}), plan, gpu({3, 2}), gpu({6, 5}), gpu({3, 1})),
               Error);
  EXPECT_THROW(permute_forward(gpu({3, 5}), DispatchPlan{}, gpu({6, 5})), Error);
  EXPECT_THROW(permute_forward(Tensor::zeros({3, 5}), plan, gpu({6, 5})), Error);  // x on the host
  // The messages are the CPU's.
  const DispatchPlan cpu_plan = make_dispatch_plan(index.to(Device::CPU), 3, -1);
  std::string cpu_message, gpu_message;
  try {
    unpermute_forward(Tensor::zeros({6, 5}), cpu_plan, Tensor::zeros({3, 3}), Tensor::zeros({3, 5}));
  } catch (const Error& e) {
    cpu_message = e.what();
  }
  try {
    unpermute_forward(gpu({6, 5}), plan, gpu({3, 3}), gpu({3, 5}));
  } catch (const Error& e) {
    gpu_message = e.what();
  }
  EXPECT_FALSE(cpu_message.empty());
  EXPECT_EQ(gpu_message, cpu_message);
}

// ---------------------------------------------------------------------------------------------
// Gather / scatter rows

TEST(CudaRowMoves, GatherAndScatterMatchCpu) {
  AMPIPE_REQUIRE_GPU();
  std::mt19937 rng(31);
  int n = 0;
  for (int64_t rows : {1, 13, 1000})
    for (int64_t width : {1, 33, 1024}) {
      const Layout layout = kLayouts[n++ % 3];
      SCOPED_TRACE("rows=" + std::to_string(rows) + " d=" + std::to_string(width) + " " +
                   layout_name(layout));
      // gather: any rows, repeats allowed, more or fewer than the source has.
      const int64_t picks = rows * 2 - 1;
      std::uniform_int_distribution<int32_t> any_row(0, static_cast<int32_t>(rows - 1));
      std::vector<int32_t> gather_index(static_cast<size_t>(picks));
      for (int32_t& i : gather_index) i = any_row(rng);
      const Tensor gi = Tensor::from_ints({picks}, gather_index);
      const Operand src = random_operand(rows, width, layout, rng);
      Operand gathered = output_operand(picks, width, layout, rng);
      gather_rows(src.cpu, gi, gathered.cpu);
      gather_rows(src.gpu, gi.to(Device::CUDA), gathered.gpu);
      EXPECT_EQ(bits(gathered.gpu_buffer.to_vector()), bits(gathered.cpu_buffer.to_vector()))
          << "gather_rows";

      // scatter: distinct destinations, a subset of a larger dst (the rest untouched).
      std::vector<int32_t> destinations(static_cast<size_t>(rows + 5));
      for (size_t i = 0; i < destinations.size(); ++i) destinations[i] = static_cast<int32_t>(i);
      std::shuffle(destinations.begin(), destinations.end(), rng);
      destinations.resize(static_cast<size_t>(rows));
      const Tensor si = Tensor::from_ints({rows}, destinations);
      Operand scattered = output_operand(rows + 5, width, layout, rng);
      scatter_rows(src.cpu, si, scattered.cpu);
      scatter_rows(src.gpu, si.to(Device::CUDA), scattered.gpu);
      EXPECT_EQ(bits(scattered.gpu_buffer.to_vector()), bits(scattered.cpu_buffer.to_vector()))
          << "scatter_rows";
    }
}

TEST(CudaRowMoves, ShapeErrorsThrowOnTheGpuPath) {
  AMPIPE_REQUIRE_GPU();
  auto gpu = [](const Shape& shape) { return Tensor::zeros(shape, DType::F32, Device::CUDA); };
  const Tensor index = Tensor::from_ints({3}, {0, 2, 1}).to(Device::CUDA);
  EXPECT_THROW(gather_rows(gpu({4, 5}), index, gpu({2, 5})), Error);                  // dst rows != indices
  EXPECT_THROW(gather_rows(gpu({4, 5}), index, gpu({3, 6})), Error);                  // widths differ
  EXPECT_THROW(scatter_rows(gpu({2, 5}), index, gpu({4, 5})), Error);                 // src rows != indices
  EXPECT_THROW(gather_rows(gpu({4, 5}), gpu({3}), gpu({3, 5})), Error);               // float index
  EXPECT_THROW(gather_rows(gpu({4, 5}), index.to(Device::CPU), gpu({3, 5})), Error);  // mixed devices
  EXPECT_NO_THROW(gather_rows(gpu({4, 5}), Tensor::empty({0}, DType::I32, Device::CUDA), gpu({0, 5})));
}

}  // namespace
}  // namespace ampipe::kernels
