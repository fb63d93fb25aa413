// Errors from CUDA and its libraries become ampipe::Error naming the call, the library's error name
// and message, and the file and line of the call. Internal to the CUDA backend (includes CUDA
// headers); the rest of the engine sees only ampipe::Error.
//
//   AMPIPE_CUDA_CHECK(cudaMemcpyAsync(...));
//   launch("my_kernel", my_kernel, grid, block, 0, stream, ...);  // kernels/cuda/launch.cuh checks
//                                                                 // the launch (check_launch)
//
// Errors raised by a kernel while it runs surface at the next synchronising call, which names itself.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace ampipe::detail {
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t error, const char* file, int line);
[[noreturn]] void throw_cublas_error(const char* call, cublasStatus_t status, const char* file, int line);
// After a kernel launch: throws if the launch failed (cudaGetLastError), naming `kernel`.
void check_launch(const char* kernel, const char* file, int line);
}  // namespace ampipe::detail

#define AMPIPE_CUDA_CHECK(call)                                                          \
  do {                                                                                   \
    const cudaError_t ampipe_cuda_error_ = (call);                                       \
    if (ampipe_cuda_error_ != cudaSuccess)                                               \
      ::ampipe::detail::throw_cuda_error(#call, ampipe_cuda_error_, __FILE__, __LINE__); \
  } while (0)

#define AMPIPE_CUBLAS_CHECK(call)                                                             \
  do {                                                                                        \
    const cublasStatus_t ampipe_cublas_status_ = (call);                                      \
    if (ampipe_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                       \
      ::ampipe::detail::throw_cublas_error(#call, ampipe_cublas_status_, __FILE__, __LINE__); \
  } while (0)
