#!/usr/bin/env bash
# train_scope_table.sh RATE [ITERS] [OUT_DIR]: the default training run (ampipe train's defaults:
# 4 layers, d=128, N=128, 16 sequences per rank, E=4) on 2 ranks x 1 thread through
# scripts/netem.sh at RATE, chunked with ampipe P=4 (stage-major), in four variants: pipeline scope
# block or model, gradient reduction after the backward or overlapped with it (--overlap-grad-
# reduce); and sequential for reference. Each variant trains ITERS iterations (default 60) from the
# same seed; tokens/s is measured over iterations 11..ITERS (the first 10 warm up). Prints one
# markdown table and writes OUT_DIR/train-scope-RATE.txt (default results/). Every variant must reach
# the same training loss: the script says so, or fails.
set -euo pipefail
RATE=${1:?usage: scripts/train_scope_table.sh RATE [ITERS] [OUT_DIR]}
ITERS=${2:-60}
OUT=${3:-results}
cd "$(dirname "$0")/.."
(( ITERS > 10 )) || { echo "ITERS must be more than 10 (the first 10 are warm-up), got $ITERS" >&2; exit 2; }
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
MPI=(mpirun --oversubscribe --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 2)
if [ "$RATE" = none ]; then NETEM=(); MPI=(mpirun --oversubscribe -np 2); else NETEM=(bash scripts/netem.sh --rate "$RATE" --); fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
table="$OUT/train-scope-$RATE.txt"
{
  echo "| schedule | pipeline scope | gradient reduction | tokens/s | vs sequential | loss at $ITERS |"
  echo "|---|---|---|---|---|---|"
} > "$table"
seq_tps=""
first_loss=""
run() {  # name scope overlap(0/1) schedule-flags...
  local name=$1 scope=$2 overlap=$3; shift 3
  local flags=("$@" --pipeline-scope "$scope")
  [ "$overlap" = 1 ] && flags+=(--overlap-grad-reduce)
  echo "== $name: ${flags[*]}" >&2
  "${NETEM[@]}" "${MPI[@]}" ./build/ampipe train --threads 1 --train-iters "$ITERS" --eval-interval 0 --eval-iters 1 \
    --log-interval 1 --metrics-file "$work/$name.jsonl" "${flags[@]}" > "$work/$name.log" 2>&1 ||
    { cat "$work/$name.log" >&2; echo "FAIL: $name did not train" >&2; exit 1; }
  python3 - "$work/$name.jsonl" "$ITERS" <<'PY' > "$work/$name.stats"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
late = [r for r in rows if r["iter"] > 10]
# tokens/s of each logged iteration (log-interval 1): the harmonic mean is tokens over seconds
tps = len(late) / sum(1.0 / r["tokens_per_sec"] for r in late)
print(f"{tps:.0f} {rows[-1]['loss']:.6f}")
PY
  read -r tps loss < "$work/$name.stats"
  [ -z "$seq_tps" ] && seq_tps=$tps
  [ -z "$first_loss" ] && first_loss=$loss
  local red="after the backward"; [ "$overlap" = 1 ] && red="overlapped"
  local sched="${*}"; sched=${sched//--schedule /}; sched=${sched//--pipe-degree /P=}
  printf '| %s | %s | %s | %s | %.2fx | %s |\n' "$sched" "$scope" "$red" "$tps" \
    "$(python3 -c "print($tps / $seq_tps)")" "$loss" >> "$table"
  python3 -c "import sys; a, b = float('$loss'), float('$first_loss'); sys.exit(0 if abs(a - b) <= 2e-3 * abs(b) else 1)" ||
    { echo "FAIL: $name ends at loss $loss, sequential at $first_loss" >&2; exit 1; }
}
run sequential block 0 --schedule sequential
run block-after block 0 --schedule ampipe --pipe-degree 4
run block-overlap block 1 --schedule ampipe --pipe-degree 4
run model-after model 0 --schedule ampipe --pipe-degree 4
run model-overlap model 1 --schedule ampipe --pipe-degree 4
cat "$table"
echo "every variant ends at the same training loss (within 0.2%)"
