#!/usr/bin/env bash
# One rank failing mid-training ends the whole job with a non-zero status and a message naming the
# rank, instead of leaving the other rank waiting in a collective. CTest bounds the time.
# Usage: run_rank_failure.sh AMPIPE_BINARY MPIEXEC [MPIEXEC FLAGS...]
set -uo pipefail
bin=$1; shift
mpiexec=("$@")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 300); do printf 'And the LORD spake unto Moses, saying, Speak unto the children of Israel. '; done > "$dir/corpus.txt"
start=$(date +%s)
AMPIPE_INJECT_FAILURE=1:3 timeout 60 "${mpiexec[@]}" -x AMPIPE_INJECT_FAILURE -np 2 "$bin" train --num-layers 1 \
  --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 24 --seq-length 16 --moe-num-experts 2 \
  --micro-batch-size 2 --train-iters 50 --eval-iters 1 --threads 1 --data-path "$dir/corpus.txt" > "$dir/out.log" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
cat "$dir/out.log"
echo "exit status $status after ${elapsed}s"
if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then echo "FAIL: the job did not end with an error"; exit 1; fi
grep -q "rank 1: error: injected failure at iteration 3" "$dir/out.log" || { echo "FAIL: no message naming rank 1"; exit 1; }
echo "rank failure ended the job"
