#include "core/device_cache.h"

#include <bit>

#include "core/error.h"

namespace ampipe {

size_t device_size_class(size_t bytes) {
  constexpr size_t kMinClass = 512;
  if (bytes <= kMinClass) return kMinClass;
  const size_t step = std::max(kMinClass, std::bit_floor(bytes) >> 3);
  return (bytes + step - 1) / step * step;
}

DeviceCache::~DeviceCache() { empty(); }

void* DeviceCache::take_cached(size_t size_class, size_t* capacity) {
  // Blocks of the class asked for or up to a quarter larger (about two classes up), smallest first;
  // within a class the oldest release first, skipping blocks whose fence the device has not passed.
  const size_t limit = size_class + size_class / 4;
  for (auto it = free_.lower_bound(size_class); it != free_.end() && it->first <= limit; ++it) {
    auto& blocks = it->second;
    for (auto b = blocks.begin(); b != blocks.end(); ++b) {
      if (b->fence != 0 && !backend_.fence_passed(b->fence)) continue;
      void* p = b->p;
      *capacity = it->first;
      blocks.erase(b);
      if (blocks.empty()) free_.erase(it);
      stats_.cached_bytes -= *capacity;
      return p;
    }
  }
  return nullptr;
}

void* DeviceCache::allocate(size_t bytes, size_t* capacity) {
  const size_t size_class = device_size_class(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* p = take_cached(size_class, capacity);
  if (p != nullptr) {
    ++stats_.hits;
  } else {
    ++stats_.misses;
    p = backend_.allocate(size_class);
    if (p == nullptr) {
      const size_t cached = stats_.cached_bytes;
      empty_locked();
      p = backend_.allocate(size_class);
      AMPIPE_CHECK(p != nullptr) << "out of GPU memory allocating " << bytes << " bytes (size class " << size_class
                                 << "): " << stats_.in_use_bytes << " bytes in use by tensors, " << cached
                                 << " bytes were cached and have been returned to the device";
    }
    ++stats_.device_allocations;
    *capacity = size_class;
  }
  stats_.in_use_bytes += *capacity;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return p;
}

void DeviceCache::release(void* p, size_t capacity) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t fence = backend_.record_fence();
  stats_.in_use_bytes -= capacity;
  // The cache stays within the peak in use. Blocks of other sizes released longest ago make room
  // for the one just released (the likeliest to be asked for again); where only blocks of its own
  // size are cached, it goes back instead. Keeping every old block (as before) left a cache full of
  // a finished shape's blocks, and each block of the new shape went back to the device and was
  // allocated again every step (found under the GPU emulator:
  // CudaTensor.TheSteadyStateAllocatesNothingFromTheDevice after the other tensor tests).
  while (stats_.cached_bytes + capacity > stats_.peak_in_use_bytes && evict_oldest_locked(capacity)) {
  }
  if (stats_.cached_bytes + capacity > stats_.peak_in_use_bytes) {
    if (fence != 0) backend_.wait_fence(fence);
    backend_.free(p);
    ++stats_.device_frees;
    return;
  }
  free_[capacity].push_back({p, fence, next_serial_++});
  stats_.cached_bytes += capacity;
}

bool DeviceCache::evict_oldest_locked(size_t keep_class) {
  auto oldest = free_.end();
  for (auto it = free_.begin(); it != free_.end(); ++it) {  // each deque is in release order
    if (it->first == keep_class) continue;
    if (oldest == free_.end() || it->second.front().serial < oldest->second.front().serial) oldest = it;
  }
  if (oldest == free_.end()) return false;
  const Block b = oldest->second.front();
  if (b.fence != 0 && !backend_.fence_passed(b.fence)) backend_.wait_fence(b.fence);
  backend_.free(b.p);
  ++stats_.device_frees;
  stats_.cached_bytes -= oldest->first;
  oldest->second.pop_front();
  if (oldest->second.empty()) free_.erase(oldest);
  return true;
}

void DeviceCache::empty_locked() {
  for (auto& [capacity, blocks] : free_) {
    for (const Block& b : blocks) {
      if (b.fence != 0 && !backend_.fence_passed(b.fence)) backend_.wait_fence(b.fence);
      backend_.free(b.p);
      ++stats_.device_frees;
      stats_.cached_bytes -= capacity;
    }
  }
  free_.clear();
}

void DeviceCache::empty() {
  std::lock_guard<std::mutex> lock(mutex_);
  empty_locked();
}

DeviceCacheStats DeviceCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace ampipe
