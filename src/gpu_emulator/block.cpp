#include "block.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <boost/context/fiber.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <sstream>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define AMPIPE_EMU_TSAN 1
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
}
#else
#define AMPIPE_EMU_TSAN 0
#endif

namespace ampipe_gpu_emulator {
namespace {

namespace bctx = boost::context;

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
#if AMPIPE_EMU_TSAN
constexpr size_t kStackBytes = 1024 * 1024;  // TSan's instrumentation needs deeper stacks
#else
constexpr size_t kStackBytes = 256 * 1024;  // mapped lazily: a fiber touches only what it uses
#endif

// SplitMix64: small, fast, and good enough to shuffle orders.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
};

// Fiber stacks of one host thread, reused across blocks and launches; a guard page below each.
class StackPool {
 public:
  ~StackPool() {
    for (void* base : free_) munmap(base, kStackBytes + page());
  }
  bctx::stack_context allocate() {
    void* base = nullptr;
    if (!free_.empty()) {
      base = free_.back();
      free_.pop_back();
    } else {
      base = mmap(nullptr, kStackBytes + page(), PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) throw std::bad_alloc();
      mprotect(base, page(), PROT_NONE);  // a stack overflow faults instead of corrupting memory
    }
    bctx::stack_context sc;
    sc.size = kStackBytes;
    sc.sp = static_cast<char*>(base) + page() + kStackBytes;
    return sc;
  }
  void deallocate(bctx::stack_context& sc) {
    free_.push_back(static_cast<char*>(sc.sp) - kStackBytes - page());
  }

 private:
  static size_t page() {
    static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return p;
  }
  std::vector<void*> free_;
};

#if AMPIPE_EMU_TSAN
// ThreadSanitizer's fiber contexts of one host thread, reused: creating one per emulated thread
// costs TSan a thread state each (millions per test). Reuse orders successive emulated threads,
// which run one after another anyway; what TSan checks here is the host threads and streams.
std::vector<void*>& tsan_fiber_pool() {
  thread_local std::vector<void*> pool;
  return pool;
}
#endif

StackPool& stack_pool() {
  thread_local StackPool pool;
  return pool;
}

struct PoolAllocator {
  bctx::stack_context allocate() { return stack_pool().allocate(); }
  void deallocate(bctx::stack_context& sc) noexcept { stack_pool().deallocate(sc); }
};

enum class State { Ready, AtBarrier, AtWarpOp, Done };

std::string where_text(const SourceLocation& w) {
  std::string file = w.file_name();
  const size_t slash = file.find_last_of('/');
  if (slash != std::string::npos) file = file.substr(slash + 1);
  return file + ":" + std::to_string(w.line());
}

const char* shuffle_name(ShuffleKind kind) {
  switch (kind) {
    case ShuffleKind::Index:
      return "__shfl_sync";
    case ShuffleKind::Xor:
      return "__shfl_xor_sync";
    case ShuffleKind::Up:
      return "__shfl_up_sync";
    case ShuffleKind::Down:
      return "__shfl_down_sync";
  }
  return "?";
}

}  // namespace

// One block: its threads, their fibers, and the barriers between them.
class Block {
 public:
  struct Thread {
    ThreadContext ctx;
    State state = State::Ready;
    bool started = false;
    bctx::fiber fiber;  // the thread while suspended
    bctx::fiber sink;   // the scheduler while the thread runs
    SourceLocation where;
    // A warp operation in progress: __syncwarp (shuffle == false) or a shuffle.
    bool shuffle = false;
    ShuffleKind kind = ShuffleKind::Index;
    unsigned mask = 0;
    int lane_arg = 0;
    int width = 32;
    uint64_t value_in = 0, value_out = 0;
    void* tsan_fiber = nullptr;
  };

  Block(const LaunchSpec& launch, uint3 block_idx, Rng& rng, std::vector<unsigned char>& shared)
      : launch_(launch), rng_(rng), shared_(shared) {
    const dim3 b = launch.block;
    threads_.resize(static_cast<size_t>(b.x) * b.y * b.z);
    for (unsigned z = 0, i = 0; z < b.z; ++z)
      for (unsigned y = 0; y < b.y; ++y)
        for (unsigned x = 0; x < b.x; ++x, ++i) {
          Thread& t = threads_[i];
          t.ctx = ThreadContext{uint3{x, y, z}, block_idx, launch.block, launch.grid, this, i};
        }
    block_idx_ = block_idx;
  }

  ~Block() {
    // A failed block leaves fibers suspended: destroying one unwinds its stack (on that stack, so
    // ThreadSanitizer is told of both switches).
    for (Thread& t : threads_) {
      if (t.fiber) {
#if AMPIPE_EMU_TSAN
        __tsan_switch_to_fiber(t.tsan_fiber, 0);
#endif
        t.fiber = bctx::fiber();
#if AMPIPE_EMU_TSAN
        __tsan_switch_to_fiber(scheduler_tsan_fiber_, 0);
#endif
      }
#if AMPIPE_EMU_TSAN
      if (t.tsan_fiber) tsan_fiber_pool().push_back(t.tsan_fiber);
#endif
    }
  }

  void run();

  // Called from a thread's fiber.
  void* dynamic_shared() { return shared_.empty() ? nullptr : shared_.data(); }
  void wait_barrier(Thread& t, SourceLocation where) {
    t.state = State::AtBarrier;
    t.where = where;
    suspend(t);
  }
  uint64_t warp_op(Thread& t, bool shuffle, ShuffleKind kind, unsigned mask, uint64_t value, int lane_arg,
                   int width, SourceLocation where) {
    t.state = State::AtWarpOp;
    t.shuffle = shuffle;
    t.kind = kind;
    t.mask = mask;
    t.value_in = value;
    t.lane_arg = lane_arg;
    t.width = width;
    t.where = where;
    // The last lane of a group to arrive lets the group go: the other warps may still be behind, as
    // on a GPU (waiting for every thread of the block would make each warp operation a barrier).
    if (warp_group_complete(t.ctx.linear)) release_warp_group(t.ctx.linear);
    suspend(t);
    return t.value_out;
  }
  static Thread* running();

 private:
  void resume(Thread& t);
  void suspend(Thread& t);
  bool warp_group_complete(unsigned i) const;
  void release_warp_group(unsigned i);
  bool release_warp_ops();
  bool release_barrier();
  [[noreturn]] void fail(const std::string& what) const;
  std::string thread_list(const std::vector<unsigned>& ids) const;
  std::string describe(const Thread& t) const;
  std::string op_name(const Thread& t) const {
    return t.shuffle ? std::string(shuffle_name(t.kind)) : std::string("__syncwarp");
  }

  const LaunchSpec& launch_;
  Rng& rng_;
  std::vector<unsigned char>& shared_;
  uint3 block_idx_{};
  std::vector<Thread> threads_;
  // Threads able to run, by warp. Each block picks one of two orders from the seed: uniformly at
  // random over all runnable threads, or warps in a random priority order with the lanes of a warp
  // at random (the leading warp runs ahead as far as barriers allow, so a missing __syncthreads
  // between two warps shows even where warp operations sit between the write and the read).
  std::vector<std::vector<unsigned>> runnable_;
  size_t runnable_count_ = 0;
  bool warp_priority_ = false;
  std::vector<unsigned> warp_order_;  // warps, highest priority first
  void make_runnable(unsigned id) {
    runnable_[id / kWarp].push_back(id);
    ++runnable_count_;
  }
  unsigned take_runnable();
  std::exception_ptr error_;
  void* scheduler_tsan_fiber_ = nullptr;
};

namespace {
thread_local Block::Thread* t_running = nullptr;
}

Block::Thread* Block::running() { return t_running; }

void Block::resume(Thread& t) {
  t_running = &t;
  if (!t.started) {
    t.started = true;
#if AMPIPE_EMU_TSAN
    auto& pool = tsan_fiber_pool();
    if (pool.empty()) {
      t.tsan_fiber = __tsan_create_fiber(0);
    } else {
      t.tsan_fiber = pool.back();
      pool.pop_back();
    }
#endif
    t.fiber = bctx::fiber(std::allocator_arg, PoolAllocator{}, [this, &t](bctx::fiber&& sink) {
      t.sink = std::move(sink);
      try {
        launch_.body();
      } catch (const bctx::detail::forced_unwind&) {
        throw;
      } catch (...) {
        if (!error_) error_ = std::current_exception();
      }
      t.state = State::Done;
#if AMPIPE_EMU_TSAN
      __tsan_switch_to_fiber(scheduler_tsan_fiber_, 0);
#endif
      return std::move(t.sink);
    });
  }
#if AMPIPE_EMU_TSAN
  __tsan_switch_to_fiber(t.tsan_fiber, 0);
#endif
  t.fiber = std::move(t.fiber).resume();
  t_running = nullptr;
}

void Block::suspend(Thread& t) {
#if AMPIPE_EMU_TSAN
  __tsan_switch_to_fiber(scheduler_tsan_fiber_, 0);
#endif
  t.sink = std::move(t.sink).resume();
  t_running = &t;
}

unsigned Block::take_runnable() {
  std::vector<unsigned>* bucket = nullptr;
  if (warp_priority_) {
    for (unsigned w : warp_order_)
      if (!runnable_[w].empty()) {
        bucket = &runnable_[w];
        break;
      }
  } else {
    size_t r = rng_.below(runnable_count_);
    for (auto& b : runnable_) {
      if (r < b.size()) {
        bucket = &b;
        break;
      }
      r -= b.size();
    }
  }
  const size_t pick = rng_.below(bucket->size());
  const unsigned id = (*bucket)[pick];
  (*bucket)[pick] = bucket->back();
  bucket->pop_back();
  --runnable_count_;
  return id;
}

void Block::run() {
#if AMPIPE_EMU_TSAN
  scheduler_tsan_fiber_ = __tsan_get_current_fiber();
#endif
  const unsigned warps = static_cast<unsigned>((threads_.size() + kWarp - 1) / kWarp);
  runnable_.assign(warps, {});
  for (unsigned i = 0; i < threads_.size(); ++i) make_runnable(i);
  warp_priority_ = (rng_.next() & 1) != 0;
  warp_order_.resize(warps);
  for (unsigned w = 0; w < warps; ++w) warp_order_[w] = w;
  for (unsigned w = warps; w > 1; --w) std::swap(warp_order_[w - 1], warp_order_[rng_.below(w)]);
  for (;;) {
    while (runnable_count_ > 0) {
      const unsigned id = take_runnable();
      resume(threads_[id]);
      if (error_) std::rethrow_exception(error_);
    }
    if (release_warp_ops()) continue;
    if (release_barrier()) continue;
    break;
  }
}

// Whether every lane that thread i's mask names waits at the same warp operation with the same
// mask (and i's own lane and width are valid): then the group can go at once.
bool Block::warp_group_complete(unsigned i) const {
  const Thread& t = threads_[i];
  const unsigned lane = i % kWarp, base = i - lane;
  const unsigned lanes = std::min<unsigned>(kWarp, static_cast<unsigned>(threads_.size()) - base);
  if (!(t.mask >> lane & 1u)) return false;
  if (t.shuffle && (t.width < 1 || t.width > 32 || (t.width & (t.width - 1)) != 0)) return false;
  for (unsigned l = 0; l < kWarp; ++l) {
    if (!(t.mask >> l & 1u)) continue;
    if (l >= lanes) return false;
    const Thread& o = threads_[base + l];
    if (o.state != State::AtWarpOp || o.mask != t.mask || o.shuffle != t.shuffle || o.kind != t.kind)
      return false;
  }
  return true;
}

// Computes every lane's result of thread i's complete group and makes the lanes runnable.
void Block::release_warp_group(unsigned i) {
  const Thread& t = threads_[i];
  const unsigned base = i - i % kWarp;
  const unsigned mask = t.mask;
  for (unsigned l = 0; l < kWarp; ++l) {
    if (!(mask >> l & 1u)) continue;
    Thread& me = threads_[base + l];
    if (!me.shuffle) continue;
    const int w = me.width;
    const int segment = static_cast<int>(l) & ~(w - 1);
    int src = static_cast<int>(l);
    switch (me.kind) {
      case ShuffleKind::Index:
        src = segment + (me.lane_arg & (w - 1));
        break;
      case ShuffleKind::Xor: {
        const int x = static_cast<int>(l) ^ me.lane_arg;
        if (x >= segment && x < segment + w && x >= 0 && x < 32) src = x;
        break;
      }
      case ShuffleKind::Up:
        if (static_cast<int>(l) - segment >= me.lane_arg) src = static_cast<int>(l) - me.lane_arg;
        break;
      case ShuffleKind::Down:
        if (static_cast<int>(l) - segment + me.lane_arg < w) src = static_cast<int>(l) + me.lane_arg;
        break;
    }
    if (!(mask >> src & 1u)) {
      std::ostringstream os;
      os << op_name(me) << " at " << where_text(me.where) << ": lane " << l << " reads lane " << src
         << ", which mask 0x" << std::hex << mask << " leaves out (undefined in CUDA)";
      fail(os.str());
    }
    me.value_out = threads_[base + src].value_in;
  }
  for (unsigned l = 0; l < kWarp; ++l) {
    if (!(mask >> l & 1u)) continue;
    threads_[base + l].state = State::Ready;
    make_runnable(base + l);
  }
}

// With no thread able to run: a warp operation still waiting has a lane that will never arrive, or
// is malformed. Fail naming it (complete groups went when their last lane arrived).
bool Block::release_warp_ops() {
  bool released = false;
  for (unsigned i = 0; i < threads_.size(); ++i) {
    Thread& t = threads_[i];
    if (t.state != State::AtWarpOp) continue;
    if (warp_group_complete(i)) {
      release_warp_group(i);
      released = true;
      continue;
    }
    const unsigned warp = i / kWarp, lane = i % kWarp, base = warp * kWarp;
    const unsigned lanes = std::min<unsigned>(kWarp, static_cast<unsigned>(threads_.size()) - base);
    std::ostringstream os;
    if (!(t.mask >> lane & 1u)) {
      os << op_name(t) << " at " << where_text(t.where) << ": thread " << i << " (lane " << lane
         << ") calls it with mask 0x" << std::hex << t.mask << ", which does not name its own lane";
      fail(os.str());
    }
    if (t.shuffle && (t.width < 1 || t.width > 32 || (t.width & (t.width - 1)) != 0)) {
      os << op_name(t) << " at " << where_text(t.where) << ": width " << t.width
         << " is not a power of two in [1, 32]";
      fail(os.str());
    }
    for (unsigned l = 0; l < kWarp; ++l) {
      if (!(t.mask >> l & 1u)) continue;
      if (l >= lanes) {
        os << op_name(t) << " at " << where_text(t.where) << ": mask 0x" << std::hex << t.mask << std::dec
           << " names lane " << l << " of warp " << warp << ", which has only " << lanes << " threads";
        fail(os.str());
      }
      const Thread& o = threads_[base + l];
      if (o.state != State::AtWarpOp || o.mask != t.mask || o.shuffle != t.shuffle || o.kind != t.kind) {
        os << op_name(t) << " at " << where_text(t.where) << " with mask 0x" << std::hex << t.mask << std::dec
           << " (thread " << i << "): lane " << l << " (thread " << base + l << ") does not arrive: it "
           << describe(o);
        fail(os.str());
      }
    }
  }
  return released;
}

// All threads at one __syncthreads: release them. Anything else with no thread able to run is a
// kernel that hangs or is undefined on a GPU: fail naming who waits where.
bool Block::release_barrier() {
  std::map<std::pair<std::string, unsigned>, std::vector<unsigned>> barriers;
  std::vector<unsigned> done, warp_waiters;
  for (unsigned i = 0; i < threads_.size(); ++i) {
    const Thread& t = threads_[i];
    if (t.state == State::Done) done.push_back(i);
    if (t.state == State::AtBarrier) barriers[{where_text(t.where), t.where.line()}].push_back(i);
    if (t.state == State::AtWarpOp) warp_waiters.push_back(i);
  }
  if (done.size() == threads_.size()) return false;  // the block is finished
  std::ostringstream os;
  if (!warp_waiters.empty()) {
    const Thread& t = threads_[warp_waiters.front()];
    os << "threads " << thread_list(warp_waiters) << " wait at " << op_name(t) << " (" << where_text(t.where)
       << ") for lanes that never arrive";
    fail(os.str());
  }
  if (barriers.size() > 1) {
    os << "threads wait at different __syncthreads:";
    for (const auto& [where, ids] : barriers) os << " " << thread_list(ids) << " at " << where.first << ";";
    fail(os.str());
  }
  const auto& [where, ids] = *barriers.begin();
  if (!done.empty()) {
    os << "threads " << thread_list(done) << " exited while threads " << thread_list(ids)
       << " wait at __syncthreads (" << where.first << ")";
    fail(os.str());
  }
  for (unsigned i : ids) {
    threads_[i].state = State::Ready;
    make_runnable(i);
  }
  return true;
}

std::string Block::describe(const Thread& o) const {
  switch (o.state) {
    case State::Done:
      return "has exited";
    case State::AtBarrier:
      return "waits at __syncthreads (" + where_text(o.where) + ")";
    case State::AtWarpOp: {
      std::ostringstream os;
      os << "waits at " << op_name(o) << " (" << where_text(o.where) << ") with mask 0x" << std::hex
         << o.mask;
      return os.str();
    }
    case State::Ready:
      return "is still running";
  }
  return "?";
}

std::string Block::thread_list(const std::vector<unsigned>& ids) const {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (i > 0) os << ",";
    os << ids[i];
    if (j > i) os << "-" << ids[j];
    i = j + 1;
  }
  return os.str();
}

void Block::fail(const std::string& what) const {
  std::ostringstream os;
  os << "kernel " << launch_.name << ", block (" << block_idx_.x << "," << block_idx_.y << "," << block_idx_.z
     << "): " << what;
  throw LaunchFailure(os.str());
}

ThreadContext& current_thread() {
  Block::Thread* t = Block::running();
  if (t == nullptr) {
    std::fprintf(stderr, "ampipe GPU emulator: device code called outside a kernel\n");
    std::abort();
  }
  return t->ctx;
}

void sync_threads(SourceLocation where) {
  Block::Thread* t = Block::running();
  current_thread().block->wait_barrier(*t, where);
}

void sync_warp(unsigned mask, SourceLocation where) {
  Block::Thread* t = Block::running();
  current_thread().block->warp_op(*t, false, ShuffleKind::Index, mask, 0, 0, 32, where);
}

uint64_t shuffle_bits(ShuffleKind kind, unsigned mask, uint64_t bits, int lane_arg, int width,
                      SourceLocation where) {
  Block::Thread* t = Block::running();
  return current_thread().block->warp_op(*t, true, kind, mask, bits, lane_arg, width, where);
}

void* dynamic_shared_memory() { return current_thread().block->dynamic_shared(); }

void run_launch(const LaunchSpec& launch) {
  Rng rng{launch.seed};
  const dim3 g = launch.grid;
  const uint64_t blocks = static_cast<uint64_t>(g.x) * g.y * g.z;
  // Blocks in a shuffled order (a Fisher-Yates permutation of their linear indices).
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  for (uint64_t i = blocks; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  thread_local std::vector<unsigned char> shared;
  for (uint64_t linear : order) {
    const uint3 idx{static_cast<unsigned>(linear % g.x), static_cast<unsigned>(linear / g.x % g.y),
                    static_cast<unsigned>(linear / (static_cast<uint64_t>(g.x) * g.y))};
    // Dynamic shared memory starts as NaN bytes: a read before any write shows.
    shared.assign(launch.dynamic_shared_bytes, 0xff);
    Block block(launch, idx, rng, shared);
    block.run();
  }
}

}  // namespace ampipe_gpu_emulator
