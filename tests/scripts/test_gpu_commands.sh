#!/usr/bin/env bash
# The commands on the GPU, end to end: `train --device cuda` (a tiny MoE model, 20 iterations, GPT and
# Mixtral) follows the CPU's losses iteration by iteration within 1e-4 relative (the tolerance of
# test_model_device), `eval`, `sample` and `bench --device cuda` run and agree with the CPU, and two
# ranks under mpirun train through NCCL (--distributed-backend nccl) as two CPU ranks do.
# Runs wherever the binary can use a GPU: a real one, or the GPU emulator (-DAMPIPE_CUDA=EMULATE,
# docs/GPU.md); skipped (77) elsewhere, with the reason.
# Usage: test_gpu_commands.sh AMPIPE_BINARY
set -uo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reason=$("$bin" train --device cuda --train-iters 0 --data-path /dev/null 2>&1 | grep -o 'needs an NVIDIA GPU.*')
if [ -n "$reason" ]; then
  echo "skipped: $reason"
  exit 77
fi
for i in $(seq 300); do printf 'In the beginning God created the heaven and the earth. And the earth was without form. '; done \
  > "$work/corpus.txt"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
tiny=(--num-layers 2 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 64 --moe-num-experts 4 --moe-top-k 2
      --seq-length 32 --micro-batch-size 4 --lr 3e-3 --lr-warmup-iters 2 --eval-interval 0 --eval-iters 2
      --log-interval 1 --threads 2 --data-path "$work/corpus.txt")

# Losses of two metrics files: the largest relative difference, and the iterations compared.
compare_losses() {
  python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
la = {r["iter"]: r["loss"] for r in a if "loss" in r}
lb = {r["iter"]: r["loss"] for r in b if "loss" in r}
common = sorted(set(la) & set(lb))
worst = max((abs(la[i] - lb[i]) / max(abs(lb[i]), 1e-6) for i in common), default=float("inf"))
print(f"{worst:.3g} {len(common)} {la[common[-1]] if common else 'nan'}")
PY
}

for family in gpt mixtral; do
  extra=()
  [ "$family" = mixtral ] && extra=(--model-family mixtral)
  for device in cpu cuda; do
    if ! "$bin" train "${tiny[@]}" "${extra[@]}" --train-iters 20 --device "$device" --save "$work/$family-$device" \
        --metrics-file "$work/$family-$device.jsonl" > "$work/$family-$device.log" 2>&1; then
      fail "train --device $device ($family)"; tail -5 "$work/$family-$device.log"
    fi
  done
  read -r worst count last < <(compare_losses "$work/$family-cuda.jsonl" "$work/$family-cpu.jsonl")
  if [ "$count" = 20 ] && python3 -c "import sys; sys.exit(0 if float('$worst') <= 1e-4 else 1)"; then
    pass "train --device cuda ($family): 20 losses follow the CPU's, worst relative difference $worst (last loss $last)"
  else
    fail "train --device cuda ($family): $count losses compared, worst relative difference $worst"
  fi
done

# eval of the GPU-trained checkpoint on both devices (2 KB of text): the same loss.
head -c 2048 "$work/corpus.txt" > "$work/eval.txt"
for device in cpu cuda; do
  "$bin" eval --load "$work/gpt-cuda" --data-path "$work/eval.txt" --device "$device" --threads 2 \
    > "$work/eval-$device.json" 2> "$work/eval-$device.log" || fail "eval --device $device"
done
python3 - "$work/eval-cpu.json" "$work/eval-cuda.json" <<'PY' && pass "eval --device cuda equals the CPU's loss" || fail "eval losses differ"
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
print("eval loss cpu", a["loss"], "cuda", b["loss"])
sys.exit(0 if abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]) else 1)
PY

# Greedy sampling picks the same tokens on both devices.
for device in cpu cuda; do
  "$bin" sample --load "$work/gpt-cuda" --prompt "In the beginning" --tokens 16 --temperature 0 \
    --device "$device" --threads 2 > "$work/sample-$device.txt" 2> "$work/sample-$device.log" || fail "sample --device $device"
done
if [ -s "$work/sample-cuda.txt" ] && cmp -s "$work/sample-cpu.txt" "$work/sample-cuda.txt"; then
  pass "sample --device cuda --temperature 0 continues as the CPU does: $(head -c 80 "$work/sample-cuda.txt" | tr '\n' ' ')"
else
  fail "sample differs: cpu '$(head -c 80 "$work/sample-cpu.txt")' cuda '$(head -c 80 "$work/sample-cuda.txt")'"
fi

# bench on the GPU: the sequential and pipelined block run and report.
if "$bin" bench --device cuda --seq-length 64 --hidden-size 32 --num-attention-heads 2 --moe-num-experts 4 \
    --moe-top-k 2 --schedule sequential,ampipe --pipe-degree 2 --repeats 1 --json-out "$work/bench.jsonl" \
    > "$work/bench.log" 2>&1 && [ "$(wc -l < "$work/bench.jsonl")" -ge 2 ]; then
  pass "bench --device cuda: $(wc -l < "$work/bench.jsonl") rows"
else
  fail "bench --device cuda"; tail -5 "$work/bench.log"
fi

# Two ranks under mpirun, one GPU each, their collectives through NCCL (--distributed-backend nccl):
# the losses follow two CPU ranks'. Emulated builds get two emulated GPUs; a real machine needs two.
# With one GPU for both ranks, the default falls back to host staging and says why.
mpiexec=$(command -v mpiexec || true)
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
emulated=0
"$bin" --version 2>/dev/null | grep -q 'emulated' && emulated=1
if [ -z "$mpiexec" ]; then
  echo "skipped: two ranks with --distributed-backend nccl (no mpiexec)"
elif [ "$emulated" = 0 ] && [ "${gpus:-0}" -lt 2 ]; then
  echo "skipped: two ranks with --distributed-backend nccl (${gpus:-0} GPU(s); NCCL takes one per rank)"
else
  run2() {  # run2 LOG ARGS...: train on two ranks
    local log=$1; shift
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 timeout 300 "$mpiexec" --oversubscribe \
      --mca pml ob1 --mca btl self,vader --mca btl_vader_single_copy_mechanism none -x AMPIPE_GPU_EMULATOR_DEVICES \
      -np 2 "$bin" train "${tiny[@]}" --threads 1 --train-iters 10 "$@" > "$log" 2>&1
  }
  export AMPIPE_GPU_EMULATOR_DEVICES=2
  run2 "$work/np2-cpu.log" --device cpu --metrics-file "$work/np2-cpu.jsonl" || fail "two ranks on the CPU"
  run2 "$work/np2-nccl.log" --device cuda --distributed-backend nccl --metrics-file "$work/np2-nccl.jsonl" ||
    { fail "two ranks with --distributed-backend nccl"; tail -5 "$work/np2-nccl.log"; }
  read -r worst count last < <(compare_losses "$work/np2-nccl.jsonl" "$work/np2-cpu.jsonl")
  if [ "$count" = 10 ] && python3 -c "import sys; sys.exit(0 if float('$worst') <= 1e-4 else 1)"; then
    pass "two ranks with --distributed-backend nccl: 10 losses follow two CPU ranks', worst relative difference $worst"
  else
    fail "two ranks with --distributed-backend nccl: $count losses compared, worst relative difference $worst"
  fi
  if [ "$emulated" = 1 ]; then
    export AMPIPE_GPU_EMULATOR_DEVICES=1
    run2 "$work/np2-shared.log" --device cuda --train-iters 1 || fail "two ranks sharing one GPU (default backend)"
    if grep -q "staged through host memory over MPI, not NCCL: ranks 0 and 1 both use GPU 0" "$work/np2-shared.log"; then
      pass "two ranks on one GPU: the default backend stages through the host and says why"
    else
      fail "two ranks on one GPU: no line saying the collectives are staged"; tail -5 "$work/np2-shared.log"
    fi
  fi
  unset AMPIPE_GPU_EMULATOR_DEVICES
fi

[ "$failures" -eq 0 ] && echo "all GPU command checks passed" || echo "$failures GPU command checks failed"
exit $((failures > 0))
