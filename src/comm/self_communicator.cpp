#include "comm/self_communicator.h"

#include <cstdio>
#include <cstdlib>

#include "comm/check.h"

namespace ampipe {

namespace {

void throw_if(const char* call, const std::string& error) {
  if (!error.empty()) throw Error(comm_detail::where(call, 0, 1, 0, 1) + ": " + error);
}

// The first n elements of t, as a flat view.
Tensor head(const Tensor& t, int64_t n) { return t.reshape({t.numel()}).rows(0, n); }

}  // namespace

std::unique_ptr<Communicator> SelfCommunicator::split(int color, int /*key*/) const {
  if (color < 0) return nullptr;
  return std::make_unique<SelfCommunicator>();
}

void SelfCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                                    const std::vector<int64_t>& recv_counts) {
  const char* call = "all_to_all_v";
  throw_if(call, comm_detail::check_buffer(send, "send"));
  throw_if(call, comm_detail::check_buffer(recv, "recv"));
  throw_if(call, comm_detail::check_same_dtype(send, "send", recv, "recv"));
  throw_if(call, comm_detail::check_counts(send_counts, "send_counts", 1, send.numel(), "send"));
  throw_if(call, comm_detail::check_counts(recv_counts, "recv_counts", 1, recv.numel(), "recv"));
  if (send_counts[0] != recv_counts[0]) {
    throw_if(call, "send_counts[0] = " + std::to_string(send_counts[0]) + " but recv_counts[0] = " +
                       std::to_string(recv_counts[0]) + "; what rank 0 sends to itself is what it receives");
  }
  head(recv, recv_counts[0]).copy_from(head(send, send_counts[0]));
}

void SelfCommunicator::all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) {
  if (send.size() != 1) {
    throw_if("all_to_all",
             "send has " + std::to_string(send.size()) + " entries; it needs one per rank of the group (1)");
  }
  recv = send;
}

void SelfCommunicator::all_reduce_sum(Tensor buffer) {
  throw_if("all_reduce_sum", comm_detail::check_reducible(buffer, "buffer"));
}
void SelfCommunicator::all_reduce_sum(double&) {}
void SelfCommunicator::all_reduce_sum(int64_t&) {}
void SelfCommunicator::all_reduce_max(double&) {}
void SelfCommunicator::all_reduce_max(int64_t&) {}

void SelfCommunicator::broadcast(Tensor buffer, int root) {
  throw_if("broadcast", comm_detail::check_buffer(buffer, "buffer"));
  throw_if("broadcast", comm_detail::check_root(root, 1));
}

void SelfCommunicator::broadcast_bytes(std::string&, int root) {
  throw_if("broadcast_bytes", comm_detail::check_root(root, 1));
}

void SelfCommunicator::all_gather(const Tensor& send, Tensor recv) {
  const char* call = "all_gather";
  throw_if(call, comm_detail::check_buffer(send, "send"));
  throw_if(call, comm_detail::check_buffer(recv, "recv"));
  throw_if(call, comm_detail::check_same_dtype(send, "send", recv, "recv"));
  if (recv.numel() != send.numel()) {
    throw_if(call, "recv has " + std::to_string(recv.numel()) + " elements; it needs group size 1 x send's " +
                       std::to_string(send.numel()));
  }
  head(recv, recv.numel()).copy_from(head(send, send.numel()));
}

void SelfCommunicator::abort(int code, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "ampipe: rank 0: %s\n", message.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

}  // namespace ampipe
