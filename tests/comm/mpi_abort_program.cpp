// Run under mpiexec -np 2 by the comm_mpi_abort test (tests/comm/run_abort_test.sh): rank 1 calls
// abort(3, "injected failure") while rank 0 waits in a barrier that can never complete. The job
// must end with status 3 instead of hanging.
#include <chrono>
#include <cstdio>
#include <thread>

#include "comm/mpi_communicator.h"

int main() {
  auto comm = ampipe::MpiCommunicator::world();
  if (comm->size() != 2) {
    std::fprintf(stderr, "mpi_abort_program: run me with 2 ranks, not %d\n", comm->size());
    return 2;
  }
  if (comm->rank() == 1) {
    // Let rank 0 get into its barrier first.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    comm->abort(3, "injected failure");
  }
  std::printf("rank 0: entering a barrier that rank 1 never joins\n");
  std::fflush(stdout);
  comm->barrier();
  std::printf("rank 0: barrier returned\n");
  return 0;
}
