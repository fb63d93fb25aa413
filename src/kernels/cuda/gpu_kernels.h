// The CUDA implementations of every kernel contract (kernels/*.h), called by kernels/dispatch.cpp
// for tensors on Device::CUDA; built only with AMPIPE_HAVE_CUDA. Internal to kernels/. Every one
// enqueues on the calling thread's current CUDA stream (core/cuda/context.h) and returns without
// waiting for the device, except where its contract hands a value to the host (sum_of_squares, the
// counts of make_dispatch_plan).
#pragma once

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/permute.h"

namespace ampipe::kernels::gpu {
#include "kernels/backend_functions.inc"
}  // namespace ampipe::kernels::gpu
