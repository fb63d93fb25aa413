#include "comm/host_staged_communicator.h"

#include <cstdlib>

namespace ampipe {
namespace {

// The host tensor a call works on: the buffer itself on the host, else a host copy (whose contents
// are copied only when the call reads them).
Tensor host_side(const Tensor& t, bool read) {
  if (!t.defined() || t.device() == Device::CPU) return t;
  if (read) return t.to(Device::CPU);
  return Tensor::empty(t.shape(), t.dtype(), Device::CPU);
}

// Copies what the call wrote back to the device buffer (nothing for a host buffer).
void write_back(Tensor device_buffer, const Tensor& host) {
  if (device_buffer.defined() && device_buffer.device() != Device::CPU) device_buffer.copy_from(host);
}

}  // namespace

std::unique_ptr<Communicator> HostStagedCommunicator::split(int color, int key) const {
  auto sub = inner_.split(color, key);
  if (!sub) return nullptr;
  Communicator& ref = *sub;
  return std::make_unique<HostStagedCommunicator>(ref, std::move(sub));
}

void HostStagedCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                                          const std::vector<int64_t>& recv_counts) {
  // recv is read too: elements past the received counts must stay as they were.
  Tensor host_recv = host_side(recv, /*read=*/true);
  inner_.all_to_all_v(host_side(send, true), send_counts, host_recv, recv_counts);
  write_back(recv, host_recv);
}

void HostStagedCommunicator::all_reduce_sum(Tensor buffer) {
  Tensor host = host_side(buffer, true);
  inner_.all_reduce_sum(host);
  write_back(buffer, host);
}

void HostStagedCommunicator::broadcast(Tensor buffer, int root) {
  Tensor host = host_side(buffer, inner_.rank() == root);
  inner_.broadcast(host, root);
  write_back(buffer, host);
}

void HostStagedCommunicator::all_gather(const Tensor& send, Tensor recv) {
  Tensor host_recv = host_side(recv, false);
  inner_.all_gather(host_side(send, true), host_recv);
  write_back(recv, host_recv);
}

void HostStagedCommunicator::reduce_scatter_sum(const Tensor& send, Tensor recv) {
  Tensor host_recv = host_side(recv, false);
  inner_.reduce_scatter_sum(host_side(send, true), host_recv);
  write_back(recv, host_recv);
}

Communicator& for_device(Communicator& comm, Device device, std::unique_ptr<Communicator>& holder) {
  if (device == Device::CPU || comm.moves_device_buffers()) return comm;
  holder = std::make_unique<HostStagedCommunicator>(comm);
  return *holder;
}

void HostStagedCommunicator::abort(int code, const std::string& message) {
  inner_.abort(code, message);
  std::abort();  // not reached: inner_.abort ends the job
}

}  // namespace ampipe
