// The CUDA stream that the calling thread's kernels go to ("the current stream travels with the
// thread, not the signature"): a Stream worker that drives a CUDA stream makes it current, and every
// kernel and library call inside its tasks enqueues there. Threads that set none use the legacy
// default stream (0). Internal to the CUDA backend.
//
// Streams that run work while tensors are freed must be registered (register_cuda_stream): the
// device allocator records its fences on every registered stream and on stream 0. Create them
// non-blocking (cudaStreamNonBlocking), or the fence on stream 0 would order them against each other.
#pragma once

#include <cuda_runtime.h>

#include <vector>

namespace ampipe {

cudaStream_t current_cuda_stream();
void set_current_cuda_stream(cudaStream_t stream);

// Makes `stream` current for the lifetime of the guard, then restores the previous one.
class CudaStreamGuard {
 public:
  explicit CudaStreamGuard(cudaStream_t stream) : previous_(current_cuda_stream()) { set_current_cuda_stream(stream); }
  ~CudaStreamGuard() { set_current_cuda_stream(previous_); }
  CudaStreamGuard(const CudaStreamGuard&) = delete;
  CudaStreamGuard& operator=(const CudaStreamGuard&) = delete;

 private:
  cudaStream_t previous_;
};

// Streams the allocator fences (thread-safe). Unregister only after the stream's work is done.
void register_cuda_stream(cudaStream_t stream);
void unregister_cuda_stream(cudaStream_t stream);
std::vector<cudaStream_t> registered_cuda_streams();  // stream 0 first, then the registered ones

}  // namespace ampipe
