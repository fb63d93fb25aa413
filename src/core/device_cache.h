// The caching logic of the device allocator, apart from CUDA so that it is tested on any machine
// (tests/core/test_device_cache.cpp drives it with a fake backend).
//
// A training step frees and reallocates the same activations every iteration; cudaMalloc and
// cudaFree synchronise the device and cost tens of microseconds to milliseconds, so none may run in
// the steady state. Freed blocks are kept by size class, as the host cache keeps large host blocks
// (core/host_cache.h), with one difference that GPUs force: a block is freed by the host while
// kernels enqueued earlier may still read it. So each released block carries a fence, recorded on
// every stream the backend knows at the moment of release, and is handed out again only once the
// device has passed that fence.
//
// Contract:
//  - allocate(bytes) returns a block of at least `bytes` bytes from the cache when one of the request's
//    size class or up to a quarter larger (about two classes up) is free and its fence has passed,
//    smallest first; else a block of the size class from the backend. *capacity is the block's size. When the backend is out of memory, the cache waits for every
//    pending fence, returns all cached blocks to the backend and tries once more; then it throws
//    ampipe::Error naming the request, the bytes in use and the bytes that were cached.
//  - release(p, capacity) takes a block back with a new fence. The cache keeps at most as many bytes
//    as the peak of bytes in use; a released block that would pass that bound goes back to the
//    backend once its fence has passed (the host waits for it).
//  - Size classes: the smallest multiple of max(512, 2^(floor(log2(bytes)) - 3)) that holds the
//    request (at most 1/8 more than asked, 512 bytes for small requests). Zero bytes ask for 512.
//  - Thread-safe (one mutex; the backend is called under it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>

#include "core/device.h"

namespace ampipe {

class DeviceCacheBackend {
 public:
  virtual ~DeviceCacheBackend() = default;
  virtual void* allocate(size_t bytes) = 0;  // nullptr when out of memory
  virtual void free(void* p) = 0;
  // A fence after all work enqueued so far on every known stream; 0 means "nothing to wait for".
  virtual uint64_t record_fence() = 0;
  // Whether the device has passed the fence (never blocks). A fence reported passed, or waited for,
  // is not asked about again, so the backend may recycle what it holds for it.
  virtual bool fence_passed(uint64_t fence) = 0;
  virtual void wait_fence(uint64_t fence) = 0;
};

size_t device_size_class(size_t bytes);

class DeviceCache {
 public:
  explicit DeviceCache(DeviceCacheBackend& backend) : backend_(backend) {}
  ~DeviceCache();  // returns every cached block to the backend (waiting for its fence)
  DeviceCache(const DeviceCache&) = delete;
  DeviceCache& operator=(const DeviceCache&) = delete;

  void* allocate(size_t bytes, size_t* capacity);
  void release(void* p, size_t capacity);
  // Returns every cached block to the backend (waiting for pending fences).
  void empty();
  DeviceCacheStats stats() const;

 private:
  struct Block {
    void* p;
    uint64_t fence;
    uint64_t serial;  // release order: the smallest was released longest ago
  };
  void* take_cached(size_t size_class, size_t* capacity);
  bool evict_oldest_locked(size_t keep_class);  // the oldest cached block of another class, if any
  void empty_locked();

  DeviceCacheBackend& backend_;
  mutable std::mutex mutex_;
  std::map<size_t, std::deque<Block>> free_;  // by capacity, oldest release first
  DeviceCacheStats stats_;
  uint64_t next_serial_ = 1;
};

}  // namespace ampipe
