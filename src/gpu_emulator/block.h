// One launch's blocks, run as CUDA runs them (docs/GPU.md, "The emulator"): every block of the grid,
// one after another in an order shuffled from the launch's seed; inside a block every thread a fiber,
// run between barriers in an order shuffled from the same seed. Internal to the emulator.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "include/ampipe_gpu_emulator.h"

namespace ampipe_gpu_emulator {

// A kernel that broke CUDA's rules in a way the emulator checks (barriers, warp masks): the message
// names the kernel, the block, the threads and the source lines.
class LaunchFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LaunchSpec {
  std::string name;
  dim3 grid;
  dim3 block;
  size_t dynamic_shared_bytes = 0;
  KernelBody body;
  uint64_t seed = 0;  // of this launch's block and thread orders
};

// Runs every block of the launch on the calling host thread; throws LaunchFailure. The calling
// thread must not be inside a kernel.
void run_launch(const LaunchSpec& launch);

}  // namespace ampipe_gpu_emulator
