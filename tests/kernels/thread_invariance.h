// Checks that a kernel's results are bitwise identical across repeated runs and thread counts.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "core/parallel.h"
#include "kernels/gemm.h"

namespace ampipe::testing {

// Runs `compute` (which returns every output of the kernels under test, flattened into floats)
// twice at each of 1, 2 and 3 threads (kernels and BLAS together), and expects each repeat to match
// its first run bit for bit and, when `across_thread_counts`, every thread count to match 1 thread
// bit for bit. Restores the previous thread count.
inline void expect_bitwise_identical_runs(const std::function<std::vector<float>()>& compute,
                                          bool across_thread_counts = true) {
  const int saved = num_threads();
  std::vector<float> one_thread;
  for (int threads : {1, 2, 3}) {
    kernels::set_kernel_threads(threads);
    const std::vector<float> first = compute();
    const std::vector<float> again = compute();
    ASSERT_EQ(first.size(), again.size());
    EXPECT_EQ(0, std::memcmp(first.data(), again.data(), first.size() * sizeof(float)))
        << "two runs at " << threads << " thread(s) differ";
    if (threads == 1) {
      one_thread = first;
    } else if (across_thread_counts) {
      ASSERT_EQ(first.size(), one_thread.size());
      EXPECT_EQ(0, std::memcmp(first.data(), one_thread.data(), first.size() * sizeof(float)))
          << threads << " threads differ from 1 thread";
    }
  }
  kernels::set_kernel_threads(saved);
}

// Appends t's values to `all`.
inline void append_values(std::vector<float>& all, const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  all.insert(all.end(), v.begin(), v.end());
}

}  // namespace ampipe::testing
