// The attention half of a transformer block: x + proj(causal_attention(LN1(x))).
//
// Shapes: x [B*N, d], sequence-major. Parameters (registered under `prefix`, e.g. "blocks.0."):
// ln1.weight/bias [d], attn.qkv.weight [3d, d], attn.qkv.bias [3d], attn.proj.weight [d, d],
// attn.proj.bias [d].
//
// The layer runs whole or in sequence chunks (the intra-block pipeline):
//   begin_forward     LN1 and the QKV projection for the whole sequence (one GEMM);
//   chunk_forward     for positions [begin, end) of every sequence: attention of those queries
//                     against keys [0, end), the projection and the residual -> h rows of the chunk;
//   chunk_backward    the mirror of one chunk; dK and dV accumulate over chunks, dQ of the chunk;
//   finish_backward   the QKV and LN1 backward, once, after every chunk's backward.
// forward()/backward() are the one-chunk case. Every chunk of [0, N) must be run, in any order.
// The saved activations live in an AttentionContext owned by the caller.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/parameters.h"

namespace ampipe {

struct AttentionChunk {
  int64_t begin = 0, end = 0;  // positions within each sequence
  Tensor rows;                 // [B*(end-begin)] int32 rows of the [B*N] buffers, or undefined when
  int64_t first_row = 0;       // they are contiguous (B == 1, or the whole sequence): from first_row
  Tensor q;                    // [B*len, d] the chunk's queries (a view when B == 1)
  Tensor o;                    // [B*len, d] attention output before projection
  Tensor lse;                  // [B, h, len]
};

struct AttentionContext {
  int64_t batch = 0, seq_len = 0;
  Tensor x;                   // [T, d] block input (residual stream)
  Tensor ln_mean, ln_rstd;    // [T]
  Tensor a;                   // [T, d] LN1(x)
  Tensor qkv;                 // [T, 3d]
  Tensor dqkv;                // [T, 3d] gradient, accumulated by chunk_backward
  std::vector<AttentionChunk> chunks;
};

class AttentionLayer {
 public:
  AttentionLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix);

  void begin_forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const;
  // Returns h = x + proj(attn) for the chunk's rows [B*(end-begin), d]; returns the chunk's index.
  Tensor chunk_forward(AttentionContext& ctx, int64_t begin, int64_t end, size_t* chunk_index = nullptr) const;
  // dh [B*len, d]: gradient of the chunk's h (the caller adds dh to the residual gradient itself).
  void chunk_backward(AttentionContext& ctx, size_t chunk_index, const Tensor& dh) const;
  // Returns the gradient of x through LN1 and QKV ([T, d], without the residual); releases ctx.
  Tensor finish_backward(AttentionContext& ctx) const;

  // Whole-sequence convenience: x + proj(attn(LN1(x))), and its backward (residual included).
  Tensor forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const;
  Tensor backward(AttentionContext& ctx, const Tensor& dy) const;

 private:
  int64_t hidden_, heads_;
  Parameter *ln_w_, *ln_b_, *qkv_w_, *qkv_b_, *proj_w_, *proj_b_;
};

// Rows of positions [begin, end) of each of `batch` sequences of length seq_len in a sequence-major
// [batch*seq_len] buffer, as an int32 index (b-major).
Tensor chunk_row_index(int64_t batch, int64_t seq_len, int64_t begin, int64_t end);

}  // namespace ampipe
