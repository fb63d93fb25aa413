#!/usr/bin/env bash
# A save that cannot be written (ulimit -f: the file-size limit, as a full disk) fails cleanly: the
# job reports the error and exits 1 (--exit-on-save-failure true, the default), or warns and trains
# on (false); the previous checkpoint stays the latest, intact and loadable, with no temporary left.
# Usage: test_checkpoint_full_disk.sh AMPIPE_BINARY
set -uo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 200); do printf 'In the beginning God created the heaven and the earth. '; done > "$work/corpus.txt"
train=("$bin" train --num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 16 --seq-length 16
       --moe-num-experts 2 --moe-top-k 1 --micro-batch-size 2 --lr-warmup-iters 0 --eval-iters 1 --eval-interval 0
       --threads 1 --data-path "$work/corpus.txt" --save "$work/ckpt" --load "$work/ckpt")
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
"${train[@]}" --train-iters 4 --exit-interval 2 > "$work/first.log" 2>&1 || { cat "$work/first.log"; exit 1; }
[ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 2 ] || fail "no checkpoint at 2"
sum=$(md5sum "$work/ckpt/iter_0000002/"* | md5sum)

# 8 KiB per file: the model file (about 20 KB) cannot be written.
( ulimit -f 8; exec "${train[@]}" --train-iters 4 ) > "$work/full.log" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "saving checkpoint iter_0000004 to '$work/ckpt' failed" "$work/full.log" &&
  pass "the failed save is reported, exit 1: $(grep -o 'failed:.*' "$work/full.log" | head -c 160)" ||
  fail "exit $rc, log: $(tail -3 "$work/full.log")"
[ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 2 ] && [ ! -e "$work/ckpt/iter_0000004" ] &&
  [ ! -e "$work/ckpt/iter_0000004.tmp" ] && [ "$(md5sum "$work/ckpt/iter_0000002/"* | md5sum)" = "$sum" ] &&
  pass "the previous checkpoint is still the latest, byte for byte; no temporary left" || fail "the previous checkpoint changed: $(ls "$work/ckpt")"

( ulimit -f 8; exec "${train[@]}" --train-iters 4 --save-interval 1 --exit-on-save-failure false ) > "$work/warn.log" 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ "$(grep -c 'warning: saving checkpoint' "$work/warn.log")" -eq 2 ] && grep -q "done: 4 iterations" "$work/warn.log" &&
  pass "--exit-on-save-failure false: two warnings, training finished" || fail "exit $rc, log: $(tail -3 "$work/warn.log")"
[ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 2 ] || fail "the tracker moved"

# Loadable: resume and finish without the limit; eval reads the root.
"${train[@]}" --train-iters 4 > "$work/resume.log" 2>&1 && grep -q "resumed from $work/ckpt/iter_0000002" "$work/resume.log" &&
  [ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 4 ] && pass "resumed from iter_0000002 and saved iter_0000004" ||
  fail "resume failed: $(tail -3 "$work/resume.log")"
"$bin" eval --load "$work/ckpt" --data-path "$work/corpus.txt" --threads 1 > "$work/eval.log" 2>&1 &&
  grep -q '"loss"' "$work/eval.log" && pass "eval --load ROOT reads the latest" || fail "eval: $(cat "$work/eval.log")"
[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
