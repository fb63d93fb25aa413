// Normalisation over the last dimension: LayerNorm (with affine weight and bias) and RMSNorm (weight
// only). Both accept row-strided views (column slices of a wider buffer) for x, y, dy and dx, and
// bfloat16 for them (elementwise.h, "bfloat16 operands": statistics and sums in float32/double).
#pragma once

#include "core/tensor.h"

namespace ampipe::kernels {

constexpr float kLayerNormEps = 1e-5f;

// y = (x - mean) * rstd * weight + bias, per row. x, y [R, C]; weight, bias [C];
// mean, rstd [R] are written for the backward pass (rstd = 1 / sqrt(var + eps), biased variance;
// statistics accumulated in double, stored as float).
void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y, Tensor mean,
                       Tensor rstd, float eps = kLayerNormEps);

// dx written; dweight and dbias accumulated (a fixed reduction order: the results do not depend on
// the thread count). Shapes as in the forward; eps is not needed (the saved rstd carries it).
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor dx, Tensor dweight, Tensor dbias);

// RMSNorm: y = x * rstd * weight per row, rstd = 1 / sqrt(mean(x^2) + eps) (float32 statistics:
// the mean of squares is accumulated in double, rstd stored as float). x, y [R, C] (row-strided
// views allowed, as for layernorm); weight [C]; rstd [R] written for the backward.
void rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor y, Tensor rstd, float eps);

// dx written; dweight accumulated (deterministic order, independent of the thread count). Shapes as
// in the forward. dx = rstd * (dy * w - xhat * mean(dy * w * xhat)), xhat = x * rstd;
// dweight += sum over rows of dy * xhat.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor dx,
                      Tensor dweight);

}  // namespace ampipe::kernels
