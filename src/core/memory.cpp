#include "core/memory.h"

#include <malloc.h>

namespace ampipe {

void retain_freed_memory() {
  mallopt(M_ARENA_MAX, 1);                  // one heap for every thread (see memory.h)
  mallopt(M_MMAP_MAX, 0);                   // large blocks from the heap, not mmap
  mallopt(M_TRIM_THRESHOLD, -1);            // never give the heap's top back (-1 disables trimming)
  mallopt(M_TOP_PAD, 64 << 20);             // grow the heap in 64 MiB steps
}

}  // namespace ampipe
