// core/parallel: thread count, the static partition of parallel_for, nesting, exceptions.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace ampipe {
namespace {

// Restores the thread count at the end of a test.
struct ThreadCountGuard {
  int saved = num_threads();
  ~ThreadCountGuard() { set_num_threads(saved); }
};

// The ranges parallel_for hands out, sorted.
std::vector<std::pair<int64_t, int64_t>> ranges_of(int64_t n, int64_t grain) {
  std::mutex m;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(m);
    ranges.emplace_back(b, e);
  });
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

TEST(Parallel, SetAndReadThreadCount) {
  ThreadCountGuard guard;
  set_num_threads(3);
  EXPECT_EQ(num_threads(), 3);
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  EXPECT_THROW(set_num_threads(0), Error);
  EXPECT_THROW(set_num_threads(-2), Error);
  EXPECT_EQ(num_threads(), 1);
  EXPECT_GE(available_cores(), 1);
}

// OpenMP keeps the count per thread: another thread adopts the process's count (and so does BLAS,
// whose OpenMP build reads omp_get_max_threads of the calling thread).
TEST(Parallel, AnotherThreadAdoptsTheCount) {
  ThreadCountGuard guard;
  set_num_threads(3);
  int seen = 0;
  std::thread worker([&] {
    adopt_num_threads();
    seen = omp_get_max_threads();
  });
  worker.join();
  EXPECT_EQ(seen, 3);
}

TEST(Parallel, CoversTheRangeExactlyOnceInContiguousStaticRanges) {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 3, 5}) {
    set_num_threads(threads);
    for (int64_t n : {1, 2, 7, 100, 1001}) {
      const auto ranges = ranges_of(n, 1);
      ASSERT_FALSE(ranges.empty());
      EXPECT_LE(static_cast<int64_t>(ranges.size()), std::min<int64_t>(threads, n));
      EXPECT_EQ(ranges.front().first, 0);
      EXPECT_EQ(ranges.back().second, n);
      for (size_t i = 0; i < ranges.size(); ++i) {
        EXPECT_LT(ranges[i].first, ranges[i].second) << "empty range";
        if (i > 0) {
          EXPECT_EQ(ranges[i].first, ranges[i - 1].second) << "gap or overlap";
        }
      }
      // Static: the same partition every time.
      EXPECT_EQ(ranges_of(n, 1), ranges) << threads << " threads, n " << n;
    }
  }
}

TEST(Parallel, RespectsTheGrain) {
  ThreadCountGuard guard;
  set_num_threads(4);
  // 10 items, grain 4: min(4 threads, ceil(10 / 4)) = 3 ranges.
  const auto ranges = ranges_of(10, 4);
  EXPECT_EQ(ranges.size(), 3u);
  // Fewer items than the grain: one range, run in the caller.
  const auto one = ranges_of(3, 100);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0], (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_TRUE(ranges_of(0, 1).empty());
  EXPECT_TRUE(ranges_of(-5, 1).empty());
}

TEST(Parallel, UsesSeveralThreads) {
  ThreadCountGuard guard;
  set_num_threads(3);
  std::mutex m;
  std::set<int> ids;
  parallel_for(3, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(m);
    ids.insert(omp_get_thread_num());
  });
  EXPECT_EQ(ids.size(), 3u);
}

TEST(Parallel, NestedCallsRunSeriallyInTheCallingThread) {
  ThreadCountGuard guard;
  set_num_threads(2);
  std::atomic<int64_t> sum{0};
  std::atomic<int> nested_ranges{0};
  parallel_for(2, 1, [&](int64_t, int64_t) {
    const int outer_thread = omp_get_thread_num();
    parallel_for(100, 1, [&](int64_t b, int64_t e) {
      ++nested_ranges;
      EXPECT_EQ(omp_get_thread_num(), outer_thread);
      EXPECT_EQ(b, 0);
      EXPECT_EQ(e, 100);
      for (int64_t i = b; i < e; ++i) sum += i;
    });
  });
  EXPECT_EQ(nested_ranges.load(), 2);
  EXPECT_EQ(sum.load(), 2 * 4950);
}

TEST(Parallel, RethrowsAnExceptionFromAWorker) {
  ThreadCountGuard guard;
  set_num_threads(3);
  std::atomic<int> ran{0};
  EXPECT_THROW(parallel_for(3, 1,
                            [&](int64_t b, int64_t) {
                              ++ran;
                              if (b > 0) throw std::runtime_error("boom");
                            }),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 3);  // the other ranges still ran
  // Serial path too.
  set_num_threads(1);
  EXPECT_THROW(parallel_for(5, 1, [](int64_t, int64_t) { throw std::runtime_error("serial"); }),
               std::runtime_error);
}

}  // namespace
}  // namespace ampipe
