// Ranks as threads of one process (tests only): a Communicator whose collectives meet in shared
// memory behind a mutex and condition variable, so that ThreadSanitizer sees every synchronisation
// between the ranks (it cannot see Open MPI's, whose threads live in uninstrumented libraries).
// With it a multi-rank layout (a tensor-parallel group, say) runs under TSan in one process, each
// rank's executor streams included.
//
// Every collective deposits this rank's arguments in a slot, waits for every rank (a barrier),
// computes its result from the slots in rank order (so every rank gets the same bits, as the MPI
// backend's agreements ensure), and waits again before its arguments may go. Host buffers only.
// Errors in the arguments are not diagnosed beyond the shapes a copy needs: tests pass matching ones.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "core/error.h"

namespace ampipe::testing {

// The shared state of one group.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), slots_(size, nullptr) {}
  int size() const { return size_; }

  // Deposits `mine`, waits for every rank, runs `use` on every rank's deposit, waits again.
  void meet(int rank, const void* mine, const std::function<void(const std::vector<const void*>&)>& use) {
    slots_[rank] = mine;
    wait_all();
    use(slots_);
    wait_all();
  }
  void wait_all() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }
  // The child group named (split number, color), created by the first member to ask.
  std::shared_ptr<ThreadGroup> child(int64_t split, int color, int size) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::shared_ptr<ThreadGroup>& g = children_[{split, color}];
    if (!g) g = std::make_shared<ThreadGroup>(size);
    return g;
  }

 private:
  int size_;
  std::vector<const void*> slots_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  std::map<std::pair<int64_t, int>, std::shared_ptr<ThreadGroup>> children_;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> group, int rank) : g_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return g_->size(); }
  std::string backend() const override { return "threads"; }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    const std::pair<int, int> mine{color, key};
    std::vector<std::pair<int, int>> all;
    g_->meet(rank_, &mine, [&](const std::vector<const void*>& s) {
      for (const void* p : s) all.push_back(*static_cast<const std::pair<int, int>*>(p));
    });
    const int64_t split = splits_++;
    if (color < 0) return nullptr;
    // Members of this color ordered by (key, rank).
    std::vector<std::pair<int, int>> members;
    for (int r = 0; r < size(); ++r)
      if (all[r].first == color) members.push_back({all[r].second, r});
    std::sort(members.begin(), members.end());
    int new_rank = 0;
    for (size_t i = 0; i < members.size(); ++i)
      if (members[i].second == rank_) new_rank = static_cast<int>(i);
    return std::make_unique<ThreadCommunicator>(g_->child(split, color, static_cast<int>(members.size())),
                                                new_rank);
  }

  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                    const std::vector<int64_t>& recv_counts) override {
    struct Args {
      const std::byte* data;
      const std::vector<int64_t>* counts;
    } mine{send.bytes(), &send_counts};
    const size_t e = dtype_size(send.dtype());
    g_->meet(rank_, &mine, [&](const std::vector<const void*>& s) {
      std::byte* out = recv.bytes();
      for (int j = 0; j < size(); ++j) {
        const Args& from = *static_cast<const Args*>(s[j]);
        int64_t offset = 0;
        for (int i = 0; i < rank_; ++i) offset += (*from.counts)[i];
        AMPIPE_CHECK((*from.counts)[rank_] == recv_counts[j]) << "thread all_to_all_v: counts disagree";
        std::memcpy(out, from.data + offset * e, static_cast<size_t>(recv_counts[j]) * e);
        out += recv_counts[j] * static_cast<int64_t>(e);
      }
    });
  }
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override {
    std::vector<int64_t> out(size());
    g_->meet(rank_, &send, [&](const std::vector<const void*>& s) {
      for (int j = 0; j < size(); ++j) out[j] = (*static_cast<const std::vector<int64_t>*>(s[j]))[rank_];
    });
    recv = out;
  }

  void all_reduce_sum(Tensor buffer) override {
    const Tensor mine = buffer.clone();  // others read it while this rank writes `buffer`
    g_->meet(rank_, &mine, [&](const std::vector<const void*>& s) {
      const int64_t n = buffer.numel();
      Tensor flat = buffer.reshape({n});
      if (buffer.dtype() == DType::I32) {
        int32_t* out = flat.data<int32_t>();
        for (int64_t i = 0; i < n; ++i) out[i] = 0;
        for (const void* p : s) {
          const int32_t* in = static_cast<const Tensor*>(p)->data<int32_t>();
          for (int64_t i = 0; i < n; ++i) out[i] += in[i];
        }
        return;
      }
      float* out = flat.data<float>();
      for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
      for (const void* p : s) {  // rank order: the same bits on every rank
        const float* in = static_cast<const Tensor*>(p)->data<float>();
        for (int64_t i = 0; i < n; ++i) out[i] += in[i];
      }
    });
  }
  void all_reduce_sum(double& value) override {
    reduce(value, [](double a, double b) { return a + b; });
  }
  void all_reduce_sum(int64_t& value) override {
    reduce(value, [](int64_t a, int64_t b) { return a + b; });
  }
  void all_reduce_max(double& value) override {
    reduce(value, [](double a, double b) { return a > b ? a : b; });
  }
  void all_reduce_max(int64_t& value) override {
    reduce(value, [](int64_t a, int64_t b) { return a > b ? a : b; });
  }

  void broadcast(Tensor buffer, int root) override {
    const Tensor mine = rank_ == root ? buffer : Tensor();
    g_->meet(rank_, &mine, [&](const std::vector<const void*>& s) {
      if (rank_ != root) buffer.copy_from(*static_cast<const Tensor*>(s[root]));
    });
  }
  void broadcast_bytes(std::string& bytes, int root) override {
    const std::string mine = bytes;
    g_->meet(rank_, &mine,
             [&](const std::vector<const void*>& s) { bytes = *static_cast<const std::string*>(s[root]); });
  }
  void all_gather(const Tensor& send, Tensor recv) override {
    g_->meet(rank_, &send, [&](const std::vector<const void*>& s) {
      const int64_t n = send.numel();
      Tensor flat = recv.reshape({recv.numel()});
      for (int j = 0; j < size(); ++j) {
        const Tensor& from = *static_cast<const Tensor*>(s[j]);
        flat.rows(j * n, (j + 1) * n).copy_from((from.is_contiguous() ? from : from.clone()).reshape({n}));
      }
    });
  }
  void barrier() override { g_->wait_all(); }
  [[noreturn]] void abort(int code, const std::string& message) override {
    std::fprintf(stderr, "ampipe: thread rank %d: %s (exit %d)\n", rank_, message.c_str(), code);
    std::abort();
  }

 private:
  std::shared_ptr<ThreadGroup> g_;
  int rank_;
  mutable int64_t splits_ = 0;

  template <class T, class Op>
  void reduce(T& value, Op op) {
    const T mine = value;
    T out{};
    g_->meet(rank_, &mine, [&](const std::vector<const void*>& s) {
      out = *static_cast<const T*>(s[0]);
      for (size_t j = 1; j < s.size(); ++j) out = op(out, *static_cast<const T*>(s[j]));
    });
    value = out;
  }
};

// Runs body(world) on `ranks` threads, each with its rank of one fresh group; rethrows the first
// exception a rank threw (the others must not wait for it in a collective: tests that throw on one
// rank only do not belong here).
inline void run_thread_ranks(int ranks, const std::function<void(Communicator&)>& body) {
  auto group = std::make_shared<ThreadGroup>(ranks);
  std::vector<std::exception_ptr> errors(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      ThreadCommunicator world(group, r);
      try {
        body(world);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace ampipe::testing
