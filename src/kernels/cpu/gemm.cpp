#include "kernels/gemm.h"

#include <cblas.h>

#include "core/parallel.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::cpu {

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor c, float alpha,
          float beta) {
  const auto [m, n, ka] = detail::check_gemm(a, transpose_a, b, transpose_b, c);
  if (m == 0 || n == 0) return;
  if (a.dtype() == DType::BF16) {  // oneDNN, float32 accumulation (kernels/cpu/gemm_bf16.h)
    gemm_bf16(transpose_a, transpose_b, m, n, ka, alpha, a.data<bf16>(), std::max<int64_t>(a.stride(0), 1),
              b.data<bf16>(), std::max<int64_t>(b.stride(0), 1), beta, c.data<float>(),
              std::max<int64_t>(c.stride(0), 1));
    return;
  }
  if (ka == 0) {
    if (beta == 0.0f) c.zero();
    else if (beta != 1.0f) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c.data<float>()[i * c.stride(0) + j] *= beta;
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(ka), alpha, a.data<float>(),
              static_cast<blasint>(std::max<int64_t>(a.stride(0), 1)), b.data<float>(),
              static_cast<blasint>(std::max<int64_t>(b.stride(0), 1)), beta, c.data<float>(),
              static_cast<blasint>(std::max<int64_t>(c.stride(0), 1)));
}

}  // namespace ampipe::kernels::cpu

namespace ampipe::kernels {

std::string cpu_bf16_gemm_implementation() { return cpu::gemm_bf16_implementation(); }

void set_kernel_threads(int n) {
  set_num_threads(n);
  openblas_set_num_threads(n);
}

}  // namespace ampipe::kernels
