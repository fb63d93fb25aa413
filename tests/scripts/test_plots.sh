#!/usr/bin/env bash
# Smoke test of scripts/plot_bench.py and scripts/plot_metrics.py on small JSON Lines written here:
# the PNGs exist, are not empty and start with the PNG signature; a file without predicted_ms gets
# no planner plot; a missing, empty or bad file is refused with exit 2 and a line naming it.
# Exits 77 (skipped) where neither /usr/bin/python3 nor python3 imports matplotlib
# (Debian: apt-get install python3-matplotlib).
# Usage: test_plots.sh [SRC_DIR]   (the repository root; about 5 s)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-$here/../..}
bench_py=$src/scripts/plot_bench.py
metrics_py=$src/scripts/plot_metrics.py
for f in "$bench_py" "$metrics_py"; do
  [ -f "$f" ] || { echo "FAIL: no script at $f"; exit 1; }
done

py=""
for cand in /usr/bin/python3 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import matplotlib' >/dev/null 2>&1; then py=$cand; break; fi
done
if [ -z "$py" ]; then
  echo "SKIP: neither /usr/bin/python3 nor python3 imports matplotlib (apt-get install python3-matplotlib)"
  exit 77
fi

failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MPLCONFIGDIR=$work/mplconfig  # no writes to the home directory

# True if $1 is a non-empty file that starts with the 8-byte PNG signature.
is_png() {
  [ -s "$1" ] && [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]
}
check_png() {  # $1: path, $2: what it is
  if is_png "$1"; then pass "$2: $(basename "$1") is a PNG ($(wc -c < "$1") bytes)"; else fail "$2: $1 missing, empty or not a PNG"; fi
}

# --- bench rows: 2 N x 2 k at one link, every schedule, predicted_ms on all but one row ---
"$py" - "$work/bench.jsonl" "$work/nopred.jsonl" <<'EOF'
import json, sys
rows = []
for n in (1024, 2048):
    for k in (1, 2):
        seq = 100.0 * n / 1024 * k
        cases = [("sequential", "sequential", 1, seq)]
        cases += [("moe-pipe", "moe-pipe", p, seq / (1.1 + 0.02 * p)) for p in (2, 4)]
        cases += [("ampipe", "ampipe", p, seq / (1.3 + 0.03 * p)) for p in (2, 4)]
        cases += [("auto", "ampipe", 4, seq / 1.4)]
        for sched, planned, p, t in cases:
            rows.append({"seq_length": n, "hidden_size": 256, "top_k": k, "link": "200mbit", "schedule": sched,
                         "planned_schedule": planned, "pipe_degree": p, "moe_pipe_degree": p,
                         "stage_order": "-" if p == 1 else "stage-major", "chunk_policy": "-",
                         "time_ms": t, "speedup_vs_sequential": seq / t, "predicted_ms": t * 1.05,
                         "efficiency": 0.8, "heads": 4, "num_experts": 4, "ffn_hidden_size": 1024})
del rows[3]["predicted_ms"]
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
with open(sys.argv[2], "w") as f:  # one N, family mixtral, no predictions at all
    for r in rows[:6]:
        r = dict(r, family="mixtral")
        r.pop("predicted_ms", None)
        f.write(json.dumps(r) + "\n")
EOF

out=$work/plots
log=$work/bench.log
if "$py" "$bench_py" "$work/bench.jsonl" "$work/nopred.jsonl" --out "$out" >"$log" 2>&1; then
  pass "plot_bench.py exits 0"
else
  fail "plot_bench.py exited $?"; cat "$log"
fi
check_png "$out/speedup-bench.png" "speedup across N"
check_png "$out/planner-bench.png" "planner against measured"
check_png "$out/speedup-nopred.png" "speedup at one N (bars)"
if [ ! -e "$out/planner-nopred.png" ] && grep -q "nopred.jsonl.*no predicted_ms" "$log"; then
  pass "no predicted_ms: no planner plot, and a note says so"
else
  fail "a file without predicted_ms: expected no planner-nopred.png and a note"; cat "$log"
fi
if grep -q "planner-bench.png: median |error| 5.0%" "$log"; then
  pass "median |error| printed (5.0%)"
else
  fail "expected 'median |error| 5.0%' for predictions 5% high"; cat "$log"
fi

# --- metrics: two runs, validation every 100 iterations ---
"$py" - "$work/a.jsonl" "$work/b.jsonl" <<'EOF'
import json, math, sys
for path, scale in zip(sys.argv[1:], (1.0, 0.95)):
    with open(path, "w") as f:
        for it in range(10, 401, 10):
            r = {"iter": it, "loss": scale * (1.2 + 2.0 * math.exp(-it / 100)), "lr": 1e-3, "tokens_per_sec": 1e4}
            if it % 100 == 0:
                r["val_loss"] = r["loss"] + 0.1
            f.write(json.dumps(r) + "\n")
EOF
log=$work/metrics.log
if "$py" "$metrics_py" "$work/a.jsonl" "$work/b.jsonl" --label A --label B --out "$work/m/loss.png" >"$log" 2>&1; then
  pass "plot_metrics.py exits 0"
else
  fail "plot_metrics.py exited $?"; cat "$log"
fi
check_png "$work/m/loss.png" "loss curve by iteration"
if "$py" "$metrics_py" "$work/a.jsonl" --tokens-per-iter 2048 --out "$work/m/tokens.png" >"$log" 2>&1; then
  check_png "$work/m/tokens.png" "loss curve by tokens"
else
  fail "plot_metrics.py --tokens-per-iter exited $?"; cat "$log"
fi

# --- bad input: exit 2, one line naming the file ---
: > "$work/empty.jsonl"
printf '{"iter": 1, "loss": 2.0}\nnot json\n' > "$work/bad.jsonl"
printf '{"iter": 1, "lr": 0.1}\n' > "$work/nokeys.jsonl"
expect_refused() {  # $1: script, $2: the file
  local out status
  out=$("$py" "$1" "$2" --out "$work/refused/$(basename "$1" .py).png" 2>&1); status=$?
  if [ "$status" -eq 2 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && grep -qF -- "$2" <<<"$out"; then
    pass "$(basename "$1") refuses $(basename "$2") (exit 2: $out)"
  else
    fail "$(basename "$1") on $2: expected exit 2 and one line naming it, got exit $status: $out"
  fi
}
for script in "$bench_py" "$metrics_py"; do
  expect_refused "$script" "$work/missing.jsonl"
  expect_refused "$script" "$work/empty.jsonl"
  expect_refused "$script" "$work/bad.jsonl"
  expect_refused "$script" "$work/nokeys.jsonl"
done
expect_refused "$bench_py" "$work/a.jsonl"       # metrics, not bench rows
expect_refused "$metrics_py" "$work/bench.jsonl"  # bench rows, not metrics
if [ ! -e "$work/refused" ] || [ -z "$(ls -A "$work/refused")" ]; then
  pass "nothing written for a refused file"
else
  fail "refused files left output: $(ls "$work/refused")"
fi

for script in "$bench_py" "$metrics_py"; do
  if "$py" "$script" --help 2>&1 | grep -q -- "--out"; then pass "$(basename "$script") --help"; else fail "$(basename "$script") --help"; fi
done

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all plot checks passed"
