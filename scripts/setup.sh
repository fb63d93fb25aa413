#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the default training run need, then
# writes the default corpus to data/kjv.txt. Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev libopenblas0-openmp   # GEMM; the OpenMP build shares our kernel thread pool
  libdnnl-dev                                  # oneDNN: bf16 GEMM with float32 accumulation and run-time
                                               # ISA dispatch (kernels/cpu/gemm_bf16.cpp); Debian's
                                               # OpenBLAS has no bf16 GEMM (sbgemm)
  libopenmpi-dev openmpi-bin                   # collectives and mpirun
  libgtest-dev googletest                      # tests
  libcli11-dev nlohmann-json3-dev              # command line, JSON
  libsentencepiece-dev sentencepiece           # subword tokenizers (train/tokenizer.cpp), spm_* tools
  libboost-context-dev                         # the GPU emulator's fibers (-DAMPIPE_CUDA=EMULATE)
  iproute2                                     # ip netns, tc: scripts/netem.sh (emulated interconnect)
  clang libclang-rt-dev libomp-dev             # scripts/fuzz.sh: clang with libFuzzer and the sanitizer
                                               # runtimes, and clang's OpenMP (AMPIPE_FUZZ=ON build)
  bible-kjv                                    # the default corpus
  python3                                      # test scripts
  python3-torch                                # the independent PyTorch reference of the Mixtral family
                                               # (tests/scripts/mixtral_reference.py; ~150 MB, CPU only)
  python3-matplotlib                           # pictures: scripts/plot_bench.py, scripts/plot_metrics.py
                                               # (Debian's /usr/bin/python3; docs/PLOTS.md)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

mkdir -p data
if [ ! -s data/kjv.txt ]; then
  echo "setup: writing the King James Bible to data/kjv.txt"
  bible "Gen1:1-Rev22:21" > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
echo "setup: data/kjv.txt has $(wc -c < data/kjv.txt) bytes"
