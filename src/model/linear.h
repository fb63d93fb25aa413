// y = x @ W^T + b in PyTorch Linear layout (W is [out, in]), forward and backward.
#pragma once

#include "core/tensor.h"

namespace ampipe {

// x [T, in]; weight [out, in]; bias [out] or undefined; y [T, out] written.
void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y);

// dweight += dy^T x; dbias += column sums of dy (if defined); dx = dy @ W, written, or added when
// accumulate_dx (if dx is defined).
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor dx, Tensor dweight,
                     Tensor dbias, bool accumulate_dx = false);

}  // namespace ampipe
