// The CPU implementations of every kernel contract (kernels/*.h), called by kernels/dispatch.cpp
// for tensors on Device::CPU. Internal to kernels/.
#pragma once

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/permute.h"

namespace ampipe::kernels::cpu {
#include "kernels/backend_functions.inc"
}  // namespace ampipe::kernels::cpu
