#!/usr/bin/env bash
# Fuzzes every parser of outside input with libFuzzer (tests/fuzz/fuzz_*.cpp; docs in
# tests/fuzz/CMakeLists.txt and each harness's opening comment).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_HARNESS [HARNESS...]]   (default 10 s, every harness)
#        scripts/fuzz.sh --seeds    regenerates the writer-made seeds in tests/fuzz/corpus
#
# Configures and builds build-fuzz with clang (AMPIPE_FUZZ=ON: ASan+UBSan+coverage, no tests or
# benches), then runs each harness for SECONDS over a fresh copy of its seeds (build-fuzz/fuzz-corpus/
# NAME; the repository's corpus is never written), with -timeout=10, -rss_limit_mb=2048 and
# -malloc_limit_mb=2048. Prints per harness the executions and the coverage (cov: edges, ft:
# features) from libFuzzer's final stats. Exits 1 if any harness finds a crash, a leak, a timeout or
# an out-of-memory, naming the input it saved under build-fuzz/fuzz-artifacts/; 2 on bad usage.
# Prints the time of each phase. Safe to run again; needs clang, libclang-rt-dev and libomp-dev
# (scripts/setup.sh). AMPIPE_FUZZ_SEED=N fixes libFuzzer's random seed (CI does, so that its short
# run is repeatable); unset, every run explores afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=$root/build-fuzz
jobs=$(nproc)

source scripts/phase.sh

configure_build() {  # configure_build TARGET...
  CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAMPIPE_FUZZ=ON \
    -DAMPIPE_BUILD_TESTS=OFF > /dev/null
  cmake --build "$build" -j"$jobs" --target "$@"
}

if [[ ${1:-} == --seeds ]]; then
  phase build configure_build make_fuzz_seeds
  phase seeds "$build/tests/fuzz/make_fuzz_seeds" "$root/tests/fuzz/corpus"
  exit 0
fi

seconds=${1:-10}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_HARNESS [HARNESS...]] | --seeds" >&2
  exit 2
fi
shift || true
if (($#)); then
  harnesses=("$@")
else
  harnesses=()
  for src in tests/fuzz/fuzz_*.cpp; do harnesses+=("$(basename "$src" .cpp)"); done
fi
for h in "${harnesses[@]}"; do
  if [[ ! -f tests/fuzz/$h.cpp ]]; then
    echo "fuzz.sh: no harness tests/fuzz/$h.cpp" >&2
    exit 2
  fi
done

phase build configure_build ampipe_fuzzers

# The harnesses' scratch files ($TMPDIR/ampipe-fuzz-PID) stay inside the build directory.
export TMPDIR=$build/fuzz-tmp
mkdir -p "$TMPDIR" "$build/fuzz-artifacts"
# One OpenMP thread: the parsers are serial, and 2 cores are shared by the harnesses' runs.
export OMP_NUM_THREADS=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

failed=()
summary=()
run_harness() {  # run_harness NAME
  local h=$1 name=${1#fuzz_}
  local corpus=$build/fuzz-corpus/$name log=$build/fuzz-logs/$h.log
  rm -rf "$corpus"
  mkdir -p "$corpus" "$build/fuzz-logs"
  if [[ -d tests/fuzz/corpus/$name ]]; then cp -R "tests/fuzz/corpus/$name/." "$corpus/"; fi
  local extra=()
  case $name in
    profile | checkpoint_config | hf_config | safetensors | sharded_index) extra+=("-dict=$root/tests/fuzz/json.dict") ;;
  esac
  local rc=0
  # libFuzzer stops itself at -max_total_time; the outer timeout only guards against a wedged run.
  timeout --signal=KILL $((seconds + 120)) "$build/tests/fuzz/$h" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 ${AMPIPE_FUZZ_SEED:+-seed=$AMPIPE_FUZZ_SEED} \
    -artifact_prefix="$build/fuzz-artifacts/$h-" "${extra[@]}" "$corpus" > "$log" 2>&1 || rc=$?
  local execs cov ft
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  local line
  line=$(printf '%-28s executions %-10s cov %-6s ft %-6s' "$h" "${execs:-?}" "${cov:-?}" "${ft:-?}")
  if ((rc != 0)); then
    local artifact
    artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
    # A timeout is checked by running its input again alone: on a loaded machine a process can stall
    # for seconds anywhere (seen in operator new and open() on inputs that run in 1 ms). One that
    # finishes within the limit on the rerun is reported and not counted as a finding.
    if [[ $artifact == *"/$h-timeout-"* ]] &&
      timeout --signal=KILL 120 "$build/tests/fuzz/$h" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        "$artifact" > "$log.rerun" 2>&1; then
      line+=" (timeout not reproduced: $artifact ran within the limit alone; a stall, not counted)"
    else
      line+=" FAILED (exit $rc): ${artifact:-no input saved} (log $log)"
      failed+=("$h")
      grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz finding|terminate called|  what\(\)|.*runtime error)' "$log" |
        head -5 || true
    fi
  fi
  echo "$line"
  summary+=("$line")
}

for h in "${harnesses[@]}"; do
  phase "$h (${seconds} s)" run_harness "$h"
done

echo "== summary (${seconds} s per harness)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz.sh: findings in ${failed[*]}; inputs under $build/fuzz-artifacts/" >&2
  exit 1
fi
echo "fuzz.sh: no findings"
