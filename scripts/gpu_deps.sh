#!/usr/bin/env bash
# Downloads, as .deb files into .gpu-deps/ (ignored by git), the Debian packages that the build and
# the GPU tests need beyond what a bare GPU machine has (nvcc, CMake, ninja, a C++ compiler):
# OpenBLAS, oneDNN, Open MPI, SentencePiece, GoogleTest, CLI11, nlohmann-json and their libraries
# (~28 MB). oneDNN's runtime (libdnnl2) links the OpenCL loader (ocl-icd-libopencl1), which a bare
# machine lacks; its libgomp and libstdc++ come with the compiler.
# scripts/gpu_check.sh unpacks them into a private prefix there. Run here once, where apt works:
#   bash scripts/gpu_deps.sh
# then name .gpu-deps in the device tool's `carry` (docs/GPU.md).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(
  libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0
  libdnnl2 libdnnl-dev ocl-icd-libopencl1
  libopenmpi3 libopenmpi-dev openmpi-common openmpi-bin libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libevent-2.1-7 libpmix2 libfabric1 libucx0 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200
  libpsm2-2 libpsm-infinipath1 libnuma1
  libsentencepiece0 libsentencepiece-dev libprotobuf-lite32
  libgtest-dev libcli11-dev nlohmann-json3-dev
)
mkdir -p .gpu-deps
cd .gpu-deps
rm -f ./*.deb
apt-get download "${packages[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
n=$(ls ./*.deb | wc -l)
[ "$n" -eq "${#packages[@]}" ] || { echo "gpu_deps: got $n of ${#packages[@]} packages" >&2; exit 1; }
echo "gpu_deps: $n packages, $(du -sh . | cut -f1) in .gpu-deps/"
