// The GPU emulator's CUDA runtime (docs/GPU.md, "The emulator"): what the CUDA backend uses of
// <cuda_runtime.h> and of CUDA C++'s device language, for the host C++ compiler. Only the
// -DAMPIPE_CUDA=EMULATE build puts this folder on the include path; a real CUDA build never sees it.
//
// Device code: __global__/__device__/__host__/__forceinline__/__launch_bounds__ compile away;
// __shared__ variables are per block (static thread_local: one block at a time per executing host
// thread); threadIdx, blockIdx, blockDim and gridDim read the running emulated thread's context.
// Kernels are launched through ampipe_gpu_emulator::launch (kernels/cuda/launch.cuh), never <<<>>>.
// The runtime half (streams, events, memory, errors) follows CUDA's contracts; where it cannot
// (timing, the memory model beyond barriers), docs/GPU.md says so.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "ampipe_gpu_emulator.h"

// ---- The device language -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define AMPIPE_DYNAMIC_SHARED(type, name) type* name = ::ampipe_gpu_emulator::dynamic_shared<type>()

#define threadIdx (::ampipe_gpu_emulator::current_thread().thread_idx)
#define blockIdx (::ampipe_gpu_emulator::current_thread().block_idx)
#define blockDim (::ampipe_gpu_emulator::current_thread().block_dim)
#define gridDim (::ampipe_gpu_emulator::current_thread().grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads(
    ampipe_gpu_emulator::SourceLocation where = ampipe_gpu_emulator::SourceLocation::current()) {
  ampipe_gpu_emulator::sync_threads(where);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, ampipe_gpu_emulator::SourceLocation where =
                                                        ampipe_gpu_emulator::SourceLocation::current()) {
  ampipe_gpu_emulator::sync_warp(mask, where);
}

#define AMPIPE_EMU_WHERE \
  ampipe_gpu_emulator::SourceLocation where = ampipe_gpu_emulator::SourceLocation::current()
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize, AMPIPE_EMU_WHERE) {
  return ampipe_gpu_emulator::shuffle(ampipe_gpu_emulator::ShuffleKind::Index, mask, v, src_lane, width,
                                      where);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize, AMPIPE_EMU_WHERE) {
  return ampipe_gpu_emulator::shuffle(ampipe_gpu_emulator::ShuffleKind::Xor, mask, v, lane_mask, width,
                                      where);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize, AMPIPE_EMU_WHERE) {
  return ampipe_gpu_emulator::shuffle(ampipe_gpu_emulator::ShuffleKind::Up, mask, v, static_cast<int>(delta),
                                      width, where);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize, AMPIPE_EMU_WHERE) {
  return ampipe_gpu_emulator::shuffle(ampipe_gpu_emulator::ShuffleKind::Down, mask, v,
                                      static_cast<int>(delta), width, where);
}
#undef AMPIPE_EMU_WHERE

// Atomics: atomic against every other emulated thread, on any stream (std::atomic_ref).
template <class T>
T atomicAdd(T* address, T value) {
  return ampipe_gpu_emulator::atomic_add(address, value);
}
template <class T>
T atomicMin(T* address, T value) {
  return ampipe_gpu_emulator::atomic_min(address, value);
}
template <class T>
T atomicMax(T* address, T value) {
  return ampipe_gpu_emulator::atomic_max(address, value);
}
template <class T>
T atomicExch(T* address, T value) {
  return ampipe_gpu_emulator::atomic_exchange(address, value);
}
template <class T>
T atomicCAS(T* address, T expected, T desired) {
  return ampipe_gpu_emulator::atomic_compare_exchange(address, expected, desired);
}

// Math: the emulated build compiles device code with -ffp-contract=off, so a*b is one rounded
// product, as the _rn intrinsics promise; fmaf is one fused rounding, as on the GPU.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
template <class T>
T __ldg(const T* p) {
  return *p;
}
// CUDA's integer min/max overloads of device code.
template <class T>
constexpr T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
constexpr T max(T a, T b) {
  return a < b ? b : a;
}

// ---- Vector types -------------------------------------------------------------------------------
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ---- The runtime API ----------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  cudaErrorNoDevice = 100,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

constexpr unsigned cudaStreamDefault = 0x0;
constexpr unsigned cudaStreamNonBlocking = 0x1;
constexpr unsigned cudaEventDefault = 0x0;
constexpr unsigned cudaEventBlockingSync = 0x1;
constexpr unsigned cudaEventDisableTiming = 0x2;

using cudaStream_t = ampipe_gpu_emulator::Stream*;
using cudaEvent_t = ampipe_gpu_emulator::Event*;

const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceSynchronize();
// Waits for the device and clears its sticky launch failure. Unlike CUDA's, it keeps allocations,
// streams and events (the emulator's tests use it to go on after a provoked failure).
cudaError_t cudaDeviceReset();
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value);
template <class... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

cudaError_t cudaMalloc(void** pointer, size_t bytes);
template <class T>
cudaError_t cudaMalloc(T** pointer, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(pointer), bytes);
}
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemset2DAsync(void* dst, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
