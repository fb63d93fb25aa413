// Small helpers shared by the commands that run a model (train, eval, sample, bench).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "core/device.h"

namespace ampipe {

class Communicator;

// --threads N: the compute threads of the kernels and BLAS. Throws ampipe::Error for N < 1.
void set_threads(int threads);

// The communicator a command on `device` runs over: for Device::CUDA this process first takes the
// GPU of its local rank, and GPU buffers move between ranks by NCCL or through host copies over MPI
// as `distributed_backend` (--distributed-backend: "", "nccl" or "mpi") says
// (comm/device_communicator.h; `holder` keeps what is made here alive).
Communicator& device_world(Communicator& world, Device device, const std::string& distributed_backend,
                           std::unique_ptr<Communicator>& holder);

// Prints `line` and a newline on stdout, on world rank 0 only, flushed at once.
void print_line(Communicator& world, const std::string& line);

// A validator for an unsigned flag (a seed): refuses a negative or non-integer value, which would
// otherwise wrap to 2^64 - 1 without a word.
CLI::Validator unsigned_integer();

}  // namespace ampipe
