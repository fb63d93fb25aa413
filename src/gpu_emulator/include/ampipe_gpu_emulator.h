// The GPU emulator's own interface (docs/GPU.md, "The emulator"): how kernels are launched and run,
// and the device-side primitives behind cuda_runtime.h. Part of the -DAMPIPE_CUDA=EMULATE build only.
//
// Execution model. A launch is queued on its stream; each stream runs its queue in order on its own
// host thread. A launch runs every block of the grid, one block at a time, in an order shuffled from
// the seed. Inside a block every CUDA thread is a fiber with its own stack (registers and locals);
// between two barriers the fibers run one after another in an order shuffled per launch from
// AMPIPE_GPU_EMULATOR_SEED (or set_seed): per block, uniformly at random or warp by warp in a random
// priority order. So a missing __syncthreads or a read of shared memory before another thread wrote
// it gives a wrong result. Barriers and warp operations are checked: a block
// whose threads wait at different __syncthreads, or exit while others wait, and a shuffle whose mask
// names a lane that does not arrive, are launch failures that name the kernel, block and threads;
// the stream reports them at its next synchronising call (cudaErrorLaunchFailure).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <type_traits>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace ampipe_gpu_emulator {

using SourceLocation = std::source_location;
struct Stream;  // cudaStream_t points to one (nullptr: the current device's legacy default stream)
struct Event;   // cudaEvent_t
class Block;

// What the running emulated thread sees. Valid only inside a kernel.
struct ThreadContext {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  Block* block;
  unsigned linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
};
// The running emulated thread (a kernel's device code only; anywhere else is a programming error).
ThreadContext& current_thread();

// ---- Launching -----------------------------------------------------------------------------------
using KernelBody = std::function<void()>;  // runs the kernel for current_thread()
// Queues `body` over grid x block on `stream`. A bad configuration (an empty grid or block, more than
// 1024 threads, grid.y/z over 65535, dynamic shared memory over the kernel's allowance) queues
// nothing and becomes the calling thread's last error (cudaGetLastError), as in CUDA.
void launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            Stream* stream, KernelBody body);

// Runs `work` on `stream` after everything queued there before (the libraries' calls use it).
// An exception thrown by `work` is the stream's error, reported at its next synchronising call.
void enqueue(Stream* stream, std::function<void()> work, const char* what);

// The seed of the thread and block orders (default: AMPIPE_GPU_EMULATOR_SEED, else 1). A launch's
// orders follow the seed, its stream's creation index and how many launches that stream has queued
// since the seed was set, never timing. Launches already queued keep the orders they were given.
void set_seed(uint64_t seed);
uint64_t seed();

// True where `p` lies inside a block returned by cudaMalloc (and not freed).
bool is_device_pointer(const void* p);

// ---- Device-side primitives (behind cuda_runtime.h) ---------------------------------------------
void sync_threads(SourceLocation where);
void sync_warp(unsigned mask, SourceLocation where);
enum class ShuffleKind { Index, Xor, Up, Down };
// The lane's value after a shuffle; `bits` are the 8 raw bytes of every lane's value.
uint64_t shuffle_bits(ShuffleKind kind, unsigned mask, uint64_t bits, int lane_arg, int width,
                      SourceLocation where);
void* dynamic_shared_memory();

template <class T>
T shuffle(ShuffleKind kind, unsigned mask, T v, int lane_arg, int width, SourceLocation where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle_bits(kind, mask, bits, lane_arg, width, where);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <class T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_memory());
}

template <class T>
T atomic_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <class T>
T atomic_min(T* address, T value) {
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (value < old && !a.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <class T>
T atomic_max(T* address, T value) {
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (old < value && !a.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <class T>
T atomic_exchange(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <class T>
T atomic_compare_exchange(T* address, T expected, T desired) {
  std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
  return expected;
}

}  // namespace ampipe_gpu_emulator
