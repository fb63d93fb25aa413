// TimedCommunicator: forwards every call to another communicator and adds up the wall time spent
// in them, so a training run can report the share of step time spent communicating, and the bytes
// this rank sends through all_to_all_v by element type (the benchmark's proof that --bf16 halves
// the MoE all-to-alls). Sub-communicators made by split() count into the same totals. Not thread-safe (like
// the communicators themselves).
#pragma once

#include <array>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace ampipe {

class TimedCommunicator final : public Communicator {
 public:
  struct Totals {
    double seconds = 0;
    std::array<int64_t, 3> all_to_all_bytes{};  // by DType (F32, I32, BF16): bytes sent
  };

  // `inner` is borrowed (must outlive this) unless `owned` is given; `totals` (optional) shared.
  explicit TimedCommunicator(Communicator& inner, std::shared_ptr<Totals> totals = nullptr,
                             std::unique_ptr<Communicator> owned = nullptr)
      : inner_(inner),
        owned_(std::move(owned)),
        totals_(totals ? totals : std::make_shared<Totals>()),
        seconds_(&totals_->seconds) {}

  double seconds() const { return *seconds_; }
  // Bytes of `dtype` this rank has sent through all_to_all_v (its own block included).
  int64_t all_to_all_bytes(DType dtype) const {
    return totals_->all_to_all_bytes[static_cast<size_t>(dtype)];
  }
  void reset() { *totals_ = Totals{}; }

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend(); }
  bool moves_device_buffers() const override { return inner_.moves_device_buffers(); }
  std::unique_ptr<Communicator> split(int color, int key) const override {
    auto sub = inner_.split(color, key);
    if (!sub) return nullptr;
    Communicator& ref = *sub;
    return std::make_unique<TimedCommunicator>(ref, totals_, std::move(sub));
  }
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                    const std::vector<int64_t>& recv_counts) override {
    Timer t(*seconds_);
    inner_.all_to_all_v(send, send_counts, recv, recv_counts);
    int64_t elements = 0;
    for (int64_t c : send_counts) elements += c;
    totals_->all_to_all_bytes[static_cast<size_t>(send.dtype())] += elements * dtype_size(send.dtype());
  }
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override {
    Timer t(*seconds_);
    inner_.all_to_all(send, recv);
  }
  void all_reduce_sum(Tensor buffer) override {
    Timer t(*seconds_);
    inner_.all_reduce_sum(buffer);
  }
  void all_reduce_sum(double& value) override {
    Timer t(*seconds_);
    inner_.all_reduce_sum(value);
  }
  void all_reduce_sum(int64_t& value) override {
    Timer t(*seconds_);
    inner_.all_reduce_sum(value);
  }
  void all_reduce_max(double& value) override {
    Timer t(*seconds_);
    inner_.all_reduce_max(value);
  }
  void all_reduce_max(int64_t& value) override {
    Timer t(*seconds_);
    inner_.all_reduce_max(value);
  }
  void broadcast(Tensor buffer, int root) override {
    Timer t(*seconds_);
    inner_.broadcast(buffer, root);
  }
  void broadcast_bytes(std::string& bytes, int root) override {
    Timer t(*seconds_);
    inner_.broadcast_bytes(bytes, root);
  }
  void all_gather(const Tensor& send, Tensor recv) override {
    Timer t(*seconds_);
    inner_.all_gather(send, recv);
  }
  void reduce_scatter_sum(const Tensor& send, Tensor recv) override {
    Timer t(*seconds_);
    inner_.reduce_scatter_sum(send, recv);
  }
  void barrier() override {
    Timer t(*seconds_);
    inner_.barrier();
  }
  [[noreturn]] void abort(int code, const std::string& message) override {
    inner_.abort(code, message);
    std::abort();  // not reached: inner_.abort ends the job
  }

 private:
  struct Timer {
    explicit Timer(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
    ~Timer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
    double& total_;
    std::chrono::steady_clock::time_point start_;
  };
  Communicator& inner_;
  std::unique_ptr<Communicator> owned_;
  std::shared_ptr<Totals> totals_;
  double* seconds_;  // &totals_->seconds
};

}  // namespace ampipe
