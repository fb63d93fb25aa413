// The one way the CUDA kernels are launched (internal to kernels/cuda): every call site goes through
// launch(), so the real CUDA build (<<<>>>) and the GPU emulator (-DAMPIPE_CUDA=EMULATE,
// docs/GPU.md) share it. The launch is checked at once: a bad configuration throws ampipe::Error
// naming the kernel; errors while the kernel runs surface at the stream's next synchronising call.
//
//   launch("softmax_block_kernel", softmax_block_kernel, grid, threads, 0, stream(), xm, ym);
//
// Kernels that use dynamic shared memory declare it with AMPIPE_DYNAMIC_SHARED(type, name).
// For .cu files only (nvcc, or the emulated build): the host compiler of a CUDA build cannot read it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/cuda/cuda_check.h"

#ifndef AMPIPE_DYNAMIC_SHARED
#define AMPIPE_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace ampipe::kernels::gpu {

// Runs kernel(args...) over grid x block with `shared_bytes` of dynamic shared memory on `stream`.
// The arguments convert to the kernel's parameter types as in a call; `name` is the kernel as errors
// should show it.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args),
                "launch: the kernel takes a different number of arguments");
#if AMPIPE_GPU_EMULATOR
  ::ampipe_gpu_emulator::launch(
      name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream,
      [kernel, params = std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)] {
        std::apply(kernel, params);
      });
#else
  // clang-format would split the chevrons:
  // clang-format off
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
  ::ampipe::detail::check_launch(name, __FILE__, __LINE__);
}

}  // namespace ampipe::kernels::gpu
