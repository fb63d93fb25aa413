// The attention half of a transformer block: x + proj(causal_attention(LN1(x))).
//
// Shapes: x [B*N, d], sequence-major. Parameters (registered under `prefix`, e.g. "blocks.0."):
// ln1.weight/bias [d], attn.qkv.weight [3d, d], attn.qkv.bias [3d], attn.proj.weight [d, d],
// attn.proj.bias [d].
//
// forward() saves what backward() needs in an AttentionContext; backward() consumes it and
// accumulates parameter gradients.
#pragma once

#include <string>

#include "model/config.h"
#include "model/parameters.h"

namespace ampipe {

struct AttentionContext {
  int64_t batch = 0, seq_len = 0;
  Tensor x;                  // [T, d] block input (residual stream)
  Tensor ln_mean, ln_rstd;   // [T]
  Tensor a;                  // [T, d] LN1(x)
  Tensor qkv;                // [T, 3d]
  Tensor o;                  // [T, d] attention output before projection
  Tensor lse;                // [B, h, N]
};

class AttentionLayer {
 public:
  AttentionLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix);

  // Returns x + proj(attn(LN1(x))) as a new [T, d] tensor.
  Tensor forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const;
  // dy [T, d] is the gradient of the output; returns the gradient of x (including the residual).
  Tensor backward(AttentionContext& ctx, const Tensor& dy) const;

 private:
  int64_t hidden_, heads_;
  Parameter *ln_w_, *ln_b_, *qkv_w_, *qkv_b_, *proj_w_, *proj_b_;
};

}  // namespace ampipe
