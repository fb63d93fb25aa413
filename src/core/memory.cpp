#include "core/memory.h"

#include <unistd.h>

#include <cstdio>

#include <malloc.h>

namespace ampipe {

void retain_freed_memory() {
  mallopt(M_ARENA_MAX, 1);                  // one heap for every thread (see memory.h)
  mallopt(M_MMAP_MAX, 0);                   // large blocks from the heap, not mmap
  mallopt(M_TRIM_THRESHOLD, -1);            // never give the heap's top back (-1 disables trimming)
  mallopt(M_TOP_PAD, 64 << 20);             // grow the heap in 64 MiB steps
}

int64_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<int64_t>(resident) * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace ampipe
