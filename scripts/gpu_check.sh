#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and the CUDA toolkit (nvcc, cuBLAS) but none of our
# Debian packages, builds what the GPU tests need, runs every GPU test and the GPU kernel benchmark,
# and prints one summary. Budget: under 8 minutes on the lent H200 machine (16 cores).
#
#   bash scripts/gpu_deps.sh          # here, once: .deb files into .gpu-deps/ (~28 MB)
#   bash scripts/gpu_check.sh         # there, with .gpu-deps carried (docs/GPU.md)
#   bash scripts/gpu_check.sh --emulate   # here: the whole GPU half against the GPU emulator
#                                         # (-DAMPIPE_CUDA=EMULATE, shapes shrunk; no PyTorch peer)
#
# Where the packages are installed (this development machine) it uses them and needs no .gpu-deps;
# AMPIPE_GPU_DEPS=1 makes it use the unpacked ones anyway (how that path is checked here).
# Without a GPU it still builds and runs the tests, which then skip with the reason: that is how it
# is checked here. Results go to stdout and, when $OUT is set (the device tool), to $OUT/gpu_check.log,
# $OUT/bench_cuda_kernels.json and $OUT/bench_block.jsonl. Exit status: non-zero when the build or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
emulate=0
case "${1:-}" in
  --emulate) emulate=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu_check.sh [--emulate]   (got '$1')" >&2; exit 2 ;;
esac
start=$(date +%s)
out=${OUT:-}
log() { echo "gpu_check: $*"; }
[ -n "$out" ] && exec > >(tee "$out/gpu_check.log") 2>&1

if [ "$emulate" = 1 ]; then
  build=${AMPIPE_GPU_BUILD:-build-gpu-emulated}
  cmake_args=(-DCMAKE_BUILD_TYPE=Release -DAMPIPE_CUDA=EMULATE)
  log "EMULATED: every GPU step below runs on the GPU emulator (CPU), with shrunk shapes; timings are not GPU timings"
else
  build=${AMPIPE_GPU_BUILD:-build-gpu}
  cmake_args=(-DCMAKE_BUILD_TYPE=Release -DAMPIPE_CUDA=ON)
  # NCCL: the toolkit's where it has one, else PyTorch's wheel (nvidia/nccl: include/ and lib/).
  if ! [ -f "${CUDA_HOME:-/usr/local/cuda}/include/nccl.h" ]; then
    nccl_root=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null || true)
    if [ -n "$nccl_root" ] && [ -f "$nccl_root/include/nccl.h" ]; then
      [ -e "$nccl_root/lib/libnccl.so" ] || ln -sf libnccl.so.2 "$nccl_root/lib/libnccl.so" 2>/dev/null || true
      cmake_args+=(-DNCCL_ROOT="$nccl_root")
      log "NCCL from $nccl_root"
    fi
  fi
fi
if [ -d .gpu-deps ] && ls .gpu-deps/*.deb > /dev/null 2>&1 &&
   { [ "${AMPIPE_GPU_DEPS:-}" = 1 ] || ! [ -f /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h ]; }; then
  deps=/tmp/ampipe-deps
  log "unpacking $(ls .gpu-deps/*.deb | wc -l) packages into $deps"
  mkdir -p "$deps"
  for f in .gpu-deps/*.deb; do dpkg-deb -x "$f" "$deps"; done
  lib=$deps/usr/lib/x86_64-linux-gnu
  cmake_args+=(-DAMPIPE_DEPS_ROOT="$deps" -DCMAKE_PREFIX_PATH="$deps/usr"
               -DMPI_CXX_HEADER_DIR="$lib/openmpi/include" -DMPI_CXX_LIB_NAMES=mpi -DMPI_mpi_LIBRARY="$lib/openmpi/lib/libmpi.so"
               -DMPIEXEC_EXECUTABLE="$deps/usr/bin/orterun")
  export LD_LIBRARY_PATH="$lib:$lib/openblas-openmp:$lib/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OPAL_PREFIX="$deps/usr"
  # libmpi's relocated plugins and help files live under the private prefix.
  export OMPI_MCA_mca_base_component_path="$lib/openmpi/lib/openmpi3"
fi
mpirun=$(command -v mpirun || true)
[ -n "${deps:-}" ] && mpirun=$deps/usr/bin/orterun
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu_check: GPU: /' || log "no nvidia-smi"
log "configuring $build"
# Ninja where present, for a new build folder (an existing one keeps its generator).
command -v ninja > /dev/null && ! [ -f "$build/CMakeCache.txt" ] && cmake_args+=(-G Ninja)
mkdir -p "$build"
cmake -S . -B "$build" "${cmake_args[@]}" > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
grep -q "ampipe CUDA backend: ON" "$build/configure.log" || { log "the CUDA backend was not configured"; exit 1; }
grep -h "ampipe NCCL:" "$build/configure.log" | sed 's/^-- /gpu_check: /' || true
targets=(ampipe bench_cuda_kernels test_device_cache test_tensor test_stream test_model_device
         test_host_staged_communicator mpi_test_gpu test_gpu_emulator)
for t in tests/cuda/test_*.cpp; do targets+=("$(basename "$t" .cpp)"); done
log "building ${targets[*]}"
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" 2>&1 | grep -E 'error|warning|FAILED' || true
for t in "${targets[@]}"; do [ -x "$build/$t" ] || { log "build of $t failed"; cmake --build "$build" --target "$t"; exit 1; }; done
log "built in $(( $(date +%s) - start )) s"

# Why no GPU can be used ("" when one can), as the engine sees it.
cuda_reason() { "$build/ampipe" train --device cuda --train-iters 0 2>&1 | grep -o 'needs an NVIDIA GPU.*' || true; }
status=0
export AMPIPE_BINARY="$PWD/$build/ampipe"  # the CLI tests run the binary
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
for t in test_device_cache test_tensor test_stream tests/cuda/test_*.cpp test_model_device \
         test_host_staged_communicator test_gpu_emulator; do
  name=$(basename "$t" .cpp)
  if "$build/$name" --gtest_brief=1 > "$build/$name.log" 2>&1; then
    passed=$(grep -o '^\[  PASSED  \] [0-9]*' "$build/$name.log" | grep -o '[0-9]*$' || echo 0)
    skipped=$(grep -o '^\[  SKIPPED \] [0-9]*' "$build/$name.log" | grep -o '[0-9]*$' || echo 0)
    log "PASS $name (${passed:-0} passed, ${skipped:-0} skipped)"
  else
    log "FAIL $name"; tail -40 "$build/$name.log"; status=1
  fi
done
# mpi_ranks NP LOG WHAT [ARGS...]: mpi_test_gpu on NP ranks (ARGS to it), its log in LOG, a PASS /
# skipped / FAIL line naming WHAT.
mpi_ranks() {
  local np=$1 log=$2 what=$3 rc
  shift 3
  set +e
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=2 timeout 300 "$mpirun" --oversubscribe \
      --mca pml ob1 --mca btl self,vader --mca btl_vader_single_copy_mechanism none -x AMPIPE_GPU_EMULATOR_DEVICES \
      -np "$np" "$build/mpi_test_gpu" "$@" > "$log" 2>&1
  rc=$?
  set -e
  case $rc in
    0) log "PASS mpi_test_gpu $what: $(tail -1 "$log")" ;;
    77) log "skipped mpi_test_gpu $what: $(grep -m1 'skipped' "$log")" ;;
    *) log "FAIL mpi_test_gpu $what (exit $rc)"; tail -40 "$log"; status=1 ;;
  esac
}
if [ -n "$mpirun" ]; then
  # Two ranks on the one GPU, their exchanges staged through the host over MPI.
  mpi_ranks 2 "$build/mpi_test_gpu.log" "(2 ranks on one GPU, host-staged)"
  # One rank per GPU through NCCL (--distributed-backend nccl): as many ranks as GPUs, up to 4 (on
  # one GPU, one rank: every call still goes through NCCL, nothing crosses GPUs); under the
  # emulator, two emulated GPUs.
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "$emulate" = 1 ] && { gpus=2; export AMPIPE_GPU_EMULATOR_DEVICES=2; }
  if [ "${gpus:-0}" -ge 1 ]; then
    np=$(( gpus < 4 ? gpus : 4 ))
    mpi_ranks "$np" "$build/mpi_test_gpu_nccl.log" "--distributed-backend=nccl ($np rank(s), one GPU each)" \
      --distributed-backend=nccl
    [ "$np" -lt 2 ] && log "NCCL between GPUs not checked: one GPU (NCCL takes one rank per GPU)"
    unset AMPIPE_GPU_EMULATOR_DEVICES
  else
    log "skipped mpi_test_gpu (nccl): no GPU"
  fi
else
  log "mpi_test_gpu not run: no mpirun (carry .gpu-deps)"
fi
reason=$(grep -h -A1 ': Skipped$' "$build"/test_cuda_*.log 2>/dev/null | grep -v 'Skipped$' | grep -v '^--' | sort | uniq -c | sort -rn | head -1 || true)
[ -n "$reason" ] && log "GPU tests skipped: $reason"

log "benchmark: GEMM and attention on the GPU"
bench_json=${out:-$build}/bench_cuda_kernels.json
kernel_shape=()
[ "$emulate" = 1 ] && kernel_shape=(--gemm-size 256 --seq-length 128 256 --hidden-size 128 --num-attention-heads 2 --repeats 1)
if "$build/bench_cuda_kernels" --json "$bench_json" "${kernel_shape[@]}"; then :; else log "FAIL bench_cuda_kernels"; status=1; fi
# One block forward + backward (float32) against the same block in PyTorch on the same GPU.
if [ -z "$(cuda_reason)" ]; then
  shape=(--seq-length 8192 --hidden-size 2048 --num-attention-heads 16 --moe-num-experts 8 --moe-top-k 2)
  repeats=5
  [ "$emulate" = 1 ] && { shape=(--seq-length 256 --hidden-size 64 --num-attention-heads 4 --moe-num-experts 8 --moe-top-k 2); repeats=1; }
  block_json=${out:-$build}/bench_block.jsonl
  rm -f "$block_json"
  log "block: ampipe bench --device cuda ${shape[*]} (sequential and ampipe P=4)"
  "$build/ampipe" bench --device cuda "${shape[@]}" --schedule sequential,ampipe --pipe-degree 4 \
      --stage-order stage-major --repeats "$repeats" --json-out "$block_json" || { log "FAIL ampipe bench --device cuda"; status=1; }
  if [ "$emulate" = 1 ]; then
    log "block: PyTorch peer not run (emulated: PyTorch has no GPU here)"
  else
    log "block: PyTorch peer (bench/torch_block.py)"
    python3 bench/torch_block.py --device cuda "${shape[@]}" --repeats 5 --json-out "$block_json" ||
      log "PyTorch peer failed or skipped (exit $?)"
  fi
fi

# The default training run on each device, short: tokens/s and the validation loss.
if [ -s data/kjv.txt ] && [ -z "$(cuda_reason)" ]; then
  train_args=(--train-iters 200 --eval-interval 0)
  [ "$emulate" = 1 ] && train_args=(--train-iters 20 --eval-interval 0 --num-layers 2 --hidden-size 32
                                   --num-attention-heads 2 --ffn-hidden-size 64 --seq-length 32 --micro-batch-size 4)
  for device in cuda cpu; do
    log "train --device $device (${train_args[*]})"
    if "$build/ampipe" train --device "$device" "${train_args[@]}" \
        > "$build/train-$device.log" 2>&1; then
      grep -E 'tok/s' "$build/train-$device.log" | tail -1 | sed "s/^/gpu_check: $device: /"
      grep -iE 'validation' "$build/train-$device.log" | tail -1 | sed "s/^/gpu_check: $device: /"
    else
      log "FAIL train --device $device"; tail -20 "$build/train-$device.log"; status=1
    fi
  done
else
  log "train comparison skipped: $( [ -s data/kjv.txt ] || echo 'no data/kjv.txt (carry data/)'; cuda_reason)"
fi
log "done in $(( $(date +%s) - start )) s, status $status"
exit $status
