#!/usr/bin/env bash
# A stuck or dead rank never hangs a training job (docs/USAGE.md, "A stuck or dead rank"):
# - SIGSTOP of one rank of a 2-rank job at a random moment: the other rank ends the job within the
#   deadline (--distributed-timeout-minutes 0.05 = 3 s, plus teardown), naming the stopped rank and
#   the collective; no process is left behind. Rounds alternate the stopped rank.
# - SIGKILL of one rank (the default 10-minute deadline): the job ends within seconds.
# Usage: test_stalled_rank.sh AMPIPE_BINARY MPIEXEC [MPIEXEC FLAGS...]
set -uo pipefail
bin=$1
shift
mpiexec=("$@")
work=$(mktemp -d)
jobs_started=()
cleanup() {
  local p
  for p in "${jobs_started[@]}"; do kill -KILL -- "-$p" 2> /dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
for i in $(seq 300); do printf 'In the beginning God created the heaven and the earth. And the earth was without form. '; done > "$work/corpus.txt"
rounds=${AMPIPE_STALL_ROUNDS:-2}
deadline_s=3
# Each rank writes its pid to $work/pids/rank<R>.pid and then becomes ampipe (exec keeps the pid).
# (Not a scan of /proc: reading the busy ranks' /proc files can block for long on a loaded machine.)
mkdir -p "$work/pids"
train=("${mpiexec[@]}" -np 2 sh -c 'echo $$ > "$0/rank$OMPI_COMM_WORLD_RANK.pid" && exec "$@"' "$work/pids"
       "$bin" train --num-layers 2 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 48
       --seq-length 64 --moe-num-experts 2 --moe-top-k 1 --micro-batch-size 2 --train-iters 1000000 --eval-interval 0
       --eval-iters 1 --log-interval 1 --threads 1 --schedule ampipe --pipe-degree 2 --data-path "$work/corpus.txt")
rank_pid() { cat "$work/pids/rank$1.pid" 2> /dev/null; }
alive() { [ -e "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2> /dev/null; }
# start_job LOG ARGS...: the job in its own session (so cleanup reaches every process); sets $job.
start_job() {
  local log=$1
  shift
  # timeout(1): a job never outlives the test, even one killed from outside (ctest's TIMEOUT).
  rm -f "$work"/pids/*.pid
  setsid timeout -s KILL 200 "${train[@]}" "$@" > "$log" 2>&1 &
  job=$!
  jobs_started+=("$job")
}
# wait_progress LOG: until the job has logged 3 iterations (two minutes at most: start-up under
# mpirun on a loaded machine can take a while).
wait_progress() {
  local until=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$until" ]; do
    [ "$(grep -c '^iter ' "$1")" -ge 3 ] && return 0
    alive "$job" || return 1
    sleep 0.1
  done
  return 1
}
# wait_end SECONDS: waits for $job to end; sets $status to its exit status, or "hung".
wait_end() {
  local until=$((SECONDS + $1))
  status=hung
  while [ "$SECONDS" -lt "$until" ]; do
    if ! alive "$job"; then wait "$job"; status=$?; return; fi
    sleep 0.1
  done
}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

for round in $(seq "$rounds"); do
  victim=$(( round % 2 ))
  other=$(( 1 - victim ))
  log="$work/stop$round.log"
  t_start=$SECONDS
  start_job "$log" --distributed-timeout-minutes 0.05
  wait_progress "$log" || { tail -5 "$log"; fail "round $round: the job made no progress"; continue; }
  echo "round $round: 3 iterations logged after $((SECONDS - t_start)) s"
  sleep "0.$(( RANDOM % 10 ))"
  pid=$(rank_pid "$victim")
  [ -n "$pid" ] || { fail "round $round: no process of rank $victim"; continue; }
  kill -STOP "$pid"
  t0=$(date +%s%N)
  wait_end $(( deadline_s + 30 ))
  elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  line=$(grep -m1 "ampipe: rank $other: error: " "$log")
  echo "round $round: stopped rank $victim at iteration $(grep -c '^iter ' "$log"); job ended ($status) after ${elapsed_ms} ms: $line"
  if [ "$status" = hung ]; then fail "round $round: the job hung"; kill -KILL -- "-$job"; continue; fi
  [ "$status" -ne 0 ] || fail "round $round: exit status 0"
  [ "$elapsed_ms" -le $(( (deadline_s + 20) * 1000 )) ] || fail "round $round: ${elapsed_ms} ms > deadline + 20 s"
  printf '%s\n' "$line" | grep -qE "(rank $victim did not enter it|data of rank $victim did not move|: rank $victim\))" ||
    fail "round $round: the error does not name rank $victim: $(tail -5 "$log")"
  printf '%s\n' "$line" | grep -q "within 3 s (--distributed-timeout-minutes)" || fail "round $round: no deadline in the message"
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && fail "round $round: the stopped rank $victim (pid $pid) outlived the job"
done

for round in $(seq 2); do
  victim=$(( round % 2 ))
  log="$work/kill$round.log"
  t_start=$SECONDS
  start_job "$log"  # the default deadline (10 minutes): it is mpirun that ends the job
  wait_progress "$log" || { tail -5 "$log"; fail "kill round $round: the job made no progress"; continue; }
  echo "kill round $round: 3 iterations logged after $((SECONDS - t_start)) s"
  sleep "0.$(( RANDOM % 10 ))"
  pid=$(rank_pid "$victim")
  [ -n "$pid" ] || { fail "kill round $round: no process of rank $victim"; continue; }
  kill -KILL "$pid"
  t0=$(date +%s%N)
  wait_end 30
  elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "kill round $round: killed rank $victim; job ended ($status) after ${elapsed_ms} ms"
  if [ "$status" = hung ]; then fail "kill round $round: the job did not end within 30 s"; kill -KILL -- "-$job"; continue; fi
  [ "$status" -ne 0 ] || fail "kill round $round: exit status 0"
  [ "$elapsed_ms" -le 10000 ] || fail "kill round $round: ${elapsed_ms} ms > 10 s"
done
[ "$failures" -eq 0 ] && echo "stalled and killed ranks ended the job: PASS" || { echo "$failures check(s) failed"; exit 1; }
