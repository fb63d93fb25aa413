// The emulated cuBLAS: cublasSgemm and cublasGemmEx (float32 or bf16 inputs) on OpenBLAS, queued on the
// handle's stream (docs/GPU.md, "The emulator").
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "include/cublas_v2.h"

namespace ampipe_gpu_emulator {
struct BlasHandle {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};
}  // namespace ampipe_gpu_emulator

using ampipe_gpu_emulator::BlasHandle;

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  *handle = new BlasHandle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}
// Every mode computes in float32 here: OpenBLAS has no TF32 (docs/GPU.md: the emulator has no tensor cores).
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode < CUBLAS_DEFAULT_MATH || mode > CUBLAS_TF32_TENSOR_OP_MATH) return CUBLAS_STATUS_INVALID_VALUE;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
  }
  return "unknown status";
}

namespace {

// A column-major rows x cols bf16 matrix with leading dimension ld, widened to float32 (exact).
std::vector<float> widen_bf16(const void* matrix, int rows, int cols, int ld) {
  std::vector<float> out(static_cast<size_t>(rows) * static_cast<size_t>(cols));
  const auto* bits = static_cast<const uint16_t*>(matrix);
  for (int j = 0; j < cols; ++j) {
    for (int i = 0; i < rows; ++i) {
      const uint32_t w = static_cast<uint32_t>(bits[i + static_cast<int64_t>(j) * ld]) << 16;
      std::memcpy(&out[i + static_cast<size_t>(j) * rows], &w, sizeof(w));
    }
  }
  return out;
}

// cublasSgemm and cublasGemmEx: C = alpha op(A) op(B) + beta C in float32, A and B float32 or (bf16)
// bf16 widened exactly on the stream, computed by OpenBLAS on the handle's stream.
cublasStatus_t gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                    int k, const float* alpha, const void* A, int lda, const void* B, int ldb,
                    const float* beta, float* C, int ldc, bool bf16, const char* name) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const auto valid_op = [](cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; };
  // cuBLAS's argument checks: A is m x k (k x m transposed), B is k x n (n x k), C is m x n.
  const int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
  const int a_cols = transa == CUBLAS_OP_N ? k : m, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) ||
      ldb < std::max(1, b_rows) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const bool device_scalars = handle->pointer_mode == CUBLAS_POINTER_MODE_DEVICE;
  const float a_host = device_scalars ? 0.0f : *alpha, b_host = device_scalars ? 0.0f : *beta;
  const CBLAS_TRANSPOSE ta = transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
  const CBLAS_TRANSPOSE tb = transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
  ampipe_gpu_emulator::enqueue(
      handle->stream,
      [=] {
        const float a = device_scalars ? *alpha : a_host, b = device_scalars ? *beta : b_host;
        if (k == 0) {  // C = beta C (BLAS leaves A and B unread)
          for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i)
              C[i + static_cast<int64_t>(j) * ldc] =
                  b == 0.0f ? 0.0f : b * C[i + static_cast<int64_t>(j) * ldc];
          return;
        }
        if (!bf16) {
          cblas_sgemm(CblasColMajor, ta, tb, m, n, k, a, static_cast<const float*>(A), lda,
                      static_cast<const float*>(B), ldb, b, C, ldc);
          return;
        }
        const std::vector<float> wa = widen_bf16(A, a_rows, a_cols, lda);
        const std::vector<float> wb = widen_bf16(B, b_rows, b_cols, ldb);
        cblas_sgemm(CblasColMajor, ta, tb, m, n, k, a, wa.data(), std::max(1, a_rows), wb.data(),
                    std::max(1, b_rows), b, C, ldc);
      },
      name);
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                           int n, int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, false, "cublasSgemm");
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                            int n, int k, const void* alpha, const void* A, cudaDataType_t Atype, int lda,
                            const void* B, cudaDataType_t Btype, int ldb, const void* beta, void* C,
                            cudaDataType_t Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool types = Atype == Btype && (Atype == CUDA_R_32F || Atype == CUDA_R_16BF) && Ctype == CUDA_R_32F;
  if (!types || (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC) ||
      algo != CUBLAS_GEMM_DEFAULT)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm(handle, transa, transb, m, n, k, static_cast<const float*>(alpha), A, lda, B, ldb,
              static_cast<const float*>(beta), static_cast<float*>(C), ldc, Atype == CUDA_R_16BF,
              "cublasGemmEx");
}
