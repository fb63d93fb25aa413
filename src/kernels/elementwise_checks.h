// Shape and argument checks of the dense kernels (kernels/gemm.h, kernels/elementwise.h,
// kernels/adamw.h), shared by the CPU and CUDA backends so that both accept and reject exactly the
// same calls with the same messages. Internal to kernels/. Each check throws ampipe::Error (through
// AMPIPE_CHECK) naming the kernel, the operand and the shape that was expected. They read shapes and
// scalars only, never tensor contents, so they run on the host for tensors on any device.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/adamw.h"

namespace ampipe::kernels::detail {

// gemm: a, b, c 2-D; op(a) [M, K], op(b) [K, N], c [M, N]. Returns the sizes.
struct GemmDims {
  int64_t m, n, k;
};
GemmDims check_gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& c);

void check_add_bias(const Tensor& y, const Tensor& bias);
void check_bias_backward(const Tensor& dy, const Tensor& dbias);
// convert: float32/bfloat16 operands of one shape (1-D or 2-D), each with a contiguous last
// dimension; returns them as rows x cols with each one's row stride (in elements).
struct ConvertLayout {
  int64_t rows, cols, src_stride, dst_stride;
};
ConvertLayout check_convert(const Tensor& src, const Tensor& dst);
void check_add_inplace(const Tensor& y, const Tensor& x);
void check_gelu_forward(const Tensor& x, const Tensor& y);
void check_gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx);
void check_swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out);
void check_swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, const Tensor& dgate,
                           const Tensor& dup);
void check_softmax_rows(const Tensor& x, const Tensor& y);
void check_softmax_rows_backward(const Tensor& y, const Tensor& dy, const Tensor& dx);

// adamw_update: grad, m, v shaped like param; step >= 1, beta1 and beta2 in [0, 1), eps >= 0.
void check_adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                        const AdamWStep& hp);

// The bias corrections 1 - beta1^t and 1 - beta2^t, computed in double (b^t underflows gracefully
// and 1 - b^t keeps its digits) and rounded to float once, as both backends use them.
struct AdamWCorrections {
  float correction1;
  float correction2;
};
AdamWCorrections adamw_corrections(const AdamWStep& hp);

}  // namespace ampipe::kernels::detail
