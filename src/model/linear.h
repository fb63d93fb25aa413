// y = x @ W^T + b in PyTorch Linear layout (W is [out, in]), forward and backward, in float32 or in
// mixed precision: where the weight is bf16 (a compute copy, model/parameters.h), x and dy are used
// in bf16 too (converted here unless they already are) and every GEMM accumulates in float32 into
// float32 outputs: y, dx and the float32 main gradient dweight.
#pragma once

#include "core/tensor.h"

namespace ampipe {

// x [T, in] (float32 or the weight's dtype); weight [out, in] (float32 or bf16); bias [out] float32
// or undefined; y [T, out] float32, written.
void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y);

// dweight (float32) += dy^T x; dbias += column sums of dy (if defined); dx (float32) = dy @ W,
// written, or added when accumulate_dx (if dx is defined). dy is float32; x and weight as above.
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor dx, Tensor dweight,
                     Tensor dbias, bool accumulate_dx = false);
// Its two halves (--delay-wgrad-compute): the input gradient dx, and the weight gradients dweight and
// dbias. The same kernels on the same operands: run both, in either order, and the bits are
// linear_backward's.
void linear_backward_input(const Tensor& weight, const Tensor& dy, Tensor dx, bool accumulate_dx = false);
void linear_backward_weight(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor dweight,
                            Tensor dbias);

}  // namespace ampipe
