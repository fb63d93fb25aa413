// Dense matrix multiply on 2-D tensors: float32 (OpenBLAS on the CPU, cuBLAS on the GPU), or bf16
// inputs with float32 products, accumulation and output (oneDNN on the CPU, cublasGemmEx on the GPU).
//
// Conventions for every kernel header: inputs are `const Tensor&`; outputs are `Tensor` handles
// passed by value (a Tensor is a shared handle, so a view such as `out.rows(a, b)` can be passed
// and is written in place). Each function states whether an output is overwritten ("written") or
// added to ("accumulated"). Shapes are checked and a mismatch throws ampipe::Error.
#pragma once

#include <string>

#include "core/tensor.h"

namespace ampipe::kernels {

// c = alpha * op(a) @ op(b) + beta * c, where op(x) is x or x^T.
// op(a) is [M, K], op(b) is [K, N], c is [M, N]. Row strides are honoured (column-slice views
// allowed); beta == 0 overwrites c without reading it. a and b are both float32 or both bfloat16;
// c is float32 (a bfloat16 product is accumulated in float32, never rounded to bf16 on the way).
void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor c,
          float alpha = 1.0f, float beta = 0.0f);

// Sets the compute thread count for our kernels (core/parallel.h) and for BLAS together.
void set_kernel_threads(int n);

// What runs a bf16 GEMM on the CPU: oneDNN's implementation name ("brg:avx512_core_bf16", ...), or
// "openblas_sgemm(widened)" where oneDNN has no bf16 matmul on this CPU (kernels/cpu/gemm_bf16.h).
std::string cpu_bf16_gemm_implementation();

}  // namespace ampipe::kernels
