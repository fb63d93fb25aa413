#!/usr/bin/env bash
# The Mixtral family against an independent implementation: trains a tiny Mixtral-family model with
# `ampipe train --model-family mixtral`, exports it (`ampipe export`, sharded), and checks that
# `ampipe eval` of the checkpoint, `ampipe eval` of the export and tests/scripts/mixtral_reference.py
# (plain torch in float64, no transformers) agree: the two evals exactly, the reference within 1e-4
# relative; and the same for a 'gpt' family model composed of Mixtral's parts (its fused QKV split on
# export). Also checks that sample and train --load accept the export. If transformers imports,
# its MixtralForCausalLM loads the export and must agree too (skipped with a message otherwise).
# Exits 77 (skipped) when no python3 with torch is found ($PYTHON, python3, /usr/bin/python3).
# Usage: test_mixtral_reference.sh PATH/TO/ampipe [SCRATCH_DIR]   (about 10-20 s)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ampipe=${1:?usage: test_mixtral_reference.sh PATH/TO/ampipe [SCRATCH_DIR]}
[ -x "$ampipe" ] || { echo "FAIL: no executable at $ampipe"; exit 1; }
if [ -n "${2:-}" ]; then
  work=$2
  rm -rf "$work/ckpt" "$work/hf" "$work/ckpt2" "$work/from_hf" "$work/composed" "$work/composed_hf"
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

source "$(dirname "$0")/find_python.sh"
find_python 'import torch'
[ -n "$python" ] || { echo "SKIP: no python3 with torch (import torch failed)"; exit 77; }

failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# run LOG CMD...: runs CMD with its output in LOG; on failure prints the log.
run() {
  local log=$1
  shift
  "$@" >"$log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: $* (exit $rc):"
    sed 's/^/  /' "$log"
    return 1
  fi
}
json_loss() { "$python" -c 'import json,sys; print(repr(json.loads(sys.stdin.readlines()[-1])["loss"]))' <"$1"; }

# A corpus with varied bytes: 20 passes over a few sentences, about 6 KB.
corpus=$work/corpus.txt
for _ in $(seq 20); do
  printf '%s\n' "In the beginning God created the heaven and the earth." \
    "And the earth was without form, and void; and darkness was upon the face of the deep." \
    "And God said, Let there be light: and there was light. 1234567890 {}[]();"
done >"$corpus"

model=(--model-family mixtral --num-layers 2 --hidden-size 32 --num-attention-heads 4
  --group-query-attention --num-query-groups 2 --ffn-hidden-size 48 --seq-length 16
  --moe-num-experts 4 --moe-top-k 2)
run "$work/train.log" env OMP_NUM_THREADS=2 "$ampipe" train "${model[@]}" --micro-batch-size 4 --train-iters 60 \
  --lr 1e-2 --lr-warmup-iters 0 --eval-iters 1 --threads 2 --seed 3 --data-path "$corpus" --save "$work/ckpt" ||
  exit 1
pass "trained a tiny Mixtral-family model: $(tail -n 1 "$work/train.log")"

run "$work/export.log" "$ampipe" export --load "$work/ckpt" --save "$work/hf" --max-shard-size 40KB || exit 1
shards=$(ls "$work/hf" | grep -c '^model-0.*-of-.*\.safetensors$')
if [ -f "$work/hf/config.json" ] && [ -f "$work/hf/model.safetensors.index.json" ] && [ "$shards" -ge 2 ]; then
  pass "exported in $shards shards: $(cat "$work/export.log")"
else
  fail "export did not write config.json, the index and several shards: $(ls "$work/hf")"
fi

run "$work/eval_ckpt.log" "$ampipe" eval --load "$work/ckpt" --data-path "$corpus" --threads 2 || exit 1
run "$work/eval_hf.log" "$ampipe" eval --load "$work/hf" --data-path "$corpus" --threads 2 || exit 1
ampipe_loss=$(json_loss "$work/eval_ckpt.log")
hf_loss=$(json_loss "$work/eval_hf.log")
if [ "$ampipe_loss" = "$hf_loss" ]; then
  pass "eval of the checkpoint and of the export agree exactly: $ampipe_loss"
else
  fail "eval of the checkpoint $ampipe_loss differs from eval of the export $hf_loss"
fi

run "$work/reference.log" "$python" "$here/mixtral_reference.py" "$work/hf" "$corpus" || exit 1
reference_loss=$(json_loss "$work/reference.log")
compare() {  # compare NAME LOSS REFERENCE_NAME REFERENCE_LOSS: within 1e-4 relative
  if "$python" -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-4 * abs(b))" \
    "$2" "$4"; then
    pass "$1 loss $2 agrees with $3 $4 (1e-4 relative)"
  else
    fail "$1 loss $2 differs from $3 $4 by more than 1e-4 relative"
  fi
}
compare "reference (mixtral_reference.py, float64)" "$reference_loss" "ampipe eval" "$ampipe_loss"

# A 'gpt' family model composed of Mixtral's parts from Megatron's part flags is a Mixtral model:
# its export (the fused QKV split into q/k/v_proj) must agree with the reference too.
composed=(--model-family gpt --normalization RMSNorm --position-embedding-type rope --rotary-base 1000000
  --swiglu --disable-bias-linear --untie-embeddings-and-output-weights --num-layers 2 --hidden-size 32
  --num-attention-heads 4 --group-query-attention --num-query-groups 2 --ffn-hidden-size 48 --seq-length 16
  --moe-num-experts 4 --moe-top-k 2)
rm -rf "$work/composed" "$work/composed_hf"
run "$work/train_composed.log" env OMP_NUM_THREADS=2 "$ampipe" train "${composed[@]}" --micro-batch-size 4 \
  --train-iters 20 --lr 1e-2 --lr-warmup-iters 0 --eval-iters 1 --threads 2 --seed 5 --data-path "$corpus" \
  --save "$work/composed" || exit 1
run "$work/export_composed.log" "$ampipe" export --load "$work/composed" --save "$work/composed_hf" || exit 1
run "$work/eval_composed.log" "$ampipe" eval --load "$work/composed" --data-path "$corpus" --threads 2 || exit 1
run "$work/reference_composed.log" "$python" "$here/mixtral_reference.py" "$work/composed_hf" "$corpus" || exit 1
compare "reference of the composed 'gpt' model's export" "$(json_loss "$work/reference_composed.log")" \
  "ampipe eval of its checkpoint" "$(json_loss "$work/eval_composed.log")"

if run "$work/sample.log" "$ampipe" sample --load "$work/hf" --prompt "In the" --tokens 8 --temperature 0 --threads 2; then
  pass "sample --load of the export: $(head -c 40 "$work/sample.log" | tr '\n' ' ')"
else
  fail "sample --load of the export"
fi
if run "$work/train2.log" env OMP_NUM_THREADS=2 "$ampipe" train --load "$work/hf" --micro-batch-size 4 --train-iters 2 \
  --lr-warmup-iters 0 --eval-iters 1 --threads 2 --data-path "$corpus" --save "$work/ckpt2" &&
  grep -q "starting from the weights of" "$work/train2.log"; then
  pass "train --load of the export starts from its weights at iteration 0"
else
  fail "train --load of the export: $(tail -n 3 "$work/train2.log")"
fi

# Optional: transformers' own MixtralForCausalLM, both directions. It loads the export (same windows
# as ampipe eval); and a random model it writes itself (bfloat16, sharded, its own config.json) must
# give the same loss under `ampipe eval --load`.
if "$python" -c 'import transformers' >/dev/null 2>&1; then
  version=$("$python" -c 'import transformers; print(transformers.__version__)')
  cat >"$work/hf_loss.py" <<'EOF'
import json, sys, torch
from transformers import MixtralConfig, MixtralForCausalLM
directory, corpus = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:  # write a random model first
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                           num_experts_per_tok=2, max_position_embeddings=16, sliding_window=None,
                           initializer_range=0.2)
    MixtralForCausalLM(config).to(torch.bfloat16).save_pretrained(directory, safe_serialization=True,
                                                                   max_shard_size="60KB")
model = MixtralForCausalLM.from_pretrained(directory, torch_dtype=torch.float32, attn_implementation="eager")
model.eval()
n = model.config.max_position_embeddings
data = list(open(corpus, "rb").read())
total, count = 0.0, 0
with torch.no_grad():
    for off in range(0, len(data) - n, n + 1):
        window = torch.tensor(data[off:off + n + 1])[None]
        logits = model(window[:, :-1]).logits[0].double()
        total += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += n
print(json.dumps({"loss": total / count, "tokens": count}))
EOF
  if run "$work/transformers.log" "$python" "$work/hf_loss.py" "$work/hf" "$corpus"; then
    compare "transformers $version MixtralForCausalLM on the export" "$(json_loss "$work/transformers.log")" \
      "ampipe eval" "$ampipe_loss"
  else
    fail "transformers could not run the export"
  fi
  if run "$work/transformers_bf16.log" "$python" "$work/hf_loss.py" "$work/from_hf" "$corpus" write &&
    run "$work/eval_from_hf.log" "$ampipe" eval --load "$work/from_hf" --data-path "$corpus" --threads 2; then
    compare "ampipe eval of transformers' own bf16 sharded save" "$(json_loss "$work/eval_from_hf.log")" \
      "transformers" "$(json_loss "$work/transformers_bf16.log")"
  else
    fail "ampipe eval of a checkpoint saved by transformers"
  fi
else
  echo "skip: transformers is not installed; MixtralForCausalLM not compared"
fi

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
