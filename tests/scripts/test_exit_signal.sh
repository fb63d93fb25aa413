#!/usr/bin/env bash
# SIGTERM / SIGINT during training (docs/USAGE.md, "Preemption: SIGTERM and SIGINT"). With
# --exit-signal-handler a SIGTERM sent to one rank mid-run makes every rank stop after the same step:
# a complete checkpoint of that iteration is saved and named, the job exits 0, and the same command
# resumes from it. A second signal ends the run at once. Without the flag the signal ends the run
# at once and is named on stderr.
# Usage: test_exit_signal.sh AMPIPE_BINARY [RANKS [MPIEXEC MPIEXEC_FLAGS...]] (the kill tests' launcher)
set -uo pipefail
source "$(dirname "$0")/launcher.sh"
parse_launcher "$@"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 200); do printf 'In the beginning God created the heaven and the earth. And the earth was without form. '; done > "$work/corpus.txt"
failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
train=("${launcher[@]}" "$bin" train --num-layers 2 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32
       --seq-length 16 --moe-num-experts 4 --moe-top-k 2 --micro-batch-size 2 --train-iters 100000
       --lr-warmup-iters 0 --eval-iters 1 --eval-interval 0 --log-interval 1 --threads 1
       --data-path "$work/corpus.txt")

# Every process below PID (mpirun's ranks need not share its process group).
descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2> /dev/null); do echo "$c"; descendants "$c"; done; }
# The pid of the last-started ampipe rank of job PID (the job itself with one rank).
a_rank() {
  local p last=$1
  for p in $(descendants "$1"); do [ "$(cat "/proc/$p/comm" 2> /dev/null)" = ampipe ] && last=$p; done
  echo "$last"
}
# Waits (up to 60 s) until LOG shows a progress line: the job is training.
wait_training() { for _ in $(seq 600); do grep -q '^iter ' "$1" 2> /dev/null && return 0; sleep 0.1; done; return 1; }
# Waits (up to 60 s) for job PID; its exit status.
finish() { local pid=$1; for _ in $(seq 600); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done; wait "$pid"; }

# 1. --exit-signal-handler: SIGTERM to one rank -> checkpoint, message, exit 0; the same command resumes.
setsid "${train[@]}" --exit-signal-handler --save "$work/ckpt" --load "$work/ckpt" > "$work/graceful.log" 2>&1 &
job=$!
wait_training "$work/graceful.log" || fail "the job never started training: $(tail -5 "$work/graceful.log")"
kill -TERM "$(a_rank "$job")"
finish "$job"
rc=$?
line=$(grep -o 'received SIGTERM: exiting at iteration [0-9]* of 100000 (--exit-signal-handler), checkpoint iter_[0-9]* saved.*' "$work/graceful.log")
iter=$(echo "$line" | sed -n 's/.*exiting at iteration \([0-9]*\) .*/\1/p')
[ "$rc" -eq 0 ] && [ -n "$iter" ] && grep -q "^stopped early: $iter iterations" "$work/graceful.log" &&
  ! grep -q "^done:" "$work/graceful.log" && pass "SIGTERM with --exit-signal-handler: exit 0, '$line'" ||
  fail "SIGTERM with --exit-signal-handler: exit $rc, log: $(tail -5 "$work/graceful.log")"
if [ -n "$iter" ]; then
  [ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = "$iter" ] &&
    [ -f "$work/ckpt/$(printf 'iter_%07d' "$iter")/model.safetensors" ] &&
    pass "the checkpoint of iteration $iter is complete and latest" || fail "no complete checkpoint at iteration $iter"
  "${train[@]}" --train-iters $((iter + 2)) --override-opt_param-scheduler --save "$work/ckpt" --load "$work/ckpt" \
    > "$work/resume.log" 2>&1 && grep -q "resumed from .*$(printf 'iter_%07d' "$iter") at iteration $iter" "$work/resume.log" &&
    pass "the same command resumes from iteration $iter" || fail "resume: $(tail -5 "$work/resume.log")"
fi

# 2. Without the flag: the run ends at once, killed by the signal, and says which one.
setsid "${train[@]}" > "$work/plain.log" 2>&1 &
job=$!
wait_training "$work/plain.log" || fail "the job never started training"
kill -TERM "$(a_rank "$job")"
finish "$job"
rc=$?
[ "$rc" -ne 0 ] && grep -q "received SIGTERM: ending now, without a checkpoint" "$work/plain.log" &&
  pass "SIGTERM without the flag: exit $rc, named: $(grep -o 'received SIGTERM[^(]*' "$work/plain.log" | head -1)" ||
  fail "SIGTERM without the flag: exit $rc, log: $(tail -5 "$work/plain.log")"

# 3. A second signal before the step boundary ends the run at once (two distinct signals, so the
#    kernel cannot merge them into one).
if [ "$ranks" -eq 1 ]; then
  setsid "${train[@]}" --exit-signal-handler > "$work/twice.log" 2>&1 &
  job=$!
  wait_training "$work/twice.log" || fail "the job never started training"
  kill -TERM "$job"
  kill -INT "$job"
  finish "$job"
  rc=$?
  [ "$rc" -ge 129 ] && grep -q "a second signal: ending the run now" "$work/twice.log" &&
    pass "a second signal: exit $rc at once" || fail "a second signal: exit $rc, log: $(tail -5 "$work/twice.log")"
fi

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed ($ranks rank(s))"
