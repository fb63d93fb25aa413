// The emulated device memory: allocations, copies and memsets queued on streams (docs/GPU.md,
// "The emulator").
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "runtime_internal.h"

namespace ampipe_gpu_emulator {
namespace {

size_t memory_limit_from_env() {
  const char* v = std::getenv("AMPIPE_GPU_EMULATOR_MEMORY_MB");
  const unsigned long long mb = v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : 16384ULL;
  return static_cast<size_t>(mb) << 20;
}

std::mutex g_memory_mutex;
std::map<uintptr_t, size_t>& allocations() {
  static auto* m = new std::map<uintptr_t, size_t>;
  return *m;
}
size_t g_allocated = 0;

bool device_range(const void* p, size_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  auto& m = allocations();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second;
}

// Checks a copy's direction against where its pointers are; a host source is staged now (CUDA's
// pageable-memory semantics: the caller may reuse it once the call returns).
cudaError_t check_kind(cudaMemcpyKind kind, bool dst_device, bool src_device) {
  switch (kind) {
    case cudaMemcpyHostToHost:
      return !dst_device && !src_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyHostToDevice:
      return dst_device && !src_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost:
      return !dst_device && src_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice:
      return dst_device && src_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDefault:
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool is_device_pointer(const void* p) { return device_range(p, 1); }

}  // namespace ampipe_gpu_emulator

using namespace ampipe_gpu_emulator;
using ampipe_gpu_emulator::detail::fail;
using ampipe_gpu_emulator::detail::push;
using ampipe_gpu_emulator::detail::resolve;

// ---- Memory --------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  *pointer = nullptr;
  if (detail::device_count() == 0) return fail(cudaErrorNoDevice);
  if (bytes == 0) return cudaSuccess;
  const size_t rounded = (bytes + 255) / 256 * 256;
  {
    std::lock_guard<std::mutex> lock(g_memory_mutex);
    static const size_t limit = memory_limit_from_env();
    if (g_allocated + rounded > limit) return fail(cudaErrorMemoryAllocation);
    g_allocated += rounded;
  }
  void* p = std::aligned_alloc(256, rounded);
  if (p == nullptr) {
    std::lock_guard<std::mutex> lock(g_memory_mutex);
    g_allocated -= rounded;
    return fail(cudaErrorMemoryAllocation);
  }
  std::memset(p, 0xff, rounded);  // fresh device memory reads as NaN, not as zeros
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  allocations()[reinterpret_cast<uintptr_t>(p)] = rounded;
  *pointer = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  if (pointer == nullptr) return cudaSuccess;
  const cudaError_t synced = cudaDeviceSynchronize();  // cudaFree waits for the device, as CUDA's does
  {
    std::lock_guard<std::mutex> lock(g_memory_mutex);
    auto it = allocations().find(reinterpret_cast<uintptr_t>(pointer));
    if (it == allocations().end()) return fail(cudaErrorInvalidValue);
    g_allocated -= it->second;
    allocations().erase(it);
  }
  std::free(pointer);
  return synced;
}

namespace {
cudaError_t copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                    size_t height, cudaMemcpyKind kind, cudaStream_t stream) {
  if (width == 0 || height == 0) return cudaSuccess;
  if (dst_pitch < width || src_pitch < width) return fail(cudaErrorInvalidValue);
  const size_t dst_span = dst_pitch * (height - 1) + width, src_span = src_pitch * (height - 1) + width;
  const bool dst_device = device_range(dst, dst_span), src_device = device_range(src, src_span);
  if (check_kind(kind, dst_device, src_device) != cudaSuccess) return fail(cudaErrorInvalidValue);
  Stream* s = resolve(stream);
  if (s == nullptr) return fail(cudaErrorNoDevice);
  auto* out = static_cast<unsigned char*>(dst);
  if (!src_device) {
    std::vector<unsigned char> staged(width * height);
    for (size_t r = 0; r < height; ++r)
      std::memcpy(&staged[r * width], static_cast<const unsigned char*>(src) + r * src_pitch, width);
    push(
        s,
        [out, dst_pitch, width, height, staged = std::move(staged)] {
          for (size_t r = 0; r < height; ++r) std::memcpy(out + r * dst_pitch, &staged[r * width], width);
        },
        "cudaMemcpyAsync");
  } else {
    auto* in = static_cast<const unsigned char*>(src);
    push(
        s,
        [=] {
          for (size_t r = 0; r < height; ++r) std::memmove(out + r * dst_pitch, in + r * src_pitch, width);
        },
        "cudaMemcpyAsync");
  }
  return cudaSuccess;
}

cudaError_t set_2d(void* dst, size_t pitch, int value, size_t width, size_t height, cudaStream_t stream) {
  if (width == 0 || height == 0) return cudaSuccess;
  if (pitch < width || !device_range(dst, pitch * (height - 1) + width)) return fail(cudaErrorInvalidValue);
  Stream* s = resolve(stream);
  if (s == nullptr) return fail(cudaErrorNoDevice);
  auto* out = static_cast<unsigned char*>(dst);
  push(
      s,
      [=] {
        for (size_t r = 0; r < height; ++r) std::memset(out + r * pitch, value, width);
      },
      "cudaMemsetAsync");
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return copy_2d(dst, bytes, src, bytes, bytes, 1, kind, stream);
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t stream) {
  return copy_2d(dst, dst_pitch, src, src_pitch, width, height, kind, stream);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
  if (e != cudaSuccess) return e;
  return cudaStreamSynchronize(nullptr);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  return set_2d(dst, bytes, value, bytes, 1, stream);
}
cudaError_t cudaMemset2DAsync(void* dst, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream) {
  return set_2d(dst, pitch, value, width, height, stream);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  const cudaError_t e = cudaMemsetAsync(dst, value, bytes, nullptr);
  if (e != cudaSuccess) return e;
  return cudaStreamSynchronize(nullptr);
}
