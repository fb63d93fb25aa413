#include "comm/communicator.h"

#include "comm/check.h"
#include "core/error.h"

namespace ampipe {

void Communicator::reduce_scatter_sum(const Tensor& send, Tensor recv) {
  const std::string error = comm_detail::check_reduce_scatter(send, recv, size());
  // The all_reduce_sum below makes every rank agree on its numel; a bad pair on one rank is named by
  // the backend's own agreement there. Here, one rank's own mismatch is refused before it enters.
  AMPIPE_CHECK(error.empty()) << "reduce_scatter_sum on rank " << rank() << " of " << size() << ": " << error;
  Tensor sum = send.clone();
  all_reduce_sum(sum);
  const int64_t n = recv.numel();
  recv.reshape({n}).copy_from(sum.reshape({send.numel()}).rows(rank() * n, (rank() + 1) * n));
}

}  // namespace ampipe
