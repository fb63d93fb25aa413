// CPU top-k routing (kernels/router.h).
//
// Selection is k passes of an arg-max over the experts not yet chosen, comparing with a strict
// '>', so equal probabilities go to the lower expert index and the choices come out in descending
// order. E and k are small (tens), so O(k E) per token is cheaper than anything cleverer.
#include "kernels/router.h"

#include <algorithm>
#include <vector>

#include "core/parallel.h"
#include "kernels/moe_checks.h"

namespace ampipe::kernels::cpu {
namespace {

constexpr int64_t kGrainElements = 16384;

// Sum of the selected probabilities, in choice order (the normaliser of the k > 1 gate).
double selected_sum(const float* p, const int32_t* idx, int64_t k) {
  double s = 0;
  for (int64_t j = 0; j < k; ++j) s += p[idx[j]];
  return s;
}

}  // namespace

void router_topk(const Tensor& probs, int k, Tensor expert_index, Tensor gate, bool normalize_single) {
  detail::check_router_topk(probs, k, expert_index, gate);
  const int64_t tokens = probs.dim(0);
  const int64_t experts = probs.dim(1);
  const float* pp = probs.data<float>();
  int32_t* ip = expert_index.data<int32_t>();
  float* gp = gate.data<float>();
  const int64_t ps = probs.stride(0);
  const int64_t is = expert_index.stride(0);
  const int64_t gs = gate.stride(0);
  parallel_for(tokens, std::max<int64_t>(1, kGrainElements / (experts * k)), [&](int64_t begin, int64_t end) {
    std::vector<char> taken(static_cast<size_t>(experts));
    for (int64_t t = begin; t < end; ++t) {
      const float* p = pp + t * ps;
      int32_t* idx = ip + t * is;
      float* g = gp + t * gs;
      std::fill(taken.begin(), taken.end(), 0);
      for (int j = 0; j < k; ++j) {
        int64_t best = -1;
        for (int64_t e = 0; e < experts; ++e) {
          // The first free expert seeds the search, so a NaN probability still yields a valid index.
          if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        }
        taken[best] = 1;
        idx[j] = static_cast<int32_t>(best);
      }
      if (k == 1 && !normalize_single) {
        g[0] = p[idx[0]];
      } else {
        const double sum = selected_sum(p, idx, k);
        for (int j = 0; j < k; ++j) g[j] = static_cast<float>(p[idx[j]] / sum);
      }
    }
  });
}

void router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate,
                          const Tensor& dgate, Tensor dprobs, bool normalize_single) {
  detail::check_router_topk_backward(probs, expert_index, gate, dgate, dprobs);
  const int64_t tokens = probs.dim(0);
  const int64_t experts = probs.dim(1);
  const int64_t k = expert_index.dim(1);
  const float* pp = probs.data<float>();
  const int32_t* ip = expert_index.data<int32_t>();
  const float* dgp = dgate.data<float>();
  float* dpp = dprobs.data<float>();
  const int64_t ps = probs.stride(0);
  const int64_t is = expert_index.stride(0);
  const int64_t dgs = dgate.stride(0);
  const int64_t dps = dprobs.stride(0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j)
      detail::check_expert_in_range(ip[t * is + j], t, j, experts, "router_topk_backward");
  parallel_for(tokens, std::max<int64_t>(1, kGrainElements / (experts + k)), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* p = pp + t * ps;
      const int32_t* idx = ip + t * is;
      const float* dg = dgp + t * dgs;
      float* dp = dpp + t * dps;
      std::fill(dp, dp + experts, 0.0f);
      if (k == 1 && !normalize_single) {
        dp[idx[0]] += dg[0];
        continue;
      }
      // gate_j = p_j / S with S = sum of the selected p: d gate_j / d p_i = (delta_ij - gate_j) / S,
      // so dp_i = (dgate_i - sum_j dgate_j gate_j) / S for each selected i.
      const double sum = selected_sum(p, idx, k);
      double dot = 0;
      for (int64_t j = 0; j < k; ++j) dot += static_cast<double>(dg[j]) * (p[idx[j]] / sum);
      for (int64_t j = 0; j < k; ++j) dp[idx[j]] += static_cast<float>((dg[j] - dot) / sum);
    }
  });
}

}  // namespace ampipe::kernels::cpu
