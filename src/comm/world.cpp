#include "comm/world.h"

#include <cmath>
#include <cstdlib>

#include "comm/mpi_communicator.h"
#include "comm/self_communicator.h"

namespace ampipe {

std::string launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                           "SLURM_STEP_NUM_TASKS"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && *value != '\0') return name;
  }
  return {};
}

std::unique_ptr<Communicator> make_world_communicator(double timeout_seconds) {
  AMPIPE_CHECK(std::isfinite(timeout_seconds) && timeout_seconds > 0)
      << "collective timeout " << timeout_seconds << " s must be a positive number";
  const char* forced = std::getenv("AMPIPE_COMM");
  const std::string mode = forced != nullptr ? forced : "";
  AMPIPE_CHECK(mode.empty() || mode == "auto" || mode == "mpi" || mode == "self")
      << "AMPIPE_COMM=" << mode << " is not a communicator backend; use mpi, self or auto";
  const bool use_mpi = mode == "mpi" || ((mode.empty() || mode == "auto") && !launched_by_mpi().empty());
  if (use_mpi) {
    MpiCommunicator::Options options;
    options.timeout_seconds = timeout_seconds;
    return MpiCommunicator::world(options);
  }
  return std::make_unique<SelfCommunicator>();
}

}  // namespace ampipe
