// Process-wide memory policy.
#pragma once

#include <cstdint>

namespace ampipe {

// Keeps freed tensor memory in the process for reuse instead of returning it to the OS: glibc
// malloc then serves every allocation from one heap shared by all threads (never a fresh mmap, no
// per-thread arenas) and never trims it.
// A training step frees and reallocates the same large activations every iteration; fresh pages
// fault in on first write (measured: writing a fresh 16-67 MB tensor ran at 3.3 GB/s against
// 11-17 GB/s for a reused one; sequential block forward + backward 8% faster at N=2048, d=256).
// One arena matters because stream workers allocate and free activations too: with glibc's
// per-thread arenas, memory freed on one thread went back to heaps that were then unmapped or
// grown afresh, and the sequential block at N=8192, d=512, k=2 faulted in ~900 MB per iteration on
// 2 ranks (5-10% of its time). tests/core/test_memory.cpp checks the steady state faults nothing.
// The cost: the resident size stays at the peak. Call once at start-up, before other threads run.
void retain_freed_memory();

// This process's resident memory in bytes (Linux: /proc/self/statm), or 0 where it cannot be read.
int64_t resident_bytes();

}  // namespace ampipe
