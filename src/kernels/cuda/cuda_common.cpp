#include "kernels/cuda/cuda_common.h"

namespace ampipe::kernels::gpu {

cublasHandle_t cublas_handle() {
  // One handle per thread (cuBLAS handles are not meant to be shared across threads that enqueue
  // concurrently); kept for the thread's life.
  thread_local cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    AMPIPE_CUBLAS_CHECK(cublasCreate(&h));
    AMPIPE_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));
    return h;
  }();
  AMPIPE_CUBLAS_CHECK(cublasSetStream(handle, stream()));
  return handle;
}

}  // namespace ampipe::kernels::gpu
