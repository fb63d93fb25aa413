#!/usr/bin/env bash
# The collective deadline (MpiCommunicator::Options::timeout_seconds, --distributed-timeout-minutes):
# a rank stopped with SIGSTOP before or inside a collective must not hang the job; the others end it
# within the deadline (plus start-up and MPI_Abort's teardown), naming the stopped rank and the call.
# Usage: run_timeout_test.sh PROGRAM MPIEXEC [MPIEXEC FLAGS...]   (PROGRAM: mpi_timeout_program)
set -uo pipefail
program=$1; shift
mpiexec=("$@")
deadline=2
failures=0
source "$(dirname "$0")/fault_checks.sh"

# run_case NAME NP MODE EXPECTED_LINE... : runs the program, checks status, time and stderr lines.
run_case() {
  local name=$1 np=$2 mode=$3
  shift 3
  local start=$SECONDS out status
  out=$(timeout 60 "${mpiexec[@]}" -x AMPIPE_INJECT_COMM_STOP -np "$np" "$program" "$mode" "$deadline" 2>&1)
  status=$?
  # A call may return only after the deadline (when mpirun's teardown resumes the stopped rank).
  check_case "$name" "$status" $((SECONDS - start)) $((deadline + 20)) "$deadline" "$out" "$@"
}

export AMPIPE_INJECT_COMM_STOP=
run_case absent-2 2 absent \
  "ampipe: rank 0: error: all_reduce_sum(double) on rank 0 of 2 (collective #1 of this group): rank 1 did not enter it" \
  "within 2 s (--distributed-timeout-minutes)"
run_case absent-3 3 absent "rank 2 did not enter it"
# Rank 1's second collective (barrier is the first) is the all_to_all_v: it stops after the agreement.
export AMPIPE_INJECT_COMM_STOP=1:2
run_case inside-2 2 inside \
  "AMPIPE_INJECT_COMM_STOP: stopping inside collective 2" \
  "ampipe: rank 0: error: all_to_all_v on rank 0 of 2 (collective #2 of this group): every rank entered it but the data of rank 1 did not move"
export AMPIPE_INJECT_COMM_STOP=2:2
run_case inside-3 3 inside "but the data of rank 2 did not move"
# No stopped process may outlive the job.
if pgrep -f "^$program " > /dev/null; then
  echo "FAIL: processes of $program are still alive:"; pgrep -af "^$program "; failures=$((failures + 1))
  pkill -KILL -f "^$program "
fi
[ "$failures" -eq 0 ] && echo "run_timeout_test: PASS" || { echo "run_timeout_test: $failures case(s) failed"; exit 1; }
