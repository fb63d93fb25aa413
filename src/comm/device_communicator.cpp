#include "comm/device_communicator.h"

#include <cstdio>

#include "comm/host_staged_communicator.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "core/error.h"

namespace ampipe {

DistributedBackend parse_distributed_backend(const std::string& name) {
  if (name.empty()) return DistributedBackend::Default;
  if (name == "nccl") return DistributedBackend::Nccl;
  if (name == "mpi") return DistributedBackend::Mpi;
  throw Error("--distributed-backend must be nccl or mpi, got '" + name + "'");
}

namespace {

// Why NCCL cannot serve these ranks ("" when it can). Collective over `world`.
std::string nccl_refusal(Communicator& world, const MpiCommunicator* mpi) {
  std::string reason = nccl_unavailable_reason();
  if (reason.empty() && mpi == nullptr)
    reason = "the world is a '" + world.backend() + "' communicator, not MPI";
  if (!reason.empty()) return reason;
  const std::string shared = shared_gpu_ranks(world);
  if (!shared.empty()) return shared + " (NCCL takes one rank per GPU)";
  return {};
}

}  // namespace

Communicator& communicator_for_device(Communicator& world, Device device, DistributedBackend backend,
                                      std::unique_ptr<Communicator>& holder) {
  if (device == Device::CPU) {
    AMPIPE_CHECK(backend != DistributedBackend::Nccl)
        << "--distributed-backend nccl moves GPU buffers: it needs --device cuda (on the CPU ranks use MPI)";
    return world;
  }
  if (world.moves_device_buffers()) return world;  // one rank: nothing to move between ranks
  if (backend == DistributedBackend::Mpi) return for_device(world, device, holder);
  const auto* mpi = dynamic_cast<const MpiCommunicator*>(&world);
  const std::string refusal = nccl_refusal(world, mpi);
  if (refusal.empty()) {
    holder = make_nccl_communicator(*mpi);
    return *holder;
  }
  AMPIPE_CHECK(backend != DistributedBackend::Nccl)
      << "--distributed-backend nccl cannot be used: " << refusal
      << "; --distributed-backend mpi stages GPU buffers through the host";
  if (world.rank() == 0) {
    std::fprintf(stderr, "ampipe: GPU collectives are staged through host memory over MPI, not NCCL: %s\n",
                 refusal.c_str());
    std::fflush(stderr);
  }
  return for_device(world, device, holder);
}

}  // namespace ampipe
