#!/usr/bin/env python3
"""The PyTorch peer of `ampipe bench`: one GPT-MoE block, forward + backward, written the way a
PyTorch user would (scaled_dot_product_attention, experts by a loop over experts with index
gathering), timed on the same shapes so the two can be compared in one run.

    python3 bench/torch_block.py --seq-length 8192 --hidden-size 2048 --num-attention-heads 16 \
        --moe-num-experts 8 --moe-top-k 2 --device cuda [--dtype bfloat16] [--json-out FILE]

The block is ampipe's GPT-family block on one rank (docs/MODEL.md): x -> LayerNorm -> QKV ->
causal attention -> output projection -> + x = h; h -> LayerNorm -> router softmax -> top-k
(gates: the probability for k = 1, normalised over the k chosen for k > 1) -> experts
(fc1, gelu tanh, fc2, biases) weighted by their gates -> + h. The load-balancing loss is left out
(it is a few [T, E] operations). One step is forward and backward of sum(y * dy) with a fixed
random dy. Time: the median of --repeats steps after --warmup, with CUDA events on a GPU. Prints
one line and, with --json-out, one JSON object (the keys of `ampipe bench`'s rows where they mean
the same: seq_length, hidden_size, heads, ffn_hidden_size, num_experts, top_k, time_ms, device).
PyTorch older than 2.0 has no scaled_dot_product_attention: the script then computes attention
from its definition and says so (on a CPU only; on a GPU the peer must be the fused one).
"""
import argparse
import json
import math
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-length", type=int, default=2048, help="sequence length N")
    p.add_argument("--hidden-size", type=int, default=512, help="hidden size d")
    p.add_argument("--num-attention-heads", type=int, default=0, help="heads h (default d / 64)")
    p.add_argument("--ffn-hidden-size", type=int, default=0, help="expert FFN size f (default 4 d)")
    p.add_argument("--moe-num-experts", type=int, default=2, help="experts E")
    p.add_argument("--moe-top-k", type=int, default=1, help="experts per token k")
    p.add_argument("--micro-batch-size", type=int, default=1, help="sequences B")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the block runs")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="parameter and activation type (float32 runs with TF32 off)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--seed", type=int, default=1, help="seed of parameters and inputs")
    p.add_argument("--json-out", help="append one JSON object (one line) to this file")
    a = p.parse_args()
    a.num_attention_heads = a.num_attention_heads or max(1, a.hidden_size // 64)
    a.ffn_hidden_size = a.ffn_hidden_size or 4 * a.hidden_size
    checks = [
        (a.seq_length >= 1, f"--seq-length {a.seq_length} must be at least 1"),
        (a.hidden_size % a.num_attention_heads == 0,
         f"--hidden-size {a.hidden_size} must be a multiple of --num-attention-heads {a.num_attention_heads}"),
        (1 <= a.moe_top_k <= a.moe_num_experts,
         f"--moe-top-k {a.moe_top_k} must be in [1, --moe-num-experts {a.moe_num_experts}]"),
        (a.repeats >= 1 and a.warmup >= 0, "--repeats must be at least 1 and --warmup at least 0"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return a


class MoEBlock:
    """Parameters and forward of one block; autograd gives the backward."""

    def __init__(self, torch, a, device, dtype):
        self.torch, self.a = torch, a
        g = torch.Generator().manual_seed(a.seed)
        d, f, E = a.hidden_size, a.ffn_hidden_size, a.moe_num_experts

        def param(*shape, std=0.02, zero=False):
            t = torch.zeros(*shape) if zero else torch.randn(*shape, generator=g) * std
            return t.to(device=device, dtype=dtype).requires_grad_()

        self.ln1_w, self.ln1_b = param(d, zero=True), param(d, zero=True)
        self.ln2_w, self.ln2_b = param(d, zero=True), param(d, zero=True)
        with torch.no_grad():
            self.ln1_w.fill_(1)
            self.ln2_w.fill_(1)
        self.qkv_w, self.qkv_b = param(3 * d, d), param(3 * d, zero=True)
        self.proj_w, self.proj_b = param(d, d), param(d, zero=True)
        self.router_w = param(E, d)
        self.fc1_w, self.fc1_b = param(E, f, d), param(E, f, zero=True)
        self.fc2_w, self.fc2_b = param(E, d, f), param(E, d, zero=True)
        self.sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)

    def attention(self, q, k, v):
        torch = self.torch
        if self.sdpa is not None:
            return self.sdpa(q, k, v, is_causal=True)
        n = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v

    def forward(self, x):
        torch, F, a = self.torch, self.torch.nn.functional, self.a
        B, N, d, h = a.micro_batch_size, a.seq_length, a.hidden_size, a.num_attention_heads
        u = F.layer_norm(x, (d,), self.ln1_w, self.ln1_b)
        q, k, v = F.linear(u, self.qkv_w, self.qkv_b).split(d, dim=-1)
        heads = lambda t: t.view(B, N, h, d // h).transpose(1, 2)
        o = self.attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(B, N, d)
        hid = x + F.linear(o, self.proj_w, self.proj_b)

        m = F.layer_norm(hid, (d,), self.ln2_w, self.ln2_b).reshape(B * N, d)
        probs = F.linear(m, self.router_w).float().softmax(-1)
        top_p, top_i = probs.topk(a.moe_top_k, dim=-1)
        gates = top_p if a.moe_top_k == 1 else top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(m)
        for e in range(a.moe_num_experts):
            token, choice = (top_i == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            y = F.linear(F.gelu(F.linear(m[token], self.fc1_w[e], self.fc1_b[e]), approximate="tanh"),
                         self.fc2_w[e], self.fc2_b[e])
            out = out.index_add(0, token, y * gates[token, choice].unsqueeze(1).to(y.dtype))
        return hid + out.view(B, N, d)


def main():
    a = parse_args()
    try:
        import torch
    except ImportError:
        print("torch_block: skipped: no PyTorch in this python3", file=sys.stderr)
        return 77
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_block: skipped: PyTorch sees no CUDA device", file=sys.stderr)
        return 77
    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    block = MoEBlock(torch, a, device, dtype)
    shape = (a.micro_batch_size, a.seq_length, a.hidden_size)
    x = torch.randn(*shape).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(*shape).to(device=device, dtype=dtype)

    def step():
        y = block.forward(x)
        y.backward(dy)

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.repeats):
        if a.device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    attention = "sdpa" if block.sdpa is not None else "unfused (PyTorch < 2.0)"
    row = {"peer": "pytorch", "torch": torch.__version__, "device": a.device, "dtype": a.dtype,
           "attention": attention, "seq_length": a.seq_length, "hidden_size": a.hidden_size,
           "heads": a.num_attention_heads, "ffn_hidden_size": a.ffn_hidden_size,
           "num_experts": a.moe_num_experts, "top_k": a.moe_top_k, "batch": a.micro_batch_size,
           "time_ms": ms}
    print(f"torch_block: PyTorch {torch.__version__} {a.device} {a.dtype} attention={attention} "
          f"N={a.seq_length} d={a.hidden_size} h={a.num_attention_heads} f={a.ffn_hidden_size} "
          f"E={a.moe_num_experts} k={a.moe_top_k}: {ms:.2f} ms per forward + backward")
    if a.json_out:
        with open(a.json_out, "a") as out:
            out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
