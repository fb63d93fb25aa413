# Sourced by the fault-injection scripts of tests/comm (run_timeout_test.sh, run_nccl_fault_test.sh):
# the checks of one case. The caller defines `failures` (a count this adds to).
#
# check_case NAME STATUS ELAPSED MAX DEADLINE OUTPUT [EXPECTED_LINE...]: the job must have ended with
# an error (not 0, not 124 = hung until timeout(1)) within MAX seconds, no call in trouble may have
# printed "returned after S s" with S below DEADLINE, and OUTPUT must contain every expected line.
check_case() {
  local name=$1 status=$2 elapsed=$3 max=$4 deadline=$5 out=$6
  shift 6
  printf '%s\n' "$out" | sed "s/^/  [$name] /"
  echo "[$name] exit status $status after ${elapsed}s (deadline ${deadline}s)"
  local ok=1
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "[$name] FAIL: the job did not end with an error (status $status; 124 = hung until timeout(1))"
    ok=0
  fi
  if [ "$elapsed" -gt "$max" ]; then
    echo "[$name] FAIL: took ${elapsed}s, more than ${max}s"
    ok=0
  fi
  local early
  early=$(printf '%s\n' "$out" | sed -n 's/.*returned after \([0-9.]*\) s.*/\1/p' |
    awk -v d="$deadline" '$1 < d { print }')
  if [ -n "$early" ]; then
    echo "[$name] FAIL: a call in trouble returned before the deadline (after $early s)"
    ok=0
  fi
  local line
  for line in "$@"; do
    if ! printf '%s\n' "$out" | grep -qF -- "$line"; then
      echo "[$name] FAIL: no line containing: $line"
      ok=0
    fi
  done
  if [ "$ok" -eq 1 ]; then echo "[$name] PASS"; else failures=$((failures + 1)); fi
}
