// CUDA top-k routing (kernels/router.h): the same selection and gates as kernels/cpu/router.cpp.
//
// One warp per token, 8 tokens per 256-thread block. Each of the k passes scans the token's row of
// probabilities (lane l takes experts l, l + 32, ...) and reduces across the warp with shuffles.
// The CPU's pass is an arg-max with a strict '>' over the experts not yet taken, seeded with the
// first free expert. Without NaN that picks the experts in the order (probability descending, index
// ascending), so a pass needs no "taken" flags: it takes the best expert ranked after the previous
// pick. With NaN the seed matters: when the lowest free expert holds NaN nothing beats it and it is
// picked; otherwise NaN never wins. Free NaN experts are those above the last NaN picked (they are
// picked in index order), so each pass computes, over the row:
//   best     - the best non-NaN expert ranked after the previous non-NaN pick,
//   free_min - the lowest such expert (the lowest free non-NaN one),
//   nan_min  - the lowest NaN expert above the last NaN pick,
// and picks nan_min if it is below free_min, else best. The reductions are exact selections
// (comparisons only), so the indices are identical to the CPU's; the gate's float64 sum runs in
// choice order like the CPU's, so the gates are identical too. No state is stored besides the
// previous picks, so any E and any k <= E work (O(k E / 32) per lane).
#include <climits>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/moe_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kWarpSize = 32;
constexpr int kTokensPerBlock = 8;  // warps per block
constexpr unsigned kFullMask = 0xffffffffu;

__global__ void router_topk_kernel(const float* __restrict__ probs, int64_t probs_stride, int64_t tokens,
                                   int experts, int k, int32_t* __restrict__ expert_index,
                                   int64_t index_stride, float* __restrict__ gate, int64_t gate_stride,
                                   bool normalize_single) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kTokensPerBlock + threadIdx.x / kWarpSize;
  if (t >= tokens) return;  // warp-uniform: the shuffles below always see a full warp
  const float* p = probs + t * probs_stride;
  int32_t* idx = expert_index + t * index_stride;
  float* g = gate + t * gate_stride;

  float prev_value = 0.0f;  // the previous non-NaN pick (prev_expert < 0: none yet)
  int prev_expert = -1;
  int last_nan = -1;  // the last NaN expert picked (-1: none)
  double sum = 0;     // of the selected probabilities, in choice order (every lane holds it)
  for (int j = 0; j < k; ++j) {
    float best_value = 0.0f;
    int best_expert = INT_MAX;  // INT_MAX: no candidate
    int free_min = INT_MAX;
    int nan_min = INT_MAX;
    for (int e = lane; e < experts; e += kWarpSize) {  // ascending e within a lane
      const float v = p[e];
      if (isnan(v)) {
        if (e > last_nan && e < nan_min) nan_min = e;
        continue;
      }
      const bool after_previous = prev_expert < 0 || v < prev_value || (v == prev_value && e > prev_expert);
      if (!after_previous) continue;
      if (e < free_min) free_min = e;
      // Strict '>' over ascending e keeps the lowest index among equal probabilities.
      if (best_expert == INT_MAX || v > best_value) {
        best_value = v;
        best_expert = e;
      }
    }
    // Butterfly reduction: the maximum of a total order (value descending, then index ascending),
    // so every lane ends with the same, unique answer whatever the combining order.
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const float other_value = __shfl_xor_sync(kFullMask, best_value, offset);
      const int other_expert = __shfl_xor_sync(kFullMask, best_expert, offset);
      if (other_expert != INT_MAX && (best_expert == INT_MAX || other_value > best_value ||
                                      (other_value == best_value && other_expert < best_expert))) {
        best_value = other_value;
        best_expert = other_expert;
      }
      free_min = min(free_min, __shfl_xor_sync(kFullMask, free_min, offset));
      nan_min = min(nan_min, __shfl_xor_sync(kFullMask, nan_min, offset));
    }
    int chosen;
    if (nan_min < free_min) {  // the lowest free expert holds NaN: nothing compares above it
      chosen = nan_min;
      last_nan = nan_min;
    } else {
      chosen = best_expert;  // exists: k <= E leaves a free expert, and free_min <= nan_min
      prev_value = best_value;
      prev_expert = best_expert;
    }
    if (lane == j % kWarpSize) idx[j] = chosen;  // the lane that computes gate j below
    sum += static_cast<double>(p[chosen]);
  }

  if (k == 1 && !normalize_single) {
    if (lane == 0) g[0] = p[idx[0]];
    return;
  }
  for (int j = lane; j < k; j += kWarpSize) g[j] = static_cast<float>(static_cast<double>(p[idx[j]]) / sum);
}

// dprobs row t: zero, then dp[idx_j] += (dgate_j - sum_i dgate_i gate_i) / S in choice order (the
// CPU's formulas and order, float64). The lanes zero the row; lane 0 does the O(k) rest, so a
// repeated expert accumulates in choice order like on the CPU.
__global__ void router_topk_backward_kernel(const float* __restrict__ probs, int64_t probs_stride,
                                            int64_t tokens, int experts, int k,
                                            const int32_t* __restrict__ expert_index, int64_t index_stride,
                                            const float* __restrict__ dgate, int64_t dgate_stride,
                                            float* __restrict__ dprobs, int64_t dprobs_stride,
                                            bool normalize_single) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kTokensPerBlock + threadIdx.x / kWarpSize;
  if (t >= tokens) return;
  const float* p = probs + t * probs_stride;
  const int32_t* idx = expert_index + t * index_stride;
  const float* dg = dgate + t * dgate_stride;
  float* dp = dprobs + t * dprobs_stride;
  for (int e = lane; e < experts; e += kWarpSize) dp[e] = 0.0f;
  __syncwarp();  // the zeros are visible to lane 0 before it accumulates
  if (lane != 0) return;
  // The CPU rejects an expert index outside [0, E) before writing anything; here the contents are
  // not checked (they come from router_topk), but a token with such an index is left at zero
  // rather than reading or writing outside its row.
  for (int j = 0; j < k; ++j)
    if (idx[j] < 0 || idx[j] >= experts) return;
  if (k == 1 && !normalize_single) {
    dp[idx[0]] += dg[0];
    return;
  }
  double sum = 0;
  for (int j = 0; j < k; ++j) sum += static_cast<double>(p[idx[j]]);
  double dot = 0;
  for (int j = 0; j < k; ++j) dot += static_cast<double>(dg[j]) * (static_cast<double>(p[idx[j]]) / sum);
  for (int j = 0; j < k; ++j) dp[idx[j]] += static_cast<float>((static_cast<double>(dg[j]) - dot) / sum);
}

}  // namespace

void router_topk(const Tensor& probs, int k, Tensor expert_index, Tensor gate, bool normalize_single) {
  detail::check_router_topk(probs, k, expert_index, gate);
  const int64_t tokens = probs.dim(0);
  const int64_t experts = probs.dim(1);
  const float* pp = probs.device_data<float>();
  int32_t* ip = expert_index.device_data<int32_t>();
  float* gp = gate.device_data<float>();
  if (tokens == 0) return;
  launch("router_topk_kernel", router_topk_kernel, blocks_for(tokens, kTokensPerBlock), kTokensPerBlock * kWarpSize, 0,
      stream(), pp, probs.stride(0), tokens, static_cast<int>(experts), k, ip, expert_index.stride(0), gp,
      gate.stride(0), normalize_single);
}

void router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate,
                          const Tensor& dgate, Tensor dprobs, bool normalize_single) {
  detail::check_router_topk_backward(probs, expert_index, gate, dgate, dprobs);
  const int64_t tokens = probs.dim(0);
  const int64_t experts = probs.dim(1);
  const int64_t k = expert_index.dim(1);
  // The CPU also checks that every expert index is in [0, E); that reads the contents, which here
  // live on the device, and a host copy would stall the stream on every backward pass. The indices
  // come from router_topk, so the GPU path skips that check (the kernel stays in bounds anyway).
  const float* pp = probs.device_data<float>();
  const int32_t* ip = expert_index.device_data<int32_t>();
  const float* dgp = dgate.device_data<float>();
  float* dpp = dprobs.device_data<float>();
  if (tokens == 0) return;
  launch("router_topk_backward_kernel", router_topk_backward_kernel, blocks_for(tokens, kTokensPerBlock),
      kTokensPerBlock * kWarpSize, 0, stream(), pp, probs.stride(0), tokens, static_cast<int>(experts),
      static_cast<int>(k), ip, expert_index.stride(0), dgp, dgate.stride(0), dpp, dprobs.stride(0), normalize_single);
}

}  // namespace ampipe::kernels::gpu
