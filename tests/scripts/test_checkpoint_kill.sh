#!/usr/bin/env bash
# Crash consistency of train --save DIR --load DIR: a job killed with SIGKILL at random moments
# (during steps and during saves, --save-interval 1) and restarted with the same command until it
# finishes reaches the same final parameters, bit for bit, as an uninterrupted run.
# Usage: test_checkpoint_kill.sh AMPIPE_BINARY [RANKS [MPIEXEC MPIEXEC_FLAGS...]]
# With RANKS > 1 the job runs under MPIEXEC -np RANKS. Exits 77 when python3 is missing.
# AMPIPE_KILL_FLAGS: more train flags for every run (e.g. "--ckpt-format sharded
# --use-distributed-optimizer"); with sharded checkpoints every tensor (weights and moments) is
# reassembled from the shards through the index and compared.
set -uo pipefail
source "$(dirname "$0")/launcher.sh"
parse_launcher "$@"
command -v python3 > /dev/null || { echo "python3 not found: skipping"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 200); do printf 'In the beginning God created the heaven and the earth. And the earth was without form. '; done > "$work/corpus.txt"
iters=${AMPIPE_KILL_ITERS:-120}
rounds=${AMPIPE_KILL_ROUNDS:-4}
train=("${launcher[@]}" "$bin" train --num-layers 2 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32
       --seq-length 16 --moe-num-experts 4 --moe-top-k 2 --micro-batch-size 2 --train-iters "$iters"
       --lr-warmup-iters 0 --eval-iters 1 --eval-interval 0 --log-interval 1 --threads 1
       --data-path "$work/corpus.txt" --save-interval 1 --ckpt-keep 2)
# shellcheck disable=SC2206
[ -n "${AMPIPE_KILL_FLAGS:-}" ] && train+=(${AMPIPE_KILL_FLAGS})

# The reference: one uninterrupted run.
"${train[@]}" --save "$work/ref" > "$work/ref.log" 2>&1 || { echo "reference run failed"; cat "$work/ref.log"; exit 1; }
# How long start-up (a 1-iteration run) and a whole run take, to spread the kills over the steps.
ms() { local s; s=$(date +%s%N); "$@" > /dev/null 2>&1; echo $(( ($(date +%s%N) - s) / 1000000 )); }
startup_ms=$(ms "${train[@]}" --train-iters 1 --save "$work/timing1")
span_ms=$(ms "${train[@]}" --save "$work/timing")
steps_ms=$(( span_ms - startup_ms ))
[ "$steps_ms" -ge 20 ] || steps_ms=20
echo "start-up ${startup_ms} ms, a whole run ${span_ms} ms"

# Every process below PID (mpirun's ranks need not share its process group).
descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2> /dev/null); do echo "$c"; descendants "$c"; done; }
# True while PID runs (a zombie counts as gone).
alive() { [ -e "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2> /dev/null; }

kills=0
mid_save=0  # kills that left a temporary iteration directory behind: the save was under way
for round in $(seq "$rounds"); do
  dir="$work/run$round"
  attempts=0
  while :; do
    attempts=$((attempts + 1))
    [ "$attempts" -le 200 ] || { echo "round $round: no progress after 200 restarts"; exit 1; }
    # Each job in its own process group, so SIGKILL reaches every rank (and mpirun) at once.
    setsid "${train[@]}" --save "$dir" --load "$dir" >> "$work/run$round.log" 2>&1 &
    pid=$!
    # Start-up, then up to a fifth of the steps' time: the kill lands in a step or in a save (one
    # every iteration), sometimes still in start-up; most restarts make some progress.
    delay_ms=$(( startup_ms * 9 / 10 + RANDOM % (steps_ms / 5 + 1) ))
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    if kill -0 "$pid" 2> /dev/null; then
      victims=$(descendants "$pid")
      # shellcheck disable=SC2086
      kill -9 -- "-$pid" $victims 2> /dev/null
      wait "$pid" 2> /dev/null
      # A restarted job must not overlap the killed one (as under a scheduler).
      for v in $victims; do
        for _ in $(seq 500); do alive "$v" || break; sleep 0.01; done
      done
      kills=$((kills + 1))
      compgen -G "$dir/iter_*.tmp" > /dev/null && mid_save=$((mid_save + 1))
      continue
    fi
    wait "$pid"
    rc=$?
    if [ "$rc" -ne 0 ]; then echo "round $round: a restart failed ($rc)"; tail -20 "$work/run$round.log"; exit 1; fi
    # Finished: this restart trained to the end, or found the checkpoint already there (a kill
    # after the last save and before the "done" line).
    grep -qE "done: $iters iterations|nothing to do: the checkpoint is at iteration $iters of $iters" \
      "$work/run$round.log" && break
  done
  echo "round $round: finished after $((attempts - 1)) kill(s)"
  python3 - "$work/ref" "$dir" "$iters" <<'PY' || exit 1
import json, struct, sys
ref, got, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
def tensors(root):
    tracker = open(f"{root}/latest_checkpointed_iteration.txt").read().strip()
    assert tracker == str(iters), (root, tracker)
    it = f"{root}/iter_{iters:07d}"
    def read(path):
        data = open(path, "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        header.pop("__metadata__", None)
        body = data[8 + n:]
        return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}
    try:
        index = json.load(open(f"{it}/checkpoint_index.json"))
    except FileNotFoundError:
        return read(f"{it}/model.safetensors")
    shards = [read(f"{it}/{f['name']}") for f in index["files"]]
    out = {}
    for name, t in index["tensors"].items():
        pieces = sorted(t["pieces"], key=lambda p: p["begin"])
        out[name] = ("F32", t["shape"], b"".join(shards[p["file"]][p["key"]][2] for p in pieces))
    return out
a, b = tensors(ref), tensors(got)
assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
bad = [k for k in a if a[k] != b[k]]
assert not bad, f"tensors differ from the uninterrupted run: {bad[:5]}"
print(f"  {len(a)} tensors identical, bit for bit, to the uninterrupted run")
PY
done
echo "kill -9 restarts survived: $kills over $rounds rounds ($ranks rank(s)), $mid_save of them during a save"
[ "$kills" -ge 1 ] || { echo "no job was ever killed: the test proved nothing"; exit 1; }
