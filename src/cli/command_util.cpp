#include "cli/command_util.h"

#include <cstdio>

#include "comm/communicator.h"
#include "comm/device_communicator.h"
#include "core/error.h"
#include "kernels/gemm.h"

namespace ampipe {

void set_threads(int threads) {
  AMPIPE_CHECK(threads >= 1) << "--threads must be at least 1, got " << threads;
  kernels::set_kernel_threads(threads);
}

Communicator& device_world(Communicator& world, Device device, const std::string& distributed_backend,
                           std::unique_ptr<Communicator>& holder) {
  const DistributedBackend backend = parse_distributed_backend(distributed_backend);
  if (device == Device::CUDA) use_local_cuda_device();
  return communicator_for_device(world, device, backend, holder);
}

void print_line(Communicator& world, const std::string& line) {
  if (world.rank() != 0) return;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        const bool digits = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
        return digits ? std::string() : "must be an integer >= 0, got '" + value + "'";
      },
      "UINT");
}

}  // namespace ampipe
