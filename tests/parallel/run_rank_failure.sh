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

# A non-finite loss on one rank only (AMPIPE_INJECT_NAN): the loss is reduced over the ranks, so
# every rank skips that update and the job finishes; with --abort-on-nan every rank ends, no hang.
args=(train --num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 24 --seq-length 16
  --moe-num-experts 2 --micro-batch-size 2 --train-iters 6 --eval-iters 1 --log-interval 1 --threads 1
  --data-path "$dir/corpus.txt")
AMPIPE_INJECT_NAN=1:3 timeout 60 "${mpiexec[@]}" -x AMPIPE_INJECT_NAN -np 2 "$bin" "${args[@]}" > "$dir/nan.log" 2>&1
status=$?
cat "$dir/nan.log"
[ "$status" -eq 0 ] || { echo "FAIL: a NaN on rank 1 ended the job (status $status) instead of skipping the update"; exit 1; }
grep -q "skipping this update" "$dir/nan.log" && grep -q "done: 6 iterations" "$dir/nan.log" ||
  { echo "FAIL: the update at iteration 3 was not skipped, or the job did not finish"; exit 1; }
AMPIPE_INJECT_NAN=1:3 timeout 60 "${mpiexec[@]}" -x AMPIPE_INJECT_NAN -np 2 "$bin" "${args[@]}" --abort-on-nan \
  > "$dir/abort.log" 2>&1
status=$?
cat "$dir/abort.log"
if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then echo "FAIL: --abort-on-nan did not end the job (status $status)"; exit 1; fi
grep -q "at iteration 3 (--abort-on-nan)" "$dir/abort.log" || { echo "FAIL: no --abort-on-nan message"; exit 1; }
echo "a NaN on one rank is skipped on every rank, or ends the job with --abort-on-nan"

# A task failing inside the whole-step pipeline (model scope, gradient reduction overlapped) on one
# rank, on the compute stream or on the comm stream (AMPIPE_INJECT_TASK_FAILURE): the job ends
# naming the rank and the task, no hang.
pipe=(train --num-layers 2 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 24 --seq-length 16
  --moe-num-experts 2 --micro-batch-size 2 --train-iters 50 --eval-iters 1 --threads 1 --schedule ampipe
  --pipe-degree 2 --pipeline-scope model --overlap-grad-reduce --data-path "$dir/corpus.txt")
for task in "experts bwd c1 L0" "grad reduce L1" "ln1+qkv chunk c1 L1"; do
  AMPIPE_INJECT_TASK_FAILURE="1:$task" timeout 60 "${mpiexec[@]}" -x AMPIPE_INJECT_TASK_FAILURE -np 2 "$bin" \
    "${pipe[@]}" > "$dir/task.log" 2>&1
  status=$?
  cat "$dir/task.log"
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then echo "FAIL: a failing '$task' did not end the job (status $status)"; exit 1; fi
  grep -q "rank 1: error: .*task '$task' failed: injected failure" "$dir/task.log" ||
    { echo "FAIL: no message naming rank 1 and the task '$task'"; exit 1; }
done
echo "a task failing inside the pipelined step ends the job, named"

# The same inside a paired step (--overlap-moe-expert-parallel-comm, one backward beside the next
# forward in one list): a backward task that first runs there, on either stream, ends the job named.
paired=("${pipe[@]}" --global-batch-size 8 --overlap-moe-expert-parallel-comm --delay-wgrad-compute
  --hardware cpu-2rank-200mbit)
for task in "experts wgrad c0 L1" "a2a combine bwd c1 L0"; do
  AMPIPE_INJECT_TASK_FAILURE="1:$task" timeout 60 "${mpiexec[@]}" -x AMPIPE_INJECT_TASK_FAILURE -np 2 "$bin" \
    "${paired[@]}" > "$dir/paired.log" 2>&1
  status=$?
  cat "$dir/paired.log"
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then echo "FAIL: a failing '$task' did not end the paired job (status $status)"; exit 1; fi
  grep -q "micro-batches: paired" "$dir/paired.log" || { echo "FAIL: the job did not pair its micro-batches"; exit 1; }
  grep -q "rank 1: error: .*task '$task' failed: injected failure" "$dir/paired.log" ||
    { echo "FAIL: no message naming rank 1 and the task '$task'"; exit 1; }
done
echo "a task failing inside a paired step ends the job, named"
