#include <gtest/gtest.h>
#include <sys/resource.h>

#include <thread>
#include <vector>

#include "core/memory.h"
#include "core/tensor.h"

namespace ampipe {
namespace {

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// One "iteration": two threads (like the compute and comm streams) allocate, write and free
// activations of several sizes, some freed by the thread that did not allocate them.
int64_t iteration() {
  const std::vector<int64_t> sizes = {4 << 20, 10 << 20, 25 << 20};  // floats: 16, 40, 100 MB
  std::vector<Tensor> handed_over;
  int64_t written = 0;
  std::thread producer([&] {
    for (int64_t n : sizes) {
      Tensor t = Tensor::empty({n});
      t.fill(1.0f);
      handed_over.push_back(t);
      Tensor scratch = Tensor::empty({n / 2});
      scratch.fill(2.0f);
      written += n + n / 2;
    }
  });
  producer.join();
  std::thread consumer([&] {
    for (int64_t n : sizes) {
      Tensor t = Tensor::empty({n});
      t.fill(3.0f);
      written += n;
    }
    handed_over.clear();  // freed here, allocated by the producer
  });
  consumer.join();
  return written * 4;
}

TEST(Memory, FreedActivationsAreReusedWithoutFreshPageFaults) {
  retain_freed_memory();
  for (int i = 0; i < 6; ++i) iteration();  // the heap and the tensor cache grow to their peak
  const long before = minor_faults();
  int64_t bytes = 0;
  for (int i = 0; i < 6; ++i) bytes += iteration();
  const long faults = minor_faults() - before;
  const long pages = static_cast<long>(bytes / 4096);
  // Every page written lies in memory the process already holds; thread stacks and bookkeeping
  // fault a little. Without retaining, each iteration faults in every page again.
  EXPECT_LT(faults, pages / 20) << faults << " minor faults over " << pages << " pages written";
}

}  // namespace
}  // namespace ampipe
