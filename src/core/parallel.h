// The process's one pool of compute threads (OpenMP underneath).
//
// Kernels split work with `parallel_for`; the partition is static, so for a fixed thread count
// every run computes the same floating-point results (training is reproducible bit for bit).
// Nested calls run serially inside the calling thread. BLAS is told the same count by
// kernels::set_kernel_threads, which is what the CLI calls.
#pragma once

#include <cstdint>
#include <functional>

namespace ampipe {

// Cores this process may run on (its CPU affinity mask), at least 1.
int available_cores();
// Sets / reads the number of compute threads used by parallel_for, for the whole process. OpenMP
// keeps the count per thread, so a thread that runs kernels but did not call set_num_threads (a
// stream's worker) calls adopt_num_threads() first; that also reaches BLAS, whose OpenMP build
// follows the calling thread's count.
void set_num_threads(int n);
void adopt_num_threads();
int num_threads();

// Calls fn(begin, end) over a static partition of [0, n) into at most num_threads() contiguous
// ranges of at least `grain` items each. Blocks until all ranges are done. An exception thrown by
// fn is rethrown in the caller (the first one, if several threads throw).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace ampipe
