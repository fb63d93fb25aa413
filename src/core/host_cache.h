// Caching allocator for host tensor storage.
//
// Training frees and reallocates the same large activations every iteration. Handed back to
// malloc, blocks of tens to hundreds of MB fragment its heap: the heap keeps growing, and fresh
// pages fault in while a stage writes them (measured: the sequential block at N=8192, d=1024 on one
// rank spent 9% more in the expert FFN and 10x more in the combine stage than the same work cut
// into 4 chunks, until large blocks were cached here). Freed large blocks are kept, by size
// class, for the next request of that class, the way CUDA caching allocators keep device memory.
//
// Contract:
//  - host_allocate(bytes) returns storage of at least `bytes` bytes, 64-byte aligned, and sets
//    *capacity to the bytes actually reserved; host_release(p, capacity) takes it back (the same
//    capacity). Thread-safe. Throws nothing; returns nullptr when the system is out of memory.
//  - Requests below kHostCacheMinBytes go straight to malloc and free.
//  - Larger ones are rounded up to a size class (at most 1/8 more than asked) and served from the
//    cache: the same class, else one of the next two classes up (at most ~1/4 more), else malloc.
//  - The cache holds at most as many bytes as the peak of bytes in use through it, so the process
//    never holds more than twice its peak; a released block that would pass that goes back to malloc.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ampipe {

inline constexpr size_t kHostCacheMinBytes = size_t(1) << 20;

void* host_allocate(size_t bytes, size_t* capacity);
void host_release(void* p, size_t capacity);

// The size class of a request of `bytes` (>= kHostCacheMinBytes): the smallest multiple of
// 2^(floor(log2(bytes)) - 3) that holds it.
size_t host_size_class(size_t bytes);

struct HostCacheStats {
  size_t cached_bytes = 0;  // held for reuse
  size_t in_use_bytes = 0;  // handed out and not yet released (large blocks)
  size_t peak_in_use_bytes = 0;
  int64_t hits = 0, misses = 0;
};
HostCacheStats host_cache_stats();

// Frees every cached block (the peak and counters stay).
void host_cache_empty();

}  // namespace ampipe
