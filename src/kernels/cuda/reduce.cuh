// Block and warp reductions shared by the CUDA kernels (internal to kernels/cuda). Every one
// combines in a fixed pattern that depends only on blockDim, so results are identical run to run.
// Block reductions need blockDim.x a multiple of 32 (at most 1024), must be called by every thread
// of the block, give the result to every thread, and use `scratch` (32 values in shared memory).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace ampipe::kernels::gpu {

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly over the warp: every lane ends with the same value.
template <class T, class Combine>
__device__ __forceinline__ T warp_reduce(T v, Combine combine) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Warp butterflies, then the warp results by a second butterfly. Ends with a barrier, so
// back-to-back calls may share `scratch`.
template <class T, class Combine>
__device__ T block_reduce(T v, T* scratch, T identity, Combine combine) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  v = warp_reduce(v, combine);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  T total = lane < warps ? scratch[lane] : identity;
  total = warp_reduce(total, combine);
  __syncthreads();
  return total;
}

__device__ __forceinline__ double block_sum(double v, double* scratch) {
  return block_reduce(v, scratch, 0.0, SumOp{});
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce(v, scratch, -INFINITY, MaxOp{});
}

}  // namespace ampipe::kernels::gpu
