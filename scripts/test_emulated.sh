#!/usr/bin/env bash
# The CUDA backend under the GPU emulator (docs/GPU.md, "The emulator"; a CI step after
# scripts/test.sh): builds build-emulated with -DAMPIPE_CUDA=EMULATE (the same .cu sources, compiled
# by the host compiler) and runs every GPU test there, none skipped: the kernels, GPU streams, the
# model on the GPU, the host-staged communicator, two ranks on one emulated GPU (parallel_gpu_np2),
# 2 and 4 ranks on emulated GPUs of their own through the emulator's NCCL (parallel_gpu_np*_nccl) and
# NCCL in trouble (comm_nccl_faults), the commands with --device cuda (scripts_gpu_commands) and the
# emulator's own tests (its NCCL included). Extra
# arguments go to ctest. AMPIPE_GPU_EMULATOR_SEED sets the thread orders (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${AMPIPE_EMULATED_BUILD:-build-emulated}
targets=(ampipe test_gpu_emulator test_device_cache test_tensor test_stream test_model_device
         test_host_staged_communicator mpi_test_gpu nccl_fault_program test_gpu_emulator_nccl)
for t in tests/cuda/test_*.cpp; do targets+=("$(basename "$t" .cpp)"); done
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAMPIPE_CUDA=EMULATE > /dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
cd "$build"
# Every GPU test must run: a skip here means the emulator is not in use, and fails the step.
tests='^(GpuEmulator[A-Za-z]*|Cuda[A-Za-z]*|ModelDevice|HostStagedCommunicator|DeviceCache|parallel_gpu_np2|parallel_gpu_np[24]_nccl|comm_nccl_faults|scripts_gpu_commands)'
# The no-GPU paths (WithoutAGpu...) run separately, with an emulator that has no device.
no_gpu='WithoutAGpu|WithoutGpu|CudaWithoutAGpu'
ctest --output-on-failure -j"$(nproc)" --timeout 900 -R "$tests|^(Tensor|Stream)[A-Za-z]*\." -E "$no_gpu" "$@" | tee ctest.log
AMPIPE_GPU_EMULATOR_DEVICES=0 ctest --output-on-failure --timeout 300 -R "$no_gpu" "$@" | tee -a ctest.log
if grep -E '\*\*\*Skipped|Not Run' ctest.log; then
  echo "test_emulated: a GPU test skipped or did not run under the emulator" >&2
  exit 1
fi
