// MoE routing: top-k selection over router probabilities (shared/MODEL.md, "MoE layer").
#pragma once

#include "core/tensor.h"

namespace ampipe::kernels {

// For each token t, the k largest probs[t, e] (ties to the lower expert index), in descending
// order of probability, written to expert_index [T, k] (int32). gate [T, k] (written):
// k == 1 -> the probability itself; k > 1 -> probability / sum of the k selected.
// probs [T, E]; requires 1 <= k <= E.
void router_topk(const Tensor& probs, int k, Tensor expert_index, Tensor gate);

// Gradient of the gate with respect to the probabilities: dprobs [T, E] written (zero for
// unselected experts). probs, expert_index and gate as produced by router_topk; dgate [T, k].
void router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate,
                          const Tensor& dgate, Tensor dprobs);

}  // namespace ampipe::kernels
