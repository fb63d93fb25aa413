#!/usr/bin/env bash
# The test suite under sanitizers (an extra CI step after scripts/test.sh):
#   build-asan: AMPIPE_SANITIZE=address (AddressSanitizer + UndefinedBehaviorSanitizer), whole suite;
#   build-tsan: AMPIPE_SANITIZE=thread (ThreadSanitizer), the stream, pipeline and communicator tests.
# Any finding fails the run. Prints the time of each phase. Usage: scripts/test_sanitizers.sh [asan|tsan]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)
which=${1:-all}
if [[ $which != all && $which != asan && $which != tsan ]]; then
  echo "usage: scripts/test_sanitizers.sh [asan|tsan]   (no argument: both; got '$which')" >&2
  exit 2
fi

source scripts/phase.sh

configure_build() {  # configure_build DIR SANITIZER [TARGET...]  (AMPIPE_CUDA_MODE: the -DAMPIPE_CUDA value)
  local dir=$1 san=$2
  shift 2
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAMPIPE_SANITIZE="$san" \
    -DAMPIPE_CUDA="${AMPIPE_CUDA_MODE:-AUTO}" > /dev/null
  if (($#)); then
    cmake --build "$dir" -j"$jobs" --target "$@"
  else
    cmake --build "$dir" -j"$jobs"
  fi
}

if [[ $which == all || $which == asan ]]; then
  phase build-asan configure_build build-asan address
  # Leaks: Open MPI's one-off MPI_Init allocations are reported by LeakSanitizer; those third-party
  # frames (and only those) are listed, with reasons, in tests/sanitizers/lsan.supp. Its components
  # stay mapped (no_dlclose.cpp) so the suppressions can name them; preloading that shim ahead of the
  # ASan runtime is why verify_asan_link_order is off.
  g++ -shared -fPIC -O1 tests/sanitizers/no_dlclose.cpp -o build-asan/libno_dlclose.so
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:verify_asan_link_order=0
  export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # Left out, environmental: Memory.FreedActivationsAreReusedWithoutFreshPageFaults counts the page
  # faults of glibc malloc's reuse of freed memory (mallopt); ASan replaces malloc with its own
  # allocator, whose quarantine holds freed blocks back, so the count measures ASan, not ampipe.
  # Trainer.ResidentMemoryStaysFlatOverTwoThousandSteps bounds resident memory growth to 4 MB; ASan's
  # quarantine (256 MB by default) keeps freed blocks resident until it is full, so RSS grows anyway.
  # parallel_mpi_np4 runs below without leak detection: LeakSanitizer's own tracer crashes
  # ("Tracer caught signal 11", "LeakSanitizer has encountered a fatal error") at the exit of rank 0
  # of mpi_test_parallel at 4 ranks, even with no test selected; a failure of LSan, not a leak
  # report. Seen on 2026-12-07, not understood yet; the same program's leaks are checked at 2 ranks.
  # Left out for time: scripts_checkpoint_kill_mpi and scripts_checkpoint_kill_sharded_mpi (2 ranks
  # killed with kill -9 at random moments, then resumed, over and over: 141 s and 131 s under ASan,
  # the two slowest tests by 3x). They run in the Release suite; under ASan the checkpoint code they
  # drive runs in test_checkpoint_dirs, scripts_checkpoint_kill (one rank, killed the same way) and
  # the multi-rank save and resume tests of tests/parallel. Also parallel_tensor_parallel_model_np8
  # (8 ranks on this machine's cores; the same program runs under ASan at 2 and 4 ranks).
  phase tests-asan env LD_PRELOAD="$root/build-asan/libno_dlclose.so" \
    bash -c "cd build-asan && ctest --output-on-failure -j$jobs --timeout 900 \
      -E '^(Memory\.FreedActivationsAreReusedWithoutFreshPageFaults|Trainer\.ResidentMemoryStaysFlatOverTwoThousandSteps|parallel_mpi_np4|scripts_checkpoint_kill_mpi|scripts_checkpoint_kill_sharded_mpi|parallel_tensor_parallel_model_np8)\$'"
  phase tests-asan-np4 env LD_PRELOAD="$root/build-asan/libno_dlclose.so" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:verify_asan_link_order=0 \
    bash -c "cd build-asan && ctest --output-on-failure --timeout 900 -R '^parallel_mpi_np4\$'"
  unset ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS
fi

if [[ $which == all || $which == tsan ]]; then
  # Only the executables these tests live in: the stream (core), the pipeline schedules (and paired
  # micro-batches: two passes' tasks on the same two streams), tensor parallelism with the ranks as
  # threads (test_thread_ranks: the all-reduces as comm-stream tasks, the ranks' collectives in
  # shared memory TSan can see) and the
  # single-process communicator; with the GPU emulator (EMULATE), the GPU streams, the emulator's own
  # streams, events and fibers, its NCCL (sockets between ranks run as threads and as processes),
  # and the model's GPU pipeline (the ampipe schedule on two GPU streams;
  # the other ModelDevice tests add minutes under TSan and no stream they do not share).
  AMPIPE_CUDA_MODE=EMULATE phase build-tsan configure_build build-tsan thread test_stream test_schedules test_paired test_thread_ranks \
    test_self_communicator test_cuda_stream test_gpu_emulator test_gpu_emulator_nccl test_model_device
  # OMP_NUM_THREADS=1 (set by CMake on these tests for a thread build): libgomp is not instrumented.
  # Multi-rank MPI tests (comm_mpi_*) are not run under TSan: Open MPI's progress and event threads
  # live in uninstrumented libraries (libopen-pal, libevent), so TSan would only report races it
  # cannot see the synchronisation of; they run under ASan above.
  export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
  phase tests-tsan bash -c "cd build-tsan && ctest --output-on-failure -j$jobs --timeout 900 \
    -R '^((StreamTest|Stream|TopKAndFamily/Schedules|TopKAndFamily/Paired|Paired|PairedTasks|StreamedBlock|TaskList|Schedule|ThreadRanks|SelfCommunicator|SelfCommunicatorDeathTest|WorldCommunicator|CudaStream|GpuEmulator|GpuEmulatorNccl)\.|ModelDevice\.AmpipeScheduleOnTheGpuMatchesTheCpu)'"
fi
