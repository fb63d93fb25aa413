// The device allocator's caching logic (core/device_cache.h) with a fake backend: host memory for
// device memory and fences that pass only when the test says so, so the stream-ordering rule (a
// released block is not handed out before the device has passed its fence) is checked on any machine.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "core/device_cache.h"
#include "core/error.h"

namespace ampipe {
namespace {

class FakeBackend : public DeviceCacheBackend {
 public:
  void* allocate(size_t bytes) override {
    if (live_bytes + bytes > limit) return nullptr;
    void* p = std::malloc(bytes);
    live.insert(p);
    sizes[p] = bytes;
    live_bytes += bytes;
    ++allocations;
    return p;
  }
  void free(void* p) override {
    ASSERT_TRUE(live.count(p)) << "free of a pointer the backend did not hand out";
    live.erase(p);
    live_bytes -= sizes[p];
    std::free(p);
    ++frees;
  }
  uint64_t record_fence() override { return ++last_fence; }
  bool fence_passed(uint64_t fence) override { return fence <= device_position; }
  void wait_fence(uint64_t fence) override {
    ++waits;
    device_position = std::max(device_position, fence);
  }

  size_t limit = size_t(1) << 40;
  size_t live_bytes = 0;
  std::set<void*> live;
  std::map<void*, size_t> sizes;
  uint64_t last_fence = 0;
  uint64_t device_position = 0;  // every fence <= this has passed
  int allocations = 0, frees = 0, waits = 0;
};

TEST(DeviceCache, SizeClassesRoundUpByAtMostAnEighth) {
  EXPECT_EQ(device_size_class(0), 512u);
  EXPECT_EQ(device_size_class(1), 512u);
  EXPECT_EQ(device_size_class(512), 512u);
  EXPECT_EQ(device_size_class(513), 1024u);
  for (size_t bytes : {size_t(1000), size_t(4097), size_t(1) << 20, (size_t(1) << 20) + 1, size_t(123456789)}) {
    const size_t c = device_size_class(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_LE(c, std::max<size_t>(512, bytes + bytes / 8 + 1)) << bytes;
    EXPECT_EQ(device_size_class(c), c) << "a class is its own class";
  }
}

TEST(DeviceCache, AReleasedBlockIsReusedOnlyAfterItsFencePassed) {
  FakeBackend backend;
  DeviceCache cache(backend);
  size_t cap = 0;
  void* a = cache.allocate(1 << 20, &cap);
  EXPECT_EQ(cap, size_t(1) << 20);
  cache.release(a, cap);  // fence 1, not yet passed
  size_t cap2 = 0;
  void* b = cache.allocate(1 << 20, &cap2);
  EXPECT_NE(a, b) << "a block still in use by the device was handed out again";
  EXPECT_EQ(backend.allocations, 2);
  backend.device_position = backend.last_fence;  // the device has passed both releases' fences
  cache.release(b, cap2);                        // fence 2: not passed
  size_t cap3 = 0;
  void* c = cache.allocate(1 << 20, &cap3);
  EXPECT_EQ(c, a) << "the block whose fence passed is reused, oldest first";
  EXPECT_EQ(backend.allocations, 2);
  const DeviceCacheStats s = cache.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 2);
  EXPECT_EQ(s.in_use_bytes, size_t(1) << 20);
  cache.release(c, cap3);
}

TEST(DeviceCache, ServesFromAtMostAQuarterLargerAndKeepsTheBlocksCapacity) {
  FakeBackend backend;
  DeviceCache cache(backend);
  size_t big = 0;
  void* p = cache.allocate(1200000, &big);
  cache.release(p, big);
  backend.device_position = backend.last_fence;
  size_t cap = 0;
  void* q = cache.allocate(1000000, &cap);  // class ~1 MB; the cached block is < 1/4 larger
  EXPECT_EQ(q, p);
  EXPECT_EQ(cap, big) << "the capacity returned is the block's, for release";
  cache.release(q, cap);
  backend.device_position = backend.last_fence;
  size_t small = 0;
  void* r = cache.allocate(100000, &small);  // far smaller: a fresh block, the big one stays cached
  EXPECT_NE(r, p);
  EXPECT_EQ(small, device_size_class(100000));
  cache.release(r, small);
}

TEST(DeviceCache, OutOfMemoryEmptiesTheCacheWaitingForFencesThenRetries) {
  FakeBackend backend;
  backend.limit = 3u << 20;
  DeviceCache cache(backend);
  size_t c1 = 0, c2 = 0;
  void* a = cache.allocate(1 << 20, &c1);
  void* b = cache.allocate(1 << 20, &c2);
  cache.release(a, c1);
  cache.release(b, c2);  // both cached, fences pending
  size_t c3 = 0;
  void* big = cache.allocate(2u << 20, &c3);  // needs the cached bytes back
  EXPECT_NE(big, nullptr);
  EXPECT_GE(backend.waits, 1) << "the cache must wait for pending fences before freeing";
  EXPECT_EQ(backend.frees, 2);
  EXPECT_EQ(cache.stats().cached_bytes, 0u);
  size_t c4 = 0;
  try {
    cache.allocate(2u << 20, &c4);
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("out of GPU memory allocating 2097152 bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("in use"), std::string::npos) << msg;
  }
  cache.release(big, c3);
}

TEST(DeviceCache, HoldsNoMoreThanThePeakInUse) {
  FakeBackend backend;
  DeviceCache cache(backend);
  std::vector<std::pair<void*, size_t>> blocks;
  for (int i = 0; i < 4; ++i) {
    size_t cap = 0;
    void* p = cache.allocate(1 << 20, &cap);
    blocks.push_back({p, cap});
  }
  for (auto [p, cap] : blocks) cache.release(p, cap);
  EXPECT_EQ(cache.stats().cached_bytes, 4u << 20) << "the peak was 4 MB: all four fit";
  // A steady state of 4 MB: allocating and releasing the same sizes again faults in nothing new.
  backend.device_position = backend.last_fence;
  blocks.clear();
  for (int i = 0; i < 4; ++i) {
    size_t cap = 0;
    void* p = cache.allocate(1 << 20, &cap);
    blocks.push_back({p, cap});
  }
  EXPECT_EQ(backend.allocations, 4);
  for (auto [p, cap] : blocks) cache.release(p, cap);
  // A different size now: the cache stays within the 4 MB peak by returning the blocks of other
  // sizes released longest ago (three of the 1 MB blocks), and keeps the new one.
  size_t cap = 0;
  void* odd = cache.allocate(3 << 20, &cap);
  const int frees_before = backend.frees;
  cache.release(odd, cap);
  EXPECT_LE(cache.stats().cached_bytes, cache.stats().peak_in_use_bytes);
  EXPECT_EQ(backend.frees, frees_before + 3) << "three 1 MB blocks make room for the 3 MB one";
  EXPECT_TRUE(backend.live.count(odd)) << "the block just released stays cached";
  EXPECT_EQ(cache.stats().cached_bytes, (3u << 20) + (1u << 20));
  cache.empty();
  EXPECT_EQ(cache.stats().cached_bytes, 0u);
  EXPECT_TRUE(backend.live.empty());
}

// After a shape change the new shape reaches a steady state with no device allocation, even though
// the cache was full of the old shape's blocks (they were kept, and the new blocks went back to the
// device every time, before the eviction of the oldest).
TEST(DeviceCache, AfterAShapeChangeTheNewShapeAllocatesNothingInSteadyState) {
  FakeBackend backend;
  DeviceCache cache(backend);
  std::vector<std::pair<void*, size_t>> old_shape;
  for (int i = 0; i < 8; ++i) {  // peak 8 x 256 KB = 2 MB, all cached on release
    size_t cap = 0;
    void* p = cache.allocate(256 << 10, &cap);
    old_shape.push_back({p, cap});
  }
  for (auto [p, cap] : old_shape) cache.release(p, cap);
  backend.device_position = backend.last_fence;
  auto round = [&] {  // the new shape: one 1.5 MB block at a time
    size_t cap = 0;
    void* p = cache.allocate(3 << 19, &cap);
    cache.release(p, cap);
    backend.device_position = backend.last_fence;
  };
  round();
  round();
  const int allocations = backend.allocations;
  for (int i = 0; i < 5; ++i) round();
  EXPECT_EQ(backend.allocations, allocations) << "the new shape's block went back to the device each round";
  EXPECT_LE(cache.stats().cached_bytes, cache.stats().peak_in_use_bytes);
}

}  // namespace
}  // namespace ampipe
