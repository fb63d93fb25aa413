// What the emulated runtime's files share (internal to src/gpu_emulator): runtime.cpp owns devices,
// streams and errors; memory.cpp owns device memory and copies.
#pragma once

#include <functional>

#include "include/cuda_runtime.h"

namespace ampipe_gpu_emulator::detail {

// Records `error` as the calling thread's last error (cudaGetLastError) and returns it.
cudaError_t fail(cudaError_t error);
// The stream itself, or for nullptr the current device's legacy default stream (nullptr: no device).
Stream* resolve(Stream* stream);
// Queues `work` on `stream` (resolved) after everything queued there before.
void push(Stream* stream, std::function<void()> work, const char* what);
int device_count();

}  // namespace ampipe_gpu_emulator::detail
