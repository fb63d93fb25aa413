#!/usr/bin/env bash
# Measures the memory-for-scale features of docs/RESULTS.md ("Distributed optimizer and sharded
# checkpoints"): a 4-rank run of a ~71M-parameter model (d=512, 4 blocks, 8 experts of width 2048)
# with the plain and the distributed optimizer, saving its last iteration in the gathered and the
# sharded format. Prints, per case, rank 0's counted AdamW moments, its resident size after the
# first iteration (rss_mb of --metrics-file), and the save's wall time and rank 0's resident
# growth during it (the trainer's "saved checkpoint" line).
# Usage: scripts/memory_for_scale.sh [AMPIPE_BINARY] [RANKS]   (default build/ampipe, 4 ranks)
set -euo pipefail
bin=${1:-build/ampipe}
ranks=${2:-4}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 300); do printf 'In the beginning God created the heaven and the earth. '; done > "$work/corpus.txt"
model=(--num-layers 4 --hidden-size 512 --num-attention-heads 8 --ffn-hidden-size 2048 --moe-num-experts 8
       --seq-length 64 --micro-batch-size 1 --train-iters 2 --log-interval 1 --eval-interval 0 --eval-iters 1
       --threads 1 --data-path "$work/corpus.txt")
printf '%-6s %-12s %-9s | %12s %10s | %8s %18s\n' EP optimizer format "moments MiB" "rss MiB" "save s" "save resident MiB"
for ep in 1 "$ranks"; do
  for optimizer in plain distributed; do
    for format in gathered sharded; do
      flags=(--expert-model-parallel-size "$ep" --ckpt-format "$format" --save "$work/ckpt_${ep}_${optimizer}_${format}"
             --metrics-file "$work/m.jsonl")
      [ "$optimizer" = distributed ] && flags+=(--use-distributed-optimizer)
      rm -f "$work/m.jsonl"
      log=$(mpirun --oversubscribe -np "$ranks" "$bin" train "${model[@]}" "${flags[@]}" 2>&1) ||
        { echo "$log" | tail -5; exit 1; }
      params=$(echo "$log" | sed -n 's/.*, \([0-9]*\) parameters on this rank.*/\1/p')
      moments=$(echo "$log" | sed -n 's/.*rank 0 holds \([0-9.]*\) MiB of AdamW moments.*/\1/p')
      [ -n "$moments" ] || moments=$(awk -v p="$params" 'BEGIN { printf "%.2f", 2 * p * 4 / 1048576 }')
      rss=$(python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).readline())["rss_mb"]))' "$work/m.jsonl")
      save=$(echo "$log" | sed -n 's/.*saved checkpoint .*, \([0-9.]*\) s; resident \([0-9]*\) -> \([0-9]*\) MiB.*/\1 \2 \3/p' | tail -1)
      read -r seconds before after <<< "$save"
      printf '%-6s %-12s %-9s | %12s %10s | %8s %18s\n' "$ep" "$optimizer" "$format" "$moments" "$rss" "$seconds" \
        "$before -> $after"
    done
  done
done
