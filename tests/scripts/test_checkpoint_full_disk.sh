#!/usr/bin/env bash
# A save that cannot be written (ulimit -f: the file-size limit, as a full disk) fails cleanly: the
# job reports the error and exits 1 (--exit-on-save-failure true, the default), or warns and trains
# on (false); the previous checkpoint stays the latest, intact and loadable, with no temporary left.
# With RANKS > 1 the job runs under MPIEXEC -np RANKS: every rank learns the writer's outcome, so
# all end (or all train on) together.
# Usage: test_checkpoint_full_disk.sh AMPIPE_BINARY [RANKS MPIEXEC [MPIEXEC FLAGS...]]
set -uo pipefail
source "$(dirname "$0")/launcher.sh"
parse_launcher "$@"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 200); do printf 'In the beginning God created the heaven and the earth. '; done > "$work/corpus.txt"
# One rank: an 8 KiB file-size limit and a ~20 KB model file. Several: the ranks' Open MPI shared
# memory files need megabytes, so the limit is 32 MiB and the model larger (optimizer file ~70 MB).
if [ "$ranks" -gt 1 ]; then
  limit_kib=32768
  size=(--hidden-size 512 --num-attention-heads 4 --ffn-hidden-size 2048 --moe-num-experts 4)
else
  limit_kib=8
  size=(--hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 16 --moe-num-experts 2)
fi
args=(train --num-layers 1 "${size[@]}" --seq-length 16 --moe-top-k 1 --micro-batch-size 2 --lr-warmup-iters 0
      --eval-iters 1 --eval-interval 0 --threads 1 --data-path "$work/corpus.txt" --save "$work/ckpt"
      --load "$work/ckpt")
train=("${launcher[@]}" "$bin" "${args[@]}")
# The same under the file-size limit, on the ranks only (mpirun must write its own files).
limited=("${launcher[@]}" sh -c "ulimit -f $limit_kib && exec \"\$@\"" sh "$bin" "${args[@]}")
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
"${train[@]}" --train-iters 4 --exit-interval 2 > "$work/first.log" 2>&1 || { cat "$work/first.log"; exit 1; }
[ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 2 ] || fail "no checkpoint at 2"
sum=$(md5sum "$work/ckpt/iter_0000002/"* | md5sum)

# The limit per file: a checkpoint file cannot be written.
"${limited[@]}" --train-iters 4 > "$work/full.log" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "saving checkpoint iter_0000004 to '$work/ckpt' failed" "$work/full.log" &&
  pass "the failed save is reported, exit 1: $(grep -o 'failed:.*' "$work/full.log" | head -c 160)" ||
  fail "exit $rc, log: $(tail -3 "$work/full.log")"
[ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 2 ] && [ ! -e "$work/ckpt/iter_0000004" ] &&
  [ ! -e "$work/ckpt/iter_0000004.tmp" ] && [ "$(md5sum "$work/ckpt/iter_0000002/"* | md5sum)" = "$sum" ] &&
  pass "the previous checkpoint is still the latest, byte for byte; no temporary left" || fail "the previous checkpoint changed: $(ls "$work/ckpt")"

"${limited[@]}" --train-iters 4 --save-interval 1 --exit-on-save-failure false > "$work/warn.log" 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ "$(grep -c 'warning: saving checkpoint' "$work/warn.log")" -eq 2 ] && grep -q "done: 4 iterations" "$work/warn.log" &&
  pass "--exit-on-save-failure false: two warnings, training finished" || fail "exit $rc, log: $(tail -3 "$work/warn.log")"
[ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 2 ] || fail "the tracker moved"

# Loadable: resume and finish without the limit; eval reads the root.
"${train[@]}" --train-iters 4 > "$work/resume.log" 2>&1 && grep -q "resumed from $work/ckpt/iter_0000002" "$work/resume.log" &&
  [ "$(cat "$work/ckpt/latest_checkpointed_iteration.txt")" = 4 ] && pass "resumed from iter_0000002 and saved iter_0000004" ||
  fail "resume failed: $(tail -3 "$work/resume.log")"
"${launcher[@]}" "$bin" eval --load "$work/ckpt" --data-path "$work/corpus.txt" --threads 1 > "$work/eval.log" 2>&1 &&
  grep -q '"loss"' "$work/eval.log" && pass "eval --load ROOT reads the latest" || fail "eval: $(cat "$work/eval.log")"
[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
