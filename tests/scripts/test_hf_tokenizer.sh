#!/usr/bin/env bash
# Transformers reads the tokenizer of an `ampipe export`: for the byte tokenizer and for SentencePiece
# BPE and unigram models (`ampipe tokenizer train`), trains a tiny Mixtral-family model, exports it,
# and checks that AutoTokenizer.from_pretrained(EXPORT) round-trips the prompt and that
# AutoModelForCausalLM.from_pretrained(EXPORT).generate(greedy) continues it with the same text as
# `ampipe sample --temperature 0` (prompt + new tokens within the model's sequence length, where
# ampipe's sampler does not slide its window). Where generate stops at the end-of-sequence id (ampipe
# samples on), its text must be a prefix of ampipe's.
# Exits 77 (skipped) when no python3 with transformers and torch is found ($PYTHON, python3,
# /usr/bin/python3); CI installs neither.
# Usage: test_hf_tokenizer.sh PATH/TO/ampipe [SCRATCH_DIR]   (about 30 s)
set -uo pipefail
ampipe=${1:?usage: test_hf_tokenizer.sh PATH/TO/ampipe [SCRATCH_DIR]}
[ -x "$ampipe" ] || { echo "FAIL: no executable at $ampipe"; exit 1; }
ampipe=$(cd "$(dirname "$ampipe")" && pwd)/$(basename "$ampipe")
if [ -n "${2:-}" ]; then
  work=$2
  rm -rf "$work"
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

source "$(dirname "$0")/find_python.sh"
find_python 'import torch, transformers'
[ -n "$python" ] || { echo "SKIP: no python3 with transformers and torch"; exit 77; }
version=$("$python" -c 'import transformers; print(transformers.__version__)')

failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
run() {  # run LOG CMD...: CMD's output in LOG; on failure prints it
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

corpus=$work/corpus.txt
for i in $(seq 60); do
  printf '%s\n' "In the beginning God created the heaven and the earth. $i" \
    "And the earth was without form, and void; and darkness was upon the face of the deep." \
    "And God said, Let there be light: and there was light. ($((i * 7)))"
done >"$corpus"

cat >"$work/generate.py" <<'EOF'
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory, prompt, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory)
model.eval()
encoded = tokenizer(prompt, return_tensors="pt")
ids = encoded["input_ids"]
with torch.no_grad():
    # As users call it: 4.x refuses the call if the tokenizer returns token_type_ids.
    out = model.generate(**encoded, max_new_tokens=count, do_sample=False)
print(json.dumps({"class": type(tokenizer).__name__, "prompt_round_trip": tokenizer.decode(ids[0]) == prompt,
                  "new_tokens": out.shape[1] - ids.shape[1],
                  "text": tokenizer.decode(out[0], skip_special_tokens=True)}))
EOF

# check NAME TOKENIZER_FLAGS...: train, export, compare.
check() {
  local name=$1
  shift
  local dir=$work/$name prompt="And God said" count=12
  mkdir -p "$dir"
  run "$dir/train.log" env OMP_NUM_THREADS=2 "$ampipe" train --model-family mixtral --num-layers 1 --hidden-size 32 \
    --num-attention-heads 4 --ffn-hidden-size 48 --seq-length 32 --moe-num-experts 2 --moe-top-k 1 \
    --micro-batch-size 4 --train-iters 40 --lr 1e-2 --lr-warmup-iters 0 --eval-iters 1 --threads 2 --seed 3 \
    --data-path "$corpus" --save "$dir/ckpt" "$@" || return
  run "$dir/export.log" "$ampipe" export --load "$dir/ckpt" --save "$dir/hf" || return
  run "$dir/sample.log" "$ampipe" sample --load "$dir/hf" --prompt "$prompt" --tokens "$count" --temperature 0 \
    --threads 2 || return
  run "$dir/sample_ckpt.log" "$ampipe" sample --load "$dir/ckpt" --prompt "$prompt" --tokens "$count" \
    --temperature 0 --threads 2 || return
  if cmp -s "$dir/sample.log" "$dir/sample_ckpt.log"; then
    pass "$name: ampipe sample of the export equals sample of the checkpoint"
  else
    fail "$name: ampipe sample of the export differs from the checkpoint's"
  fi
  run "$dir/generate.log" "$python" "$work/generate.py" "$dir/hf" "$prompt" "$count" || {
    failures=$((failures + 1))
    return
  }
  "$python" - "$dir/generate.log" "$dir/sample.log" "$name" "$version" <<'EOF'
import json, sys
hf = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ampipe = open(sys.argv[2], encoding="utf-8", errors="replace").read()
ampipe = ampipe[:-1] if ampipe.endswith("\n") else ampipe
name, version = sys.argv[3], sys.argv[4]
ok = hf["prompt_round_trip"] and (hf["text"] == ampipe or (hf["new_tokens"] < 12 and ampipe.startswith(hf["text"])))
print(("ok: " if ok else "FAIL: ") + f"{name}: transformers {version} {hf['class']} + generate: {hf['text']!r}"
      + ("" if ok else f" vs ampipe sample {ampipe!r} (prompt round trip {hf['prompt_round_trip']})"))
sys.exit(0 if ok else 1)
EOF
  [ $? -eq 0 ] || failures=$((failures + 1))
}

check byte
for type in bpe unigram; do
  if run "$work/$type-tokenizer.log" "$ampipe" tokenizer train --input "$corpus" --vocab-size 320 --model-type "$type" \
    --threads 2 --output-prefix "$work/$type"; then
    check "sentencepiece-$type" --tokenizer-type SentencePieceTokenizer --tokenizer-model "$work/$type.model"
  else
    failures=$((failures + 1))
  fi
done

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
