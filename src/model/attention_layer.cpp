#include "model/attention_layer.h"

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"
#include "kernels/permute.h"
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

Tensor chunk_row_index(int64_t batch, int64_t seq_len, int64_t begin, int64_t end) {
  Tensor rows = Tensor::empty({batch * (end - begin)}, DType::I32);
  int32_t* r = rows.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = begin; i < end; ++i) *r++ = static_cast<int32_t>(b * seq_len + i);
  return rows;
}

// The chunk's rows of a [B*N, w] buffer: a view when B == 1, else a gathered copy.
static Tensor chunk_rows_of(const Tensor& full, const AttentionChunk& c) {
  if (!c.rows.defined()) return full.rows(c.first_row, c.first_row + c.o.dim(0));
  Tensor out = Tensor::empty({c.rows.numel(), full.dim(1)});
  kernels::gather_rows(full, c.rows, out);
  return out;
}

static kernels::AttentionShape chunk_shape(const AttentionContext& ctx, int64_t heads, const AttentionChunk& c) {
  kernels::AttentionShape s;
  s.batch = ctx.batch;
  s.num_heads = heads;
  s.q_begin = c.begin;
  s.q_len = c.end - c.begin;
  s.kv_len = ctx.seq_len;
  return s;
}

void AttentionLayer::begin_forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const {
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
  ctx.chunks.clear();
}

Tensor AttentionLayer::chunk_forward(AttentionContext& ctx, int64_t begin, int64_t end, size_t* chunk_index) const {
  AMPIPE_CHECK(0 <= begin && begin < end && end <= ctx.seq_len)
      << "attention chunk [" << begin << ", " << end << ") is not inside the sequence [0, " << ctx.seq_len << ")";
  const int64_t d = hidden_;
  AttentionChunk c;
  c.begin = begin;
  c.end = end;
  const int64_t rows = ctx.batch * (end - begin);
  if (ctx.batch == 1) c.first_row = begin;
  else if (begin != 0 || end != ctx.seq_len) c.rows = chunk_row_index(ctx.batch, ctx.seq_len, begin, end);
  c.o = Tensor::empty({rows, d});
  c.q = chunk_rows_of(ctx.qkv.cols(0, d), c);
  c.lse = Tensor::empty({ctx.batch, heads_, end - begin});
  kernels::attention_forward(c.q, ctx.qkv.cols(d, 2 * d), ctx.qkv.cols(2 * d, 3 * d), chunk_shape(ctx, heads_, c), c.o,
                             c.lse);
  Tensor h = Tensor::empty({rows, d});
  linear_forward(c.o, proj_w_->value, proj_b_->value, h);
  kernels::add_inplace(h, chunk_rows_of(ctx.x, c));
  if (chunk_index) *chunk_index = ctx.chunks.size();
  ctx.chunks.push_back(std::move(c));
  return h;
}

void AttentionLayer::chunk_backward(AttentionContext& ctx, size_t chunk_index, const Tensor& dh) const {
  AMPIPE_CHECK(chunk_index < ctx.chunks.size()) << "no attention chunk " << chunk_index;
  const int64_t d = hidden_;
  AttentionChunk& c = ctx.chunks[chunk_index];
  const int64_t rows = c.o.dim(0);
  if (!ctx.dqkv.defined()) ctx.dqkv = Tensor::zeros({ctx.x.dim(0), 3 * d});
  Tensor d_o = Tensor::empty({rows, d});
  linear_backward(c.o, proj_w_->value, dh, d_o, proj_w_->grad, proj_b_->grad);
  Tensor dq = c.rows.defined() ? Tensor::empty({rows, d}) : ctx.dqkv.cols(0, d).rows(c.first_row, c.first_row + rows);
  kernels::attention_backward(c.q, ctx.qkv.cols(d, 2 * d), ctx.qkv.cols(2 * d, 3 * d), c.o, c.lse, d_o,
                              chunk_shape(ctx, heads_, c), dq, ctx.dqkv.cols(d, 2 * d), ctx.dqkv.cols(2 * d, 3 * d));
  if (c.rows.defined()) kernels::scatter_rows(dq, c.rows, ctx.dqkv.cols(0, d));
  c = AttentionChunk{};  // the chunk's activations are no longer needed
}

Tensor AttentionLayer::finish_backward(AttentionContext& ctx) const {
  const int64_t d = hidden_;
  const int64_t T = ctx.x.dim(0);
  Tensor da = Tensor::empty({T, d});
  linear_backward(ctx.a, qkv_w_->value, ctx.dqkv, da, qkv_w_->grad, qkv_b_->grad);
  Tensor dx = Tensor::empty({T, d});
  kernels::layernorm_backward(da, ctx.x, ln_w_->value, ctx.ln_mean, ctx.ln_rstd, dx, ln_w_->grad, ln_b_->grad);
  ctx = AttentionContext{};  // release the saved activations
  return dx;
}

Tensor AttentionLayer::forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const {
  begin_forward(ctx, x, batch, seq_len);
  Tensor h = chunk_forward(ctx, 0, seq_len);
  return h;
}

Tensor AttentionLayer::backward(AttentionContext& ctx, const Tensor& dy) const {
  chunk_backward(ctx, 0, dy);
  Tensor dx = finish_backward(ctx);
  kernels::add_inplace(dx, dy);
  return dx;
}

}  // namespace ampipe
