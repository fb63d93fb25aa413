// How the communicators' host waits poll (internal to comm/): the MPI backend's requests
// (comm/mpi_group.h) and the NCCL backend's events and async errors (comm/nccl_communicator.cpp).
//
// pause() between two polls: for the first 100 us it yields the core; then it sleeps 10 us doubling
// up to 200 us (at most 5000 cheap polls a second); after a second of waiting (a peer saving a
// checkpoint, a stalled rank) every millisecond. A yielding poll is not free where ranks outnumber
// cores: sched_yield gives the core up only to a thread already queued on it, so a rank that
// yielded for its whole wait starved the very peer it waited for when two jobs shared two cores.
#pragma once

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace ampipe::comm_detail {

class PollBackoff {
 public:
  void pause() {
    const auto waited = std::chrono::steady_clock::now() - start_;
    if (waited < std::chrono::microseconds(100)) {
      sched_yield();
    } else if (waited < std::chrono::seconds(1)) {
      std::this_thread::sleep_for(nap_);
      nap_ = std::min(nap_ * 2, std::chrono::microseconds(200));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::microseconds nap_{10};
};

}  // namespace ampipe::comm_detail
