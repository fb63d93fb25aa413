// Softmax cross-entropy over a vocabulary, per token.
#pragma once

#include "core/tensor.h"

namespace ampipe::kernels {

// losses[t] = logsumexp(logits[t, :]) - logits[t, targets[t]] (written).
// logits [T, V] float; targets [T] int32 in [0, V) (checked); losses [T] float.
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor losses);

// dlogits[t, :] = scale * (softmax(logits[t, :]) - onehot(targets[t])) (written; may alias logits).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale, Tensor dlogits);

}  // namespace ampipe::kernels
