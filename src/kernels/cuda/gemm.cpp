// CUDA gemm (kernels/gemm.h) through cuBLAS, on the calling thread's stream and handle (pedantic
// float32: TF32 off; bf16 inputs through cublasGemmEx with float32 compute).
//
// cuBLAS is column-major. A row-major [r, c] matrix with row stride ld is, read column-major, its
// transpose [c, r] with leading dimension ld, so the row-major product C = op(A) op(B) is computed as
// the column-major C^T = op(B)^T op(A)^T: the operands swap places, keep their own transpose flags,
// and M and N swap. Every leading dimension is a row stride (>= the row's width, and >= 1).
#include "kernels/gemm.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::gpu {
namespace {

// cublasSgemm takes 32-bit sizes and leading dimensions.
int cublas_int(int64_t value, const char* what) {
  AMPIPE_CHECK(value <= INT_MAX) << "gemm on the GPU: " << what << " " << value
                                 << " exceeds cuBLAS's 32-bit limit " << INT_MAX;
  return static_cast<int>(value);
}

int leading_dimension(const Tensor& t, const char* what) {
  return cublas_int(std::max<int64_t>(t.stride(0), 1), what);
}

}  // namespace

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor c, float alpha,
          float beta) {
  const detail::GemmDims d = detail::check_gemm(a, transpose_a, b, transpose_b, c);
  if (d.m == 0 || d.n == 0) return;
  if (d.k == 0) {  // an empty sum: c = beta * c (c not read when beta == 0)
    if (beta == 0.0f)
      c.zero();
    else if (beta != 1.0f)
      gpu::scale_inplace(c, beta);
    return;
  }
  const int m = cublas_int(d.m, "M");
  const int n = cublas_int(d.n, "N");
  const int k = cublas_int(d.k, "K");
  const int lda = leading_dimension(a, "row stride of a");
  const int ldb = leading_dimension(b, "row stride of b");
  const int ldc = leading_dimension(c, "row stride of c");
  // alpha and beta are read from the host at the call (host pointer mode, set here in case other
  // code changed the shared handle); with beta == 0 cuBLAS does not read c, so NaN or uninitialised
  // memory there is overwritten.
  cublasHandle_t handle = cublas_handle();
  AMPIPE_CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
  if (a.dtype() == DType::BF16) {
    // bf16 inputs, float32 products and accumulation: tensor cores allowed (the handle's pedantic
    // mode, there for float32's sake, would force the pedantic compute type), then restored.
    AMPIPE_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    const cublasStatus_t status = cublasGemmEx(handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha,
                                     b.device_data<bf16>(), CUDA_R_16BF, ldb, a.device_data<bf16>(), CUDA_R_16BF,
                                     lda, &beta, c.device_data<float>(), CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
    AMPIPE_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH));
    AMPIPE_CUBLAS_CHECK(status);
    return;
  }
  AMPIPE_CUBLAS_CHECK(cublasSgemm(
      handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
      &alpha, b.device_data<float>(), ldb, a.device_data<float>(), lda, &beta, c.device_data<float>(), ldc));
}

}  // namespace ampipe::kernels::gpu
