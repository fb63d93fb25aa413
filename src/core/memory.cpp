#include "core/memory.h"

#include <malloc.h>

namespace ampipe {

void retain_freed_memory() {
  mallopt(M_MMAP_MAX, 0);                   // large blocks from the heap, not mmap
  mallopt(M_TRIM_THRESHOLD, 1 << 30);       // do not give the heap's top back below 1 GiB free
  mallopt(M_TOP_PAD, 64 << 20);             // grow the heap in 64 MiB steps
}

}  // namespace ampipe
