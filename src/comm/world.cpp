#include "comm/world.h"

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

std::unique_ptr<Communicator> make_world_communicator() {
  const char* forced = std::getenv("AMPIPE_COMM");
  const std::string mode = forced != nullptr ? forced : "";
  AMPIPE_CHECK(mode.empty() || mode == "auto" || mode == "mpi" || mode == "self")
      << "AMPIPE_COMM=" << mode << " is not a communicator backend; use mpi, self or auto";
  const bool use_mpi = mode == "mpi" || ((mode.empty() || mode == "auto") && !launched_by_mpi().empty());
  if (use_mpi) return MpiCommunicator::world();
  return std::make_unique<SelfCommunicator>();
}

}  // namespace ampipe
