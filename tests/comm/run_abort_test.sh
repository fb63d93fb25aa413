#!/bin/sh
# Runs mpi_abort_program under the mpiexec command line given as arguments and checks that the job
# ended the way Communicator::abort promises: exit status 3 (the code rank 1 passed), the line
# "ampipe: rank 1: injected failure" on stderr, and rank 0 never getting out of its barrier.
# (CTest's TIMEOUT catches the other failure: a job that hangs.)
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
echo "run_abort_test: mpiexec exit status $rc"
if [ "$rc" -ne 3 ]; then
  echo "run_abort_test: FAIL: expected exit status 3, the code given to abort()"
  exit 1
fi
if ! printf '%s\n' "$out" | grep -q "ampipe: rank 1: injected failure"; then
  echo "run_abort_test: FAIL: no 'ampipe: rank 1: injected failure' line"
  exit 1
fi
if printf '%s\n' "$out" | grep -q "barrier returned"; then
  echo "run_abort_test: FAIL: rank 0 got out of its barrier"
  exit 1
fi
echo "run_abort_test: PASS"
