#include "model/attention_layer.h"

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"
#include "model/linear.h"

namespace ampipe {

AttentionLayer::AttentionLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix)
    : hidden_(config.hidden_size), heads_(config.num_attention_heads) {
  const int64_t d = hidden_;
  ln_w_ = &params.add(prefix + "ln1.weight", {d}, false);
  ln_b_ = &params.add(prefix + "ln1.bias", {d}, false);
  qkv_w_ = &params.add(prefix + "attn.qkv.weight", {3 * d, d}, true);
  qkv_b_ = &params.add(prefix + "attn.qkv.bias", {3 * d}, false);
  proj_w_ = &params.add(prefix + "attn.proj.weight", {d, d}, true);
  proj_b_ = &params.add(prefix + "attn.proj.bias", {d}, false);
}

static kernels::AttentionShape full_sequence(int64_t batch, int64_t heads, int64_t seq_len) {
  kernels::AttentionShape s;
  s.batch = batch;
  s.num_heads = heads;
  s.q_begin = 0;
  s.q_len = seq_len;
  s.kv_len = seq_len;
  return s;
}

Tensor AttentionLayer::forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const {
  const int64_t d = hidden_;
  const int64_t T = x.dim(0);
  AMPIPE_CHECK(T == batch * seq_len && x.dim(1) == d)
      << "attention input " << shape_string(x.shape()) << " is not [" << batch << "*" << seq_len << ", " << d << "]";
  ctx.batch = batch;
  ctx.seq_len = seq_len;
  ctx.x = x;
  ctx.ln_mean = Tensor::empty({T});
  ctx.ln_rstd = Tensor::empty({T});
  ctx.a = Tensor::empty({T, d});
  kernels::layernorm_forward(x, ln_w_->value, ln_b_->value, ctx.a, ctx.ln_mean, ctx.ln_rstd);
  ctx.qkv = Tensor::empty({T, 3 * d});
  linear_forward(ctx.a, qkv_w_->value, qkv_b_->value, ctx.qkv);
  ctx.o = Tensor::empty({T, d});
  ctx.lse = Tensor::empty({batch, heads_, seq_len});
  kernels::attention_forward(ctx.qkv.cols(0, d), ctx.qkv.cols(d, 2 * d), ctx.qkv.cols(2 * d, 3 * d),
                             full_sequence(batch, heads_, seq_len), ctx.o, ctx.lse);
  Tensor y = Tensor::empty({T, d});
  linear_forward(ctx.o, proj_w_->value, proj_b_->value, y);
  kernels::add_inplace(y, x);
  return y;
}

Tensor AttentionLayer::backward(AttentionContext& ctx, const Tensor& dy) const {
  const int64_t d = hidden_;
  const int64_t T = dy.dim(0);
  Tensor d_o = Tensor::empty({T, d});
  linear_backward(ctx.o, proj_w_->value, dy, d_o, proj_w_->grad, proj_b_->grad);
  Tensor dqkv = Tensor::zeros({T, 3 * d});
  kernels::attention_backward(ctx.qkv.cols(0, d), ctx.qkv.cols(d, 2 * d), ctx.qkv.cols(2 * d, 3 * d), ctx.o,
                              ctx.lse, d_o, full_sequence(ctx.batch, heads_, ctx.seq_len), dqkv.cols(0, d),
                              dqkv.cols(d, 2 * d), dqkv.cols(2 * d, 3 * d));
  Tensor da = Tensor::empty({T, d});
  linear_backward(ctx.a, qkv_w_->value, dqkv, da, qkv_w_->grad, qkv_b_->grad);
  Tensor dx = Tensor::empty({T, d});
  kernels::layernorm_backward(da, ctx.x, ln_w_->value, ctx.ln_mean, ctx.ln_rstd, dx, ln_w_->grad, ln_b_->grad);
  kernels::add_inplace(dx, dy);
  ctx = AttentionContext{};  // release the saved activations
  return dx;
}

}  // namespace ampipe
