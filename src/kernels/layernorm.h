// LayerNorm over the last dimension, eps 1e-5, with affine weight and bias.
#pragma once

#include "core/tensor.h"

namespace ampipe::kernels {

constexpr float kLayerNormEps = 1e-5f;

// y = (x - mean) * rstd * weight + bias, per row. x, y [R, C]; weight, bias [C];
// mean, rstd [R] are written for the backward pass (rstd = 1 / sqrt(var + eps), biased variance).
void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y, Tensor mean,
                       Tensor rstd);

// dx written; dweight and dbias accumulated (deterministic reduction order for a fixed thread
// count). Shapes as in the forward.
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor dx, Tensor dweight, Tensor dbias);

}  // namespace ampipe::kernels
