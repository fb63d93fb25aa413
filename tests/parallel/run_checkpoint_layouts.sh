#!/usr/bin/env bash
# A checkpoint written by 2 ranks (expert-parallel) loads on 1 and on 4 ranks and evaluates to the
# same loss. Usage: run_checkpoint_layouts.sh AMPIPE_BINARY MPIEXEC [MPIEXEC FLAGS...]
set -euo pipefail
bin=$1; shift
mpiexec=("$@")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 300); do printf 'And the LORD spake unto Moses, saying, Speak unto the children of Israel. '; done > "$dir/corpus.txt"
model="--num-layers 2 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 24 --seq-length 16 --moe-num-experts 4 --moe-top-k 2"
"${mpiexec[@]}" -np 2 "$bin" train $model --micro-batch-size 2 --train-iters 10 --lr-warmup-iters 0 --eval-iters 1 \
  --threads 1 --data-path "$dir/corpus.txt" --save "$dir/ckpt" > "$dir/train.log"
one=$("$bin" eval --load "$dir/ckpt" --data-path "$dir/corpus.txt" --threads 1)
four=$("${mpiexec[@]}" -np 4 "$bin" eval --load "$dir/ckpt" --data-path "$dir/corpus.txt" --threads 1)
two=$("${mpiexec[@]}" -np 2 "$bin" eval --load "$dir/ckpt" --data-path "$dir/corpus.txt" --threads 1)
echo "1 rank: $one"
echo "2 ranks: $two"
echo "4 ranks: $four"
python3 - "$one" "$two" "$four" <<'PY'
import json, sys
a, b, c = (json.loads(s) for s in sys.argv[1:])
assert a["tokens"] == b["tokens"] == c["tokens"], (a, b, c)
for other in (b, c):
    assert abs(a["loss"] - other["loss"]) <= 1e-5 * max(1.0, abs(a["loss"])), (a, other)
print("checkpoint layouts agree")
PY
