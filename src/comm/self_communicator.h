// SelfCommunicator: a group of one rank (rank 0, size 1), for single-process runs.
//
// all_to_all_v and all_gather copy send into recv; reductions and broadcasts leave their buffers as
// they are; barrier returns at once. Arguments are checked as strictly as in the MPI backend (so a
// bug shows on one process too), and errors throw at once: there is nobody to agree with. abort()
// prints "ampipe: rank 0: <message>" and ends the process with `code`.
#pragma once

#include "comm/communicator.h"

namespace ampipe {

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }
  bool moves_device_buffers() const override { return true; }  // copy_from works on either device
  std::unique_ptr<Communicator> split(int color, int key) const override;

  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                    const std::vector<int64_t>& recv_counts) override;
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override;

  void all_reduce_sum(Tensor buffer) override;
  void all_reduce_sum(double& value) override;
  void all_reduce_sum(int64_t& value) override;
  void all_reduce_max(double& value) override;
  void all_reduce_max(int64_t& value) override;

  void broadcast(Tensor buffer, int root) override;
  void broadcast_bytes(std::string& bytes, int root) override;
  void all_gather(const Tensor& send, Tensor recv) override;

  void barrier() override {}
  [[noreturn]] void abort(int code, const std::string& message) override;
};

}  // namespace ampipe
