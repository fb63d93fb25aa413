// MoE routing: top-k selection over router probabilities (docs/MODEL.md, "MoE layer").
#pragma once

#include "core/tensor.h"

namespace ampipe::kernels {

// For each token t, the k largest probs[t, e] (ties to the lower expert index), in descending
// order of probability, written to expert_index [T, k] (int32). gate [T, k] (written):
// k == 1 -> the probability itself (Switch), unless normalize_single; k > 1, or k == 1 with
// normalize_single (the Mixtral family's rule) -> probability / sum of the k selected.
// probs [T, E]; requires 1 <= k <= E.
void router_topk(const Tensor& probs, int k, Tensor expert_index, Tensor gate, bool normalize_single = false);

// Gradient of the gate with respect to the probabilities: dprobs [T, E] written (zero for
// unselected experts). probs, expert_index and gate as produced by router_topk (with the same
// normalize_single); dgate [T, k].
void router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate,
                          const Tensor& dgate, Tensor dprobs, bool normalize_single = false);

}  // namespace ampipe::kernels
