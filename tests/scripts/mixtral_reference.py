#!/usr/bin/env python3
"""An independent reference of the Mixtral family (docs/MODEL.md), in float64 with plain torch ops.

Reads a Hugging Face Mixtral directory written by `ampipe export` (config.json and model.safetensors,
or shards with model.safetensors.index.json; the safetensors files are parsed here with the standard
library, transformers is not used) and a text file, and prints what `ampipe eval` prints for it:
{"loss": mean next-token cross-entropy, "tokens": targets counted}.

As `ampipe eval`: byte-level tokens (each byte of the file is a token), consecutive non-overlapping
windows of seq_length + 1 tokens (a final partial window is dropped), positions 0..N-1 in every
window, the loss is the mean cross-entropy per target token with no aux term.

Usage: mixtral_reference.py HF_DIR TEXT_FILE [--seq-length N]
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    """{name: float64 tensor} of one safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    buffer = bytearray(data[8 + n:])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            sys.exit(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        count = (end - begin) // torch.tensor([], dtype=dtype).element_size()
        t = torch.frombuffer(buffer, dtype=dtype, count=count, offset=begin) if count else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(entry["shape"]).to(torch.float64)
    return out


def read_weights(directory):
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        index = json.load(f)
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
        weights.update(read_safetensors(os.path.join(directory, shard)))
    return weights


def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """x [N, heads, hd]; rotate-half layout, position i = row i."""
    n, _, hd = x.shape
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # theta^(-2i/hd)
    angle = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [N, hd/2]
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def logits_of(tokens, w, c):
    d, h, g = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, E, k = d // h, c["num_local_experts"], c["num_experts_per_tok"]
    eps, theta = c["rms_norm_eps"], c["rope_theta"]
    n = len(tokens)
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (a @ w[p + "self_attn.q_proj.weight"].T).reshape(n, h, hd)
        kk = (a @ w[p + "self_attn.k_proj.weight"].T).reshape(n, g, hd)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(n, g, hd)
        q, kk = rope(q, theta), rope(kk, theta)
        kk = kk.repeat_interleave(h // g, dim=1)  # query head j uses KV head j // (h / g)
        v = v.repeat_interleave(h // g, dim=1)
        scores = torch.einsum("ihd,jhd->hij", q, kk) / math.sqrt(hd)
        scores = scores.masked_fill(~causal, float("-inf"))
        o = torch.einsum("hij,jhd->ihd", torch.softmax(scores, dim=-1), v).reshape(n, h * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T

        m = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        probs = torch.softmax(m @ w[p + "block_sparse_moe.gate.weight"].T, dim=-1)  # [N, E]
        order = torch.sort(-probs, dim=-1, stable=True).indices[:, :k]  # top-k, ties to the lower index
        chosen = probs.gather(1, order)
        gates = torch.zeros_like(probs).scatter(1, order, chosen / chosen.sum(-1, keepdim=True))
        moe = torch.zeros_like(x)
        for e in range(E):
            ex = p + f"block_sparse_moe.experts.{e}."
            u = torch.nn.functional.silu(m @ w[ex + "w1.weight"].T) * (m @ w[ex + "w3.weight"].T)
            moe = moe + gates[:, e:e + 1] * (u @ w[ex + "w2.weight"].T)
        x = x + moe
    y = rmsnorm(x, w["model.norm.weight"], eps)
    return y @ w["lm_head.weight"].T


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir")
    parser.add_argument("text_file")
    parser.add_argument("--seq-length", type=int, default=0, help="window length (default: max_position_embeddings)")
    args = parser.parse_args()
    with open(os.path.join(args.hf_dir, "config.json")) as f:
        c = json.load(f)
    if c.get("model_type") != "mixtral":
        sys.exit(f"config.json: model_type {c.get('model_type')!r} is not mixtral")
    if c.get("capacity_factor", 0) != 0:
        sys.exit("config.json: capacity_factor != 0 (token dropping) is not modelled by this reference")
    if c.get("sliding_window") not in (None,) and c["sliding_window"] < c["max_position_embeddings"]:
        sys.exit("config.json: a sliding window shorter than the sequence is not modelled by this reference")
    w = read_weights(args.hf_dir)
    n = args.seq_length or c["max_position_embeddings"]
    with open(args.text_file, "rb") as f:
        data = list(f.read())
    total, count = 0.0, 0
    with torch.no_grad():
        for off in range(0, len(data) - n, n + 1):
            window = data[off:off + n + 1]
            if len(window) < n + 1:
                break
            logits = logits_of(window[:-1], w, c)
            targets = torch.tensor(window[1:])
            losses = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None])[:, 0]
            total += losses.sum().item()
            count += n
    if count == 0:
        sys.exit(f"{args.text_file} holds no window of {n + 1} tokens")
    print(json.dumps({"loss": total / count, "tokens": count}))


if __name__ == "__main__":
    main()
