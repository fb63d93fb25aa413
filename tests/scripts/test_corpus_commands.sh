#!/usr/bin/env bash
# The corpus commands end to end: `ampipe tokenizer train` (deterministic for a seed), `ampipe
# preprocess` of a text file and of JSON Lines (two keys, --append-eod) read back by an independent
# reader (tests/scripts/read_indexed_dataset.py, standard library) and compared document by document
# with tokens computed here without ampipe (bytes of each line or field, SentencePiece's own
# spm_encode); training on a blend of the outputs; eval and sample with the checkpoint's tokenizer,
# and another tokenizer refused.
# Usage: test_corpus_commands.sh PATH/TO/ampipe SOURCE_DIR
set -uo pipefail
ampipe=${1:?usage: test_corpus_commands.sh PATH/TO/ampipe SOURCE_DIR}
src=${2:?usage: test_corpus_commands.sh PATH/TO/ampipe SOURCE_DIR}
reader=$src/tests/scripts/read_indexed_dataset.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
must() {  # must LOG CMD...: CMD succeeds, else its output is shown and the test fails
  local log=$1
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "FAIL: $* :"
    sed 's/^/  /' "$log"
    exit 1
  fi
}

# A corpus of varied lines (blank ones included) and the same as JSON Lines with two fields.
for i in $(seq 300); do
  printf 'Line %d: And God said, Let there be light; and there was light. %s\n' "$i" "$(printf '%*s' $((i % 7)) '')"
  [ $((i % 50)) -eq 0 ] && echo
done >"$work/corpus.txt"
python3 - "$work/corpus.txt" "$work/corpus.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], encoding="utf-8") as f, open(sys.argv[2], "w", encoding="utf-8") as out:
    for i, line in enumerate(f):
        line = line.rstrip("\n")
        if line:
            out.write(json.dumps({"text": line, "title": "title %d \u00e9" % i}) + "\n")
PY

# 1. Byte tokenizer, text file: document i = the bytes of non-empty line i.
must "$work/pre1.log" "$ampipe" preprocess --input "$work/corpus.txt" --output-prefix "$work/bytes" --workers 2
python3 "$reader" "$work/bytes_text_document" --dump >"$work/bytes.dump" || fail "the reader refused ampipe's output"
if python3 - "$work/corpus.txt" "$work/bytes.dump" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1], "rb").read().split(b"\n") if l]
dump = open(sys.argv[2]).read().split("\n")
summary = json.loads(dump[0])
docs = [list(map(int, d.split())) if d else [] for d in dump[1:1 + summary["documents"]]]
assert summary["dtype"] == "uint16", summary
assert len(docs) == len(lines), (len(docs), len(lines))
for i, (d, l) in enumerate(zip(docs, lines)):
    assert d == list(l), (i, d[:5], list(l)[:5])
PY
then pass "preprocess of a text file: $(wc -l <"$work/corpus.txt") lines -> every document equals its line's bytes"; else fail "text preprocess differs"; fi

# 2. A SentencePiece model, trained twice with one seed: the same bytes.
must "$work/tok1.log" "$ampipe" tokenizer train --input "$work/corpus.txt" --vocab-size 300 --model-type bpe \
  --output-prefix "$work/spm" --seed 5 --threads 1
must "$work/tok2.log" "$ampipe" tokenizer train --input "$work/corpus.txt" --vocab-size 300 --model-type bpe \
  --output-prefix "$work/spm2" --seed 5 --threads 1
if cmp -s "$work/spm.model" "$work/spm2.model"; then pass "tokenizer train is deterministic: $(cat "$work/tok1.log")"
else fail "two trainings with one seed differ"; fi

# 3. JSON Lines, two keys, SentencePiece, --append-eod: each record's field, encoded by spm_encode
#    (SentencePiece's own command, not ampipe), then the end-of-document id 2.
must "$work/pre2.log" "$ampipe" preprocess --input "$work/corpus.jsonl" --output-prefix "$work/sp" --json-keys text title \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$work/spm.model" --append-eod
for key in text title; do
  python3 -c "import json,sys
for l in open(sys.argv[1], encoding='utf-8'): print(json.loads(l)[sys.argv[2]])" "$work/corpus.jsonl" "$key" >"$work/$key.txt"
  if command -v spm_encode >/dev/null; then
    spm_encode --model "$work/spm.model" --output_format id <"$work/$key.txt" | sed 's/$/ 2/' >"$work/$key.expected"
    python3 "$reader" "$work/sp_${key}_document" --dump | tail -n +2 >"$work/$key.got"
    if cmp -s "$work/$key.expected" "$work/$key.got"; then pass "preprocess --json-keys $key equals spm_encode + eod, record by record"
    else fail "preprocess --json-keys $key differs from spm_encode: $(diff "$work/$key.expected" "$work/$key.got" | head -3)"; fi
  else
    echo "skip: spm_encode is not installed (Debian package sentencepiece); SentencePiece ids not cross-checked"
  fi
done

# 3b. The summary line of each dataset counts that dataset's tokens (as the independent reader does),
#     not the sum over the keys.
for key in text title; do
  want=$(python3 "$reader" "$work/sp_${key}_document" | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens'])")
  got=$(sed -n "s|^wrote .*sp_${key}_document.bin / .idx: [0-9]* documents, \([0-9]*\) tokens.*|\1|p" "$work/pre2.log")
  [ -n "$want" ] && [ "$got" = "$want" ] && pass "preprocess reports $got tokens for --json-keys $key, as the reader counts" ||
    fail "preprocess reports '$got' tokens for $key, the reader counts '$want': $(cat "$work/pre2.log")"
done

# 4. Training on a blend of the two SentencePiece datasets, then eval / sample with the tokenizer
#    saved beside the checkpoint, and a different tokenizer refused.
model=(--num-layers 1 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 64 --seq-length 16 --moe-num-experts 2)
must "$work/train.log" "$ampipe" train "${model[@]}" --data-path 0.7 "$work/sp_text_document" 0.3 "$work/sp_title_document" \
  --split 80,20,0 --tokenizer-type SentencePieceTokenizer --tokenizer-model "$work/spm.model" --train-iters 6 \
  --micro-batch-size 4 --eval-iters 2 --threads 2 --save "$work/ckpt"
[ -f "$work/ckpt/iter_0000006/tokenizer.model" ] && cmp -s "$work/ckpt/iter_0000006/tokenizer.model" "$work/spm.model" &&
  pass "trained on a 0.7/0.3 blend; the tokenizer travels with the checkpoint" || fail "no tokenizer.model beside the checkpoint"
grep -q "vocabulary 384" "$work/train.log" && pass "vocabulary 300 padded to 384 (--make-vocab-size-divisible-by 128)" ||
  fail "vocabulary not padded: $(grep model: "$work/train.log")"
must "$work/eval.log" "$ampipe" eval --load "$work/ckpt" --data-path "$work/corpus.txt" --threads 2
grep -q nats_per_byte "$work/eval.log" && pass "eval with the checkpoint's tokenizer: $(cat "$work/eval.log")" || fail "eval: $(cat "$work/eval.log")"
must "$work/sample.log" "$ampipe" sample --load "$work/ckpt" --prompt "And God said" --tokens 5 --threads 2
grep -q "^And God said" "$work/sample.log" && pass "sample decodes with the tokenizer" || fail "sample: $(cat "$work/sample.log")"
must "$work/tok3.log" "$ampipe" tokenizer train --input "$work/corpus.txt" --vocab-size 300 --model-type bpe \
  --output-prefix "$work/other" --seed 6 --threads 1 --input-sentence-size 100
if "$ampipe" eval --load "$work/ckpt" --data-path "$work/corpus.txt" --tokenizer-model "$work/other.model" >"$work/bad.log" 2>&1; then
  fail "eval accepted another tokenizer"
elif grep -q "was trained with" "$work/bad.log"; then pass "another tokenizer refused: $(tail -1 "$work/bad.log")"
else fail "refusal without the reason: $(cat "$work/bad.log")"; fi

# 5. The tokenizer that made a dataset is recorded beside it; training or evaluating it with another
#    tokenizer of the same vocabulary size is refused naming both (item 6 of issue 28).
[ -f "$work/sp_text_document.tokenizer.json" ] && grep -q "$(sed -n 's/.*(bpe, vocabulary 300, \(SentencePieceTokenizer:[0-9a-f]*\)).*/\1/p' "$work/tok1.log")" \
  "$work/sp_text_document.tokenizer.json" && pass "preprocess records its tokenizer: $(cat "$work/sp_text_document.tokenizer.json")" ||
  fail "no tokenizer record beside the dataset"
if "$ampipe" train "${model[@]}" --data-path "$work/sp_text_document" --split 80,20,0 --tokenizer-type SentencePieceTokenizer \
  --tokenizer-model "$work/other.model" --train-iters 1 --micro-batch-size 2 --eval-iters 1 --threads 2 >"$work/mismatch.log" 2>&1; then
  fail "training accepted a dataset made by another tokenizer of the same vocabulary size"
elif grep -q "was tokenized with SentencePieceTokenizer:.*but this run's tokenizer is SentencePieceTokenizer:" "$work/mismatch.log"; then
  pass "another tokenizer refused for the dataset: $(tail -1 "$work/mismatch.log" | cut -c1-160)..."
else fail "refusal without both tokenizers: $(cat "$work/mismatch.log")"; fi
# eval of the blend's validation part with the checkpoint's own tokenizer (the one that made it) works.
must "$work/eval_indexed.log" "$ampipe" eval --load "$work/ckpt" --data-path 0.7 "$work/sp_text_document" 0.3 \
  "$work/sp_title_document" --split 80,20,0 --threads 2
grep -q '"part":"validation"' "$work/eval_indexed.log" && pass "eval of the blend's validation part: $(cat "$work/eval_indexed.log" | cut -c1-120)..." ||
  fail "eval of the blend: $(cat "$work/eval_indexed.log")"

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
