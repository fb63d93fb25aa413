// HostStagedCommunicator (comm/host_staged_communicator.h): host buffers reach the inner
// communicator as they are (checked here with any machine); GPU buffers reach it as host copies
// and what it wrote comes back to the device (skipped without a GPU).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "comm/host_staged_communicator.h"
#include "comm/self_communicator.h"
#include "core/device.h"
#include "core/error.h"

namespace ampipe {
namespace {

// A one-rank communicator that, like the MPI backend, takes host tensors only, and records the
// storage of every buffer it is handed.
class HostOnlySelf final : public Communicator {
 public:
  std::vector<const void*> seen;
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "host-only"; }
  std::unique_ptr<Communicator> split(int, int) const override { return std::make_unique<HostOnlySelf>(); }
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& sc, Tensor recv,
                    const std::vector<int64_t>& rc) override {
    check(send);
    check(recv);
    self_.all_to_all_v(send, sc, recv, rc);
  }
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override { recv = send; }
  void all_reduce_sum(Tensor buffer) override { check(buffer); }
  void all_reduce_sum(double&) override {}
  void all_reduce_sum(int64_t&) override {}
  void all_reduce_max(double&) override {}
  void all_reduce_max(int64_t&) override {}
  void broadcast(Tensor buffer, int) override { check(buffer); }
  void broadcast_bytes(std::string&, int) override {}
  void all_gather(const Tensor& send, Tensor recv) override {
    check(send);
    check(recv);
    self_.all_gather(send, recv);
  }
  void barrier() override {}
  [[noreturn]] void abort(int, const std::string& message) override { throw Error(message); }

 private:
  void check(const Tensor& t) {
    AMPIPE_CHECK(t.device() == Device::CPU) << "the host-only backend was handed a device tensor";
    seen.push_back(t.data<float>());
  }
  SelfCommunicator self_;
};

TEST(HostStagedCommunicator, HostBuffersPassThroughUntouched) {
  HostOnlySelf inner;
  HostStagedCommunicator comm(inner);
  EXPECT_EQ(comm.backend(), "host-only+host-staged");
  Tensor send = Tensor::from({4}, {1, 2, 3, 4});
  Tensor recv = Tensor::from({5}, {-1, -1, -1, -1, -1});
  comm.all_to_all_v(send, {3}, recv, {3});
  EXPECT_EQ(recv.to_vector(), (std::vector<float>{1, 2, 3, -1, -1}));
  comm.all_reduce_sum(send);
  comm.broadcast(send, 0);
  Tensor gathered = Tensor::zeros({4});
  comm.all_gather(send, gathered);
  EXPECT_EQ(gathered.to_vector(), send.to_vector());
  const std::vector<const void*> want = {send.data<float>(), recv.data<float>(), send.data<float>(),
                                         send.data<float>(), send.data<float>(), gathered.data<float>()};
  EXPECT_EQ(inner.seen, want) << "a host buffer must reach the backend as itself, not as a copy";
  auto sub = comm.split(0, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->backend(), "host-only+host-staged");
}

TEST(HostStagedCommunicator, GpuBuffersGoThroughHostCopiesAndComeBack) {
  if (const std::string reason = cuda_unavailable_reason(); !reason.empty()) GTEST_SKIP() << reason;
  HostOnlySelf inner;
  HostStagedCommunicator comm(inner);
  const Tensor send = Tensor::from({4}, {1, 2, 3, 4}).to(Device::CUDA);
  Tensor recv = Tensor::from({5}, {-1, -1, -1, -1, -1}).to(Device::CUDA);
  comm.all_to_all_v(send, {3}, recv, {3});
  EXPECT_EQ(recv.to_vector(), (std::vector<float>{1, 2, 3, -1, -1})) << "the tail past the counts must stay";
  Tensor gathered = Tensor::zeros({4}, DType::F32, Device::CUDA);
  comm.all_gather(send, gathered);
  EXPECT_EQ(gathered.to_vector(), (std::vector<float>{1, 2, 3, 4}));
  Tensor buffer = Tensor::from({2}, {5, 6}).to(Device::CUDA);
  comm.broadcast(buffer, 0);
  comm.all_reduce_sum(buffer);
  EXPECT_EQ(buffer.to_vector(), (std::vector<float>{5, 6}));
}

}  // namespace
}  // namespace ampipe
