// Which communicator moves a command's buffers (--distributed-backend, Megatron-LM's flag):
//
// - On the CPU, or on one rank: the world itself.
// - GPU buffers over several ranks: NCCL (comm/nccl_communicator.h), one rank per GPU, where the
//   build has NCCL and every rank has a GPU of its own; else the host-staged MPI backend
//   (comm/host_staged_communicator.h), which also serves several ranks sharing one GPU (NCCL
//   refuses those).
// - `DistributedBackend::Default` picks NCCL where it can be used and says on rank 0's stderr why
//   it falls back otherwise; `Nccl` requires it (an error names what is missing); `Mpi` always
//   stages through the host.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ampipe {

enum class DistributedBackend { Default, Nccl, Mpi };

// "" (the default), "nccl" or "mpi"; throws ampipe::Error naming the value and what is allowed.
DistributedBackend parse_distributed_backend(const std::string& name);

// The communicator for tensors on `device` over `world`'s ranks: `world` itself, or one made here
// and kept alive by `holder`. Collective over `world` (NCCL set-up). Throws on every rank alike when
// `backend` cannot be honoured.
Communicator& communicator_for_device(Communicator& world, Device device, DistributedBackend backend,
                                      std::unique_ptr<Communicator>& holder);

}  // namespace ampipe
