// Helpers shared by the CUDA kernels (internal to kernels/cuda): the current stream, the calling
// thread's cuBLAS handle, launch geometry, and a float tensor seen as rows on the device.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda/context.h"
#include "core/cuda/cuda_check.h"
#include "core/tensor.h"

namespace ampipe::kernels::gpu {

// The calling thread's cuBLAS handle, bound to its current stream and in float32 mode: pedantic
// float32 math, TF32 off (the exactness tests compare against the CPU to 1e-5 relative).
cublasHandle_t cublas_handle();

inline cudaStream_t stream() { return current_cuda_stream(); }

// Blocks of `threads` threads covering n items (at least one block; capped at the grid limit).
inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (std::max<int64_t>(n, 1) + threads - 1) / threads;
  return static_cast<unsigned>(std::min<int64_t>(b, 2147483647));
}

// A float tensor seen as rows of its last dimension on the device (only 2-D tensors can have a row
// stride). Passed to kernels by value.
struct DeviceRows {
  float* data;
  int64_t rows;
  int64_t cols;
  int64_t stride;
};
inline DeviceRows device_rows(const Tensor& t) {
  const int64_t cols = t.ndim() == 0 ? 1 : t.shape().back();
  const int64_t rows = cols == 0 ? 0 : t.numel() / cols;
  const int64_t stride = t.ndim() == 2 ? t.stride(0) : cols;
  return {t.device_data<float>(), rows, cols, stride};
}

}  // namespace ampipe::kernels::gpu
