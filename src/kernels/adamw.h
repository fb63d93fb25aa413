// AdamW with decoupled weight decay (Loshchilov & Hutter), one parameter tensor at a time.
// Gradient clipping by global norm is done by the caller: sum_of_squares over all gradients
// (kernels/elementwise.h), then scale_inplace.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ampipe::kernels {

struct AdamWStep {
  float lr = 0;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0;  // decoupled: param -= lr * weight_decay * param
  int64_t step = 1;        // 1-based, for bias correction
};

// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mhat = m / (1-b1^t); vhat = v / (1-b2^t);
// param -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * param). All tensors same shape.
void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& hp);

}  // namespace ampipe::kernels
