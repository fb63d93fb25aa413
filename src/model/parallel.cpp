#include "model/parallel.h"

#include "core/error.h"

namespace ampipe {

void require_one_rank_on_gpu(Device device, int ranks) {
  AMPIPE_CHECK(device != Device::CUDA || ranks <= 1)
      << "--device cuda with " << ranks << " ranks needs the GPU communicator (not yet built); run one rank";
}

}  // namespace ampipe
