#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "core/host_cache.h"
#include "core/tensor.h"

namespace ampipe {
namespace {

constexpr size_t MB = size_t(1) << 20;

TEST(HostCache, SizeClassesWasteAtMostAnEighth) {
  for (size_t bytes : {MB, MB + 1, 3 * MB + 12345, 100 * MB + 7, (size_t(1) << 31) + 1}) {
    const size_t c = host_size_class(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_LE(double(c), double(bytes) * 1.125) << bytes;
    EXPECT_EQ(host_size_class(c), c) << "a class is its own class";
  }
}

TEST(HostCache, AFreedLargeBlockServesTheNextRequestOfItsClass) {
  host_cache_empty();
  size_t cap1 = 0, cap2 = 0;
  void* a = host_allocate(40 * MB, &cap1);
  ASSERT_NE(a, nullptr);
  EXPECT_GE(cap1, 40 * MB);
  std::memset(a, 1, 40 * MB);
  host_release(a, cap1);
  const HostCacheStats before = host_cache_stats();
  EXPECT_GE(before.cached_bytes, cap1);
  void* b = host_allocate(40 * MB - 4096, &cap2);  // same class
  EXPECT_EQ(b, a);
  EXPECT_EQ(cap2, cap1);
  EXPECT_EQ(host_cache_stats().hits, before.hits + 1);
  host_release(b, cap2);
  host_cache_empty();
  EXPECT_EQ(host_cache_stats().cached_bytes, 0u);
}

TEST(HostCache, ASlightlyLargerCachedBlockIsReusedButNotAMuchLargerOne) {
  host_cache_empty();
  size_t cap = 0, cap_small = 0, cap_tiny = 0;
  void* big = host_allocate(64 * MB, &cap);
  host_release(big, cap);
  void* p = host_allocate(56 * MB, &cap_small);  // two classes below 64 MB
  EXPECT_EQ(p, big);
  EXPECT_EQ(cap_small, cap) << "a reused block keeps its own class";
  host_release(p, cap_small);
  void* q = host_allocate(20 * MB, &cap_tiny);  // far below: not served from the 64 MB block
  EXPECT_NE(q, big);
  host_release(q, cap_tiny);
  host_cache_empty();
}

TEST(HostCache, SmallBlocksBypassTheCache) {
  host_cache_empty();
  const HostCacheStats before = host_cache_stats();
  size_t cap = 0;
  void* p = host_allocate(1000, &cap);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  EXPECT_EQ(cap, 1024u);
  host_release(p, cap);
  const HostCacheStats after = host_cache_stats();
  EXPECT_EQ(after.cached_bytes, 0u);
  EXPECT_EQ(after.hits + after.misses, before.hits + before.misses);
}

TEST(HostCache, CachedBytesNeverExceedThePeakInUse) {
  host_cache_empty();
  // Many distinct sizes released one after another: only up to the peak stays cached.
  std::vector<std::pair<void*, size_t>> blocks;
  for (int i = 0; i < 12; ++i) {
    size_t cap = 0;
    void* p = host_allocate((2 + 3 * i) * MB, &cap);
    host_release(p, cap);  // at most this one is ever in use
    const HostCacheStats s = host_cache_stats();
    EXPECT_LE(s.cached_bytes, s.peak_in_use_bytes);
  }
  host_cache_empty();
}

TEST(HostCache, TensorsFromManyThreadsKeepTheirContents) {
  host_cache_empty();
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &bad] {
      for (int it = 0; it < 20; ++it) {
        const int64_t n = (1 + (t + it) % 3) * 300000;  // 1.2-3.6 MB
        Tensor a = Tensor::empty({n});
        a.fill(float(t * 100 + it));
        Tensor b = Tensor::empty({n});
        b.fill(-1.0f);
        const float* x = a.data<float>();
        for (int64_t i = 0; i < n; i += 4099)
          if (x[i] != float(t * 100 + it)) ++bad[t];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(bad[t], 0) << "thread " << t;
  const HostCacheStats s = host_cache_stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_GT(s.hits, 0);
  host_cache_empty();
}

}  // namespace
}  // namespace ampipe
