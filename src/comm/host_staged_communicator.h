// HostStagedCommunicator: GPU tensors through a host-memory backend. It forwards every call to
// another communicator (the MPI backend, which moves host tensors only). A buffer on Device::CUDA
// is copied to a host tensor first (on the calling thread's current CUDA stream, which the copy
// waits for), the call runs on the host copies, and what the call wrote is copied back to the
// device. Host buffers pass through untouched.
//
// This is the path for ranks that share one GPU (two ranks on one machine against an emulated slow
// network, scripts/netem.sh) and the fallback where NCCL is absent. It costs two PCIe copies per
// buffer and a host wait on the stream (the comm stream, in the engine: compute keeps running).
// Host staging buffers are cached tensors (core/host_cache.h), not pinned memory yet.
//
// Sub-communicators made by split() stage too. Same contract as Communicator otherwise.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace ampipe {

class HostStagedCommunicator final : public Communicator {
 public:
  // `inner` is borrowed (must outlive this) unless `owned` is given.
  explicit HostStagedCommunicator(Communicator& inner, std::unique_ptr<Communicator> owned = nullptr)
      : inner_(inner), owned_(std::move(owned)) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend() + "+host-staged"; }
  bool moves_device_buffers() const override { return true; }
  std::unique_ptr<Communicator> split(int color, int key) const override;

  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                    const std::vector<int64_t>& recv_counts) override;
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override {
    inner_.all_to_all(send, recv);
  }
  void all_reduce_sum(Tensor buffer) override;
  void all_reduce_sum(double& value) override { inner_.all_reduce_sum(value); }
  void all_reduce_sum(int64_t& value) override { inner_.all_reduce_sum(value); }
  void all_reduce_max(double& value) override { inner_.all_reduce_max(value); }
  void all_reduce_max(int64_t& value) override { inner_.all_reduce_max(value); }
  void broadcast(Tensor buffer, int root) override;
  void broadcast_bytes(std::string& bytes, int root) override { inner_.broadcast_bytes(bytes, root); }
  void all_gather(const Tensor& send, Tensor recv) override;
  void reduce_scatter_sum(const Tensor& send, Tensor recv) override;
  void barrier() override { inner_.barrier(); }
  [[noreturn]] void abort(int code, const std::string& message) override;

 private:
  Communicator& inner_;
  std::unique_ptr<Communicator> owned_;
};

// The communicator to use for tensors on `device`: `comm` itself on the CPU or when it moves device
// buffers already, else a HostStagedCommunicator over it, kept alive by `holder`.
Communicator& for_device(Communicator& comm, Device device, std::unique_ptr<Communicator>& holder);

}  // namespace ampipe
