// Run under mpiexec by the comm_mpi_timeout test (tests/comm/run_timeout_test.sh): the last rank
// stalls and the others must end the job at the collective deadline, naming it, instead of hanging.
//   mpi_timeout_program absent SECONDS: the last rank stops itself (SIGSTOP) before its first
//     collective; the others call all_reduce_sum and must report that it did not enter the call.
//   mpi_timeout_program inside SECONDS: every rank calls barrier() then all_to_all_v; the script sets
//     AMPIPE_INJECT_COMM_STOP so that the last rank stops inside the all_to_all_v, after the
//     agreement, and the others must report that its data did not move.
// A stalled call that returns prints "returned after S s": before the deadline that is a failure the
// script looks for. (After it, it is Open MPI's teardown: mpirun sends SIGCONT to every process before
// killing it, so the stopped rank may run on briefly and complete the others' exchange.)
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: mpi_timeout_program absent|inside SECONDS\n");
    return 2;
  }
  const std::string mode = argv[1];
  ampipe::MpiCommunicator::Options options;
  options.timeout_seconds = std::atof(argv[2]);
  auto comm = ampipe::MpiCommunicator::world(options);
  const int last = comm->size() - 1;
  if (mode == "absent") {
    if (comm->rank() == last) raise(SIGSTOP);
    double value = 1.0;
    const auto start = std::chrono::steady_clock::now();
    comm->all_reduce_sum(value);
    std::printf("rank %d: all_reduce_sum returned after %.3f s\n", comm->rank(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return 0;
  }
  if (mode == "inside") {
    comm->barrier();
    const int64_t n = 1000;
    ampipe::Tensor send = ampipe::Tensor::zeros({n * comm->size()});
    ampipe::Tensor recv = ampipe::Tensor::zeros({n * comm->size()});
    const std::vector<int64_t> counts(static_cast<size_t>(comm->size()), n);
    const auto start = std::chrono::steady_clock::now();
    comm->all_to_all_v(send, counts, recv, counts);
    std::printf("rank %d: all_to_all_v returned after %.3f s\n", comm->rank(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return 0;
  }
  std::fprintf(stderr, "mpi_timeout_program: unknown mode '%s' (absent or inside)\n", mode.c_str());
  return 2;
}
