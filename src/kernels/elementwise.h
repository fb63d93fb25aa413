// Row-wise and element-wise kernels on float tensors shaped [rows, cols].
//
// bfloat16 operands (--bf16): add_inplace, gelu/swiglu forward and backward here, and the norms
// (layernorm.h), rope (rope.h), permute/unpermute (permute.h) and attention (attention.h) also take
// bfloat16 tensors for their activation operands (weights, biases, statistics, gates and lse stay
// float32). They compute in float32: a bf16 input is widened exactly, a bf16 output is rounded once
// (to nearest even) from the float32 result, an accumulated bf16 operand is widened, updated and
// rounded. So the result is, bit for bit, the float32 kernel's on the widened inputs, rounded where
// the output is bf16, on every device; accumulation and statistics never run in bf16. (On a CPU
// without bf16 arithmetic this saves memory, not time: the widening is an extra pass.)
#pragma once

#include "core/tensor.h"

namespace ampipe::kernels {

// y[r, :] += bias[:] for every row. y [R, C], bias [C].
void add_bias(Tensor y, const Tensor& bias);
// dbias[:] += sum over rows of dy[r, :] (accumulated; deterministic order). dy [R, C], dbias [C].
void bias_backward(const Tensor& dy, Tensor dbias);
// y += x (same shape).
void add_inplace(Tensor y, const Tensor& x);
// x *= s.
void scale_inplace(Tensor x, float s);
// dst = src in dst's dtype: float32 -> bfloat16 rounds to nearest even (core/bf16.h's rule, bit for
// bit the same on every device), bfloat16 -> float32 is exact, the same dtype copies. src and dst
// [R, C] (or 1-D), the same shape; row-strided views allowed; dst written (may not alias src).
void convert(const Tensor& src, Tensor dst);
// x itself when it already has `dtype`, else a new tensor of x's shape on x's device holding x
// converted as above (convert's shapes: [R, C] or 1-D).
Tensor as_dtype(const Tensor& x, DType dtype);

// y = gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). x, y [R, C]; y written.
void gelu_forward(const Tensor& x, Tensor y);
// dx = dy * gelu_tanh'(x) (written). x, dy, dx [R, C].
void gelu_backward(const Tensor& x, const Tensor& dy, Tensor dx);

// SwiGLU: out = silu(gate) * up, silu(z) = z / (1 + exp(-z)). gate, up, out [R, C] (row-strided
// views allowed); out written (may not alias gate or up).
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor out);
// dgate = dout * up * silu'(gate), dup = dout * silu(gate) (both written; may alias neither input).
// silu'(z) = s (1 + z (1 - s)), s = sigmoid(z). All operands [R, C].
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor dgate, Tensor dup);

// Row softmax: y[r, :] = softmax(x[r, :]) (written). x, y [R, C].
void softmax_rows(const Tensor& x, Tensor y);
// Backward of softmax_rows given its output y: dx = y * (dy - sum(dy * y)) per row (written).
void softmax_rows_backward(const Tensor& y, const Tensor& dy, Tensor dx);

// Sum of squares of all elements, accumulated in double (for global-norm gradient clipping).
double sum_of_squares(const Tensor& x);

}  // namespace ampipe::kernels
