#!/usr/bin/env bash
# plan_study.sh [TOP_K]: the study table of docs/RESULTS.md: the planner's predicted speedup of the best
# ampipe over sequential and over the best moe-pipe, for one MoE block (d=2048, 32 heads, f=8192,
# E=64, B=1) on the shipped GPU profiles, sequence lengths 2K-32K, expert-parallel groups of 8-64 GPUs.
set -euo pipefail
K=${1:-2}
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PROFILES="a100-8gpu-100gbit a100-8gpu-400gbit h100-8gpu-100gbit h100-8gpu-400gbit"
for p in $PROFILES; do
  ./build/ampipe plan --hardware "$p" --ranks 8,16,32,64 --seq-length 2048,4096,8192,16384,32768 \
    --hidden-size 2048 --moe-num-experts 64 --moe-top-k "$K" --json-out "$TMP/$p.jsonl" > /dev/null
done
python3 - "$TMP" $PROFILES <<'PY'
import json, sys
tmp, profs = sys.argv[1], sys.argv[2:]
rows = {}
for p in profs:
    for line in open(f"{tmp}/{p}.jsonl"):
        j = json.loads(line)
        rows.setdefault((j["seq_length"], j["ranks"]), {})[p] = j
print("| N | GPUs (EP) | " + " | ".join(profs) + " |")
print("|---|---|" + "---|" * len(profs))
for (N, R), d in sorted(rows.items()):
    cells = []
    for p in profs:
        j = d[p]
        am = j["best_ampipe_ms"]
        moe = min(s["predicted_ms"] for s in j["schedules"] if s["schedule"] == "moe-pipe")
        cells.append(f"{j['sequential_ms'] / am:.2f}x / {moe / am:.2f}x")
    print(f"| {N} | {R} | " + " | ".join(cells) + " |")
PY
