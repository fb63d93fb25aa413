#include "model/parallel.h"

#include "core/error.h"

namespace ampipe {

void require_device_communicator(Device device, const Communicator* comm) {
  if (device != Device::CUDA || comm == nullptr || comm->size() <= 1) return;
  AMPIPE_CHECK(comm->moves_device_buffers())
      << "--device cuda with " << comm->size() << " ranks needs a communicator that moves GPU buffers, but the '"
      << comm->backend() << "' backend moves host buffers only; wrap it in HostStagedCommunicator";
}

void require_device_communicators(Device device, const ModelParallel& parallel) {
  require_device_communicator(device, parallel.expert_group);
  require_device_communicator(device, parallel.data_group);
  require_device_communicator(device, parallel.tensor_group);
}

}  // namespace ampipe
