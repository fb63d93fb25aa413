#include "core/host_cache.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

namespace ampipe {

namespace {

struct Cache {
  std::mutex mutex;
  std::map<size_t, std::vector<void*>> free_blocks;  // size class -> cached blocks
  HostCacheStats stats;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be released during static teardown
  return *c;
}

void* system_allocate(size_t bytes) { return std::aligned_alloc(64, bytes); }

}  // namespace

size_t host_size_class(size_t bytes) {
  const int log2 = std::bit_width(bytes) - 1;
  const size_t step = size_t(1) << (log2 >= 3 ? log2 - 3 : 0);
  return (bytes + step - 1) / step * step;
}

void* host_allocate(size_t bytes, size_t* capacity) {
  bytes = (bytes + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  if (bytes < kHostCacheMinBytes) {
    *capacity = bytes;
    return system_allocate(bytes);
  }
  const size_t wanted = host_size_class(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    // The wanted class, else the next two classes up.
    const size_t largest = host_size_class(host_size_class(wanted + 1) + 1);
    for (auto it = c.free_blocks.lower_bound(wanted); it != c.free_blocks.end() && it->first <= largest; ++it) {
      if (it->second.empty()) continue;
      void* p = it->second.back();
      it->second.pop_back();
      *capacity = it->first;
      c.stats.cached_bytes -= it->first;
      c.stats.in_use_bytes += it->first;
      c.stats.peak_in_use_bytes = std::max(c.stats.peak_in_use_bytes, c.stats.in_use_bytes);
      ++c.stats.hits;
      return p;
    }
    ++c.stats.misses;
  }
  void* p = system_allocate(wanted);
  if (p == nullptr) {
    host_cache_empty();  // give the cached blocks back and try once more
    p = system_allocate(wanted);
    if (p == nullptr) return nullptr;
  }
  *capacity = wanted;
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.in_use_bytes += wanted;
  c.stats.peak_in_use_bytes = std::max(c.stats.peak_in_use_bytes, c.stats.in_use_bytes);
  return p;
}

void host_release(void* p, size_t capacity) {
  if (p == nullptr) return;
  if (capacity < kHostCacheMinBytes) {
    std::free(p);
    return;
  }
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.stats.in_use_bytes -= capacity;
    if (c.stats.cached_bytes + capacity <= c.stats.peak_in_use_bytes) {
      c.free_blocks[capacity].push_back(p);
      c.stats.cached_bytes += capacity;
      return;
    }
  }
  std::free(p);
}

HostCacheStats host_cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

void host_cache_empty() {
  Cache& c = cache();
  std::vector<void*> blocks;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto& [size, list] : c.free_blocks) blocks.insert(blocks.end(), list.begin(), list.end());
    c.free_blocks.clear();
    c.stats.cached_bytes = 0;
  }
  for (void* p : blocks) std::free(p);
}

}  // namespace ampipe
