#!/usr/bin/env bash
# bench_grid.sh RATE [OUT_DIR]: the reference grid of docs/BENCHMARKS.md at one link rate, with the
# planner: calibrates this machine on that link (profiles/cpu-2rank-RATE.json), then runs `ampipe
# bench` over N x d x k with sequential, moe-pipe and ampipe at P in {2,4,8} (stage-major) and the
# planner's choice (auto), each case with the planner's predicted time next to the measured one.
# 2 ranks x 1 thread, E=4, through scripts/netem.sh (RATE: e.g. 200mbit, 1gbit, unshaped).
# Writes OUT_DIR/grid-RATE.jsonl and OUT_DIR/grid-RATE.txt (the table). REPEATS (default 2) timed
# repeats per case after one warm-up. Takes 20-30 minutes on 2 cores at REPEATS=2.
set -euo pipefail
RATE=${1:?usage: scripts/bench_grid.sh RATE [OUT_DIR]}
OUT=${2:-results}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
MPI="mpirun --oversubscribe --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 2"
bash scripts/netem.sh --rate "$RATE" -- $MPI ./build/ampipe plan --calibrate --threads 1 \
  --name "cpu-2rank-$RATE" --out "profiles/cpu-2rank-$RATE.json"
bash scripts/netem.sh --rate "$RATE" -- $MPI ./build/ampipe bench \
  --seq-length 1024,2048,4096,8192 --hidden-size 256,512,1024 --moe-top-k 1,2 --moe-num-experts 4 \
  --threads 1 --warmup 1 --repeats "${REPEATS:-2}" --schedule sequential,moe-pipe,ampipe,auto --pipe-degree 2,4,8 \
  --stage-order stage-major --hardware "profiles/cpu-2rank-$RATE.json" --json-out "$OUT/grid-$RATE.jsonl" \
  | tee "$OUT/grid-$RATE.txt"
