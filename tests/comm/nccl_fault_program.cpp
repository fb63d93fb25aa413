// Run under mpiexec by the comm_nccl_faults test (tests/comm/run_nccl_fault_test.sh), one GPU per rank
// (emulated ones in CI): a rank in trouble inside an NCCL collective must end the job, named, instead
// of leaving the others waiting.
//   nccl_fault_program inside SECONDS: every rank calls barrier() then an all_to_all_v of GPU
//     buffers; the script sets AMPIPE_INJECT_COMM_STOP so that the last rank stops (SIGSTOP) after
//     the call's agreement, inside it, and the others must end the job at the deadline.
//   nccl_fault_program async SECONDS: the same calls; the script makes one rank's NCCL report an
//     asynchronous error (AMPIPE_GPU_EMULATOR_NCCL_ERROR) and that rank must end every rank's job
//     at once, long before the deadline.
// A call that returns prints "returned after S s" (a failure the script looks for).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "core/device.h"
#include "core/tensor.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: nccl_fault_program inside|async SECONDS\n");
    return 2;
  }
  const std::string mode = argv[1];
  if (mode != "inside" && mode != "async") {
    std::fprintf(stderr, "nccl_fault_program: unknown mode '%s' (inside or async)\n", mode.c_str());
    return 2;
  }
  ampipe::MpiCommunicator::Options options;
  options.timeout_seconds = std::atof(argv[2]);
  auto world = ampipe::MpiCommunicator::world(options);
  ampipe::use_local_cuda_device();
  std::unique_ptr<ampipe::Communicator> nccl = ampipe::make_nccl_communicator(*world);
  nccl->barrier();
  const int64_t n = 1000;
  ampipe::Tensor send = ampipe::Tensor::zeros({n * nccl->size()}, ampipe::DType::F32, ampipe::Device::CUDA);
  ampipe::Tensor recv = ampipe::Tensor::zeros({n * nccl->size()}, ampipe::DType::F32, ampipe::Device::CUDA);
  const std::vector<int64_t> counts(static_cast<size_t>(nccl->size()), n);
  const auto start = std::chrono::steady_clock::now();
  nccl->all_to_all_v(send, counts, recv, counts);
  std::printf("rank %d: all_to_all_v returned after %.3f s\n", nccl->rank(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}
