#!/usr/bin/env bash
# The NCCL backend in trouble (comm/nccl_communicator.h), one GPU per rank (emulated ones in CI):
# - a rank stopped (SIGSTOP) inside an NCCL all_to_all_v: the others end the job at the deadline
#   (--distributed-timeout-minutes), with ncclCommAbort, naming the call and, for two ranks, the rank;
# - an asynchronous NCCL error on one rank (the emulator's AMPIPE_GPU_EMULATOR_NCCL_ERROR): that rank
#   ends every rank's job at once, naming the call and the error.
# Usage: run_nccl_fault_test.sh PROGRAM MPIEXEC [MPIEXEC FLAGS...]   (PROGRAM: nccl_fault_program)
set -uo pipefail
program=$1; shift
mpiexec=("$@")
failures=0
source "$(dirname "$0")/fault_checks.sh"

# run_case NAME NP MODE DEADLINE MAX_SECONDS EXPECTED_LINE... : runs the program, checks the exit
# status, the time taken and stderr's lines.
run_case() {
  local name=$1 np=$2 mode=$3 deadline=$4 max=$5
  shift 5
  local start=$SECONDS out status
  # Rank ERROR_RANK (if set) gets the emulator's async-error hook; the others do not.
  out=$(timeout 120 "${mpiexec[@]}" -x AMPIPE_INJECT_COMM_STOP -x AMPIPE_GPU_EMULATOR_DEVICES -x ERROR_RANK \
    -np "$np" bash -c 'if [ "${OMPI_COMM_WORLD_RANK:-}" = "${ERROR_RANK:-none}" ]; then
                         export AMPIPE_GPU_EMULATOR_NCCL_ERROR=1; fi; exec "$0" "$@"' \
    "$program" "$mode" "$deadline" 2>&1)
  status=$?
  check_case "$name" "$status" $((SECONDS - start)) "$max" "$deadline" "$out" "$@"
}

export ERROR_RANK=none
# The process's collectives before the all_to_all_v: the world's split for the NCCL group's own MPI
# group (1), the unique id's broadcast (2) and the init verdict (3) over it, barrier (4); the
# all_to_all_v's agreement is the 5th: the rank stops right after it.
export AMPIPE_INJECT_COMM_STOP=1:5
run_case inside-2 2 inside 3 30 \
  "AMPIPE_INJECT_COMM_STOP: stopping inside collective 5" \
  "ampipe: rank 0: error: all_to_all_v on rank 0 of 2 (nccl, call #1 of this group): every rank entered it but its data did not move within 3 s (--distributed-timeout-minutes): rank 1 stopped or died inside it"
export AMPIPE_INJECT_COMM_STOP=2:5
run_case inside-3 3 inside 3 30 "error: all_to_all_v on rank 0 of 3 (nccl" "a rank (NCCL does not say which) stopped or died inside it"
export AMPIPE_INJECT_COMM_STOP=
export ERROR_RANK=1
run_case async-2 2 async 60 30 \
  "ampipe: rank 1: error: all_to_all_v on rank 1 of 2 (nccl, call #1 of this group): NCCL reported an asynchronous error"
if pgrep -f "$program (inside|async) " > /dev/null; then
  echo "FAIL: processes of $program are still alive:"; pgrep -af "$program (inside|async) "; failures=$((failures + 1))
  pkill -KILL -f "$program (inside|async) "
fi
[ "$failures" -eq 0 ] && echo "run_nccl_fault_test: PASS" || { echo "run_nccl_fault_test: $failures case(s) failed"; exit 1; }
