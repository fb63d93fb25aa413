#include "model/attention_layer.h"

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"
#include "kernels/permute.h"
#include "kernels/rope.h"
#include "model/linear.h"
#include "model/sequence_parallel.h"

namespace ampipe {

namespace {

// This rank's share of `count` heads (or KV groups) over the tensor group; refuses count % T != 0.
int64_t local_count(int64_t count, const ModelParallel& parallel, const char* what) {
  const int ranks = parallel.tp_size();
  AMPIPE_CHECK(count % ranks == 0) << "tensor-parallel attention: the number of " << what << " (" << count
                                   << ") must be divisible by the tensor-parallel size "
                                   << "(--tensor-model-parallel-size) " << ranks << " (remainder "
                                   << count % ranks << ")";
  return count / ranks;
}

}  // namespace

AttentionLayer::AttentionLayer(const ModelConfig& config, ParameterRegistry& params,
                               const std::string& prefix, const ModelParallel& parallel)
    : hidden_(config.hidden_size),
      heads_(local_count(config.num_attention_heads, parallel, "attention heads h")),
      kv_heads_(local_count(config.kv_heads(), parallel, "query groups g (KV heads)")),
      head_dim_(config.head_dim()),
      tensor_group_(parallel.tp_size() > 1 ? parallel.tensor_group : nullptr),
      tp_size_(parallel.tp_size()),
      tp_rank_(parallel.tp_rank()),
      sp_(parallel.sp()),
      rope_(config.rope()),
      bf16_(config.bf16),
      selective_(config.selective_recompute),
      rope_theta_(config.rotary_base),
      norm_(config, params, prefix + "ln1") {
  require_device_communicator(params.device(), tensor_group_);
  const int64_t d = hidden_;
  const bool bias = config.add_bias_linear;
  const int64_t q = q_width(), kv = kv_width();  // this rank's widths
  if (config.mixtral()) {
    add_input(params, prefix + "attn.q", 0, q, bias);
    add_input(params, prefix + "attn.k", q, q + kv, bias);
    add_input(params, prefix + "attn.v", q + kv, q + 2 * kv, bias);
  } else {
    add_input(params, prefix + "attn.qkv", 0, q + 2 * kv, bias);
  }
  const std::string out = prefix + (config.mixtral() ? "attn.o" : "attn.proj");
  out_w_ = &params.add(out + ".weight", {d, q}, true);
  out_w_->matmul = true;
  if (bias) out_b_ = &params.add(out + ".bias", {d}, false);  // whole on every rank
  if (!tensor_group_) return;
  if (sp_) norm_.mark_sequence_parallel();  // norm1 runs on whole rows, but its backward on partial sums
  shards_ = attention_tensor_parallel_shards(config, prefix, tp_rank_, tp_size_);
  for (const TensorParallelShard& s : shards_) params.get(s.name).tensor_parallel = true;
}

// One input projection, columns [begin, end) of this rank's qkv.
void AttentionLayer::add_input(ParameterRegistry& params, const std::string& name, int64_t begin, int64_t end,
                               bool bias) {
  Parameter* w = &params.add(name + ".weight", {end - begin, hidden_}, true);
  w->matmul = true;
  Parameter* b = bias ? &params.add(name + ".bias", {end - begin}, false) : nullptr;
  input_.push_back({w, b, begin, end});
}

std::vector<TensorParallelShard> attention_tensor_parallel_shards(const ModelConfig& config,
                                                                  const std::string& prefix, int rank,
                                                                  int ranks) {
  AMPIPE_CHECK(ranks >= 1 && rank >= 0 && rank < ranks)
      << "tensor-parallel rank " << rank << " is not in [0, " << ranks << ")";
  std::vector<TensorParallelShard> out;
  if (ranks == 1) return out;
  const int64_t d = config.hidden_size, hd = config.head_dim();
  const int64_t full_q = config.num_attention_heads * hd, full_kv = config.kv_heads() * hd;
  AMPIPE_CHECK(config.num_attention_heads % ranks == 0 && config.kv_heads() % ranks == 0)
      << "tensor-parallel attention: the attention heads h (" << config.num_attention_heads
      << ") and query groups g (" << config.kv_heads() << ") must be divisible by the tensor-parallel size "
      << "(--tensor-model-parallel-size) " << ranks;
  const int64_t q = full_q / ranks, kv = full_kv / ranks;
  const int64_t q0 = rank * q, kv0 = rank * kv;
  auto input = [&](const std::string& name, const std::vector<TensorParallelShard::Piece>& pieces,
                   int64_t rows) {
    out.push_back({name + ".weight", {rows, d}, 0, pieces});
    if (config.add_bias_linear) out.push_back({name + ".bias", {rows}, 0, pieces});
  };
  if (config.mixtral()) {
    input(prefix + "attn.q", {{0, q0, q}}, full_q);
    input(prefix + "attn.k", {{0, kv0, kv}}, full_kv);
    input(prefix + "attn.v", {{0, kv0, kv}}, full_kv);
  } else {
    input(prefix + "attn.qkv", {{0, q0, q}, {q, full_q + kv0, kv}, {q + kv, full_q + full_kv + kv0, kv}},
          full_q + 2 * full_kv);
  }
  const std::string o = prefix + (config.mixtral() ? "attn.o" : "attn.proj");
  out.push_back({o + ".weight", {d, full_q}, 1, {{0, q0, q}}});
  return out;
}

Tensor chunk_row_index(int64_t batch, int64_t seq_len, int64_t begin, int64_t end, Device device) {
  Tensor rows = Tensor::empty({batch * (end - begin)}, DType::I32);
  int32_t* r = rows.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = begin; i < end; ++i) *r++ = static_cast<int32_t>(b * seq_len + i);
  // host round trip (GPU): the chunk's row index [B*(end-begin)] is built on the host and crosses to the device.
  return rows.to(device);
}

// Rows [first, first + count) of a [B*N, w] buffer when `rows` is undefined, else the gathered rows.
static Tensor rows_of(const Tensor& full, const Tensor& rows, int64_t first, int64_t count) {
  if (!rows.defined()) return full.rows(first, first + count);
  Tensor out = Tensor::empty({rows.numel(), full.dim(1)}, full.dtype(), full.device());
  kernels::gather_rows(full, rows, out);
  return out;
}

// The chunk's rows of a [B*N, w] buffer: a view when B == 1, else a gathered copy.
static Tensor chunk_rows_of(const Tensor& full, const AttentionChunk& c) {
  return rows_of(full, c.rows, c.first_row, c.o.dim(0));
}

static kernels::AttentionShape chunk_shape(const AttentionContext& ctx, int64_t heads, int64_t kv_heads,
                                           const AttentionChunk& c) {
  kernels::AttentionShape s;
  s.batch = ctx.batch;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.q_begin = c.begin;
  s.q_len = c.end - c.begin;
  s.kv_len = ctx.seq_len;
  return s;
}

void AttentionLayer::prepare_forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const {
  const int64_t d = hidden_;
  AMPIPE_CHECK(x.dim(0) == batch * seq_len && x.dim(1) == d)
      << "attention input " << shape_string(x.shape()) << " is not [" << batch << "*" << seq_len << ", " << d
      << "]";
  ctx.batch = batch;
  ctx.seq_len = seq_len;
  ctx.x = x;
  ctx.local = Tensor();
  if (sp_) {  // x is this rank's rows; the whole rows are gathered into ctx.x by input_gather
    ctx.local = x;
    ctx.seq_len = seq_len * tp_size_;
    ctx.x = Tensor::empty({batch * ctx.seq_len, d}, DType::F32, x.device());
  }
  const int64_t T = ctx.x.dim(0);
  // bf16: q, k and v are kept in bf16 (the attention kernel reads them widened, in float32).
  ctx.qkv = Tensor::empty({T, q_width() + 2 * kv_width()}, bf16_ ? DType::BF16 : DType::F32, x.device());
  ctx.dqkv = Tensor();
  ctx.inputs.clear();
  ctx.chunks.clear();
}

Tensor AttentionLayer::local_rows(const AttentionContext& ctx, int64_t begin, int64_t end) const {
  const int64_t n = ctx.seq_len / tp_size_;  // the local sequence
  AMPIPE_CHECK(0 <= begin && begin < end && end <= n)
      << "local rows [" << begin << ", " << end << ") are not inside the local sequence [0, " << n << ")";
  if (ctx.batch == 1) return ctx.local.rows(begin, end);
  if (begin == 0 && end == n) return ctx.local;
  return rows_of(ctx.local, chunk_row_index(ctx.batch, n, begin, end, ctx.local.device()), 0,
                 ctx.batch * (end - begin));
}

void AttentionLayer::input_gather(AttentionContext& ctx, int64_t begin, int64_t end) const {
  if (!sp_) return;
  const Tensor whole = sequence_gather(*tensor_group_, local_rows(ctx, begin, end));
  const int64_t T = tp_size_;
  if (ctx.batch == 1) {
    ctx.x.rows(T * begin, T * end).copy_from(whole);
  } else {
    kernels::scatter_rows(whole, chunk_row_index(ctx.batch, ctx.seq_len, T * begin, T * end, ctx.x.device()),
                          ctx.x);
  }
}

Tensor AttentionLayer::sequence_gather_rows(const Tensor& local) const {
  return sp_ ? sequence_gather(*tensor_group_, local) : local;
}

size_t AttentionLayer::input_forward(AttentionContext& ctx, int64_t begin, int64_t end) const {
  if (sp_) {  // local positions -> the whole sequence's
    begin *= tp_size_;
    end *= tp_size_;
  }
  AMPIPE_CHECK(0 <= begin && begin < end && end <= ctx.seq_len)
      << "attention input rows [" << begin << ", " << end << ") are not inside the sequence [0, " << ctx.seq_len
      << ")";
  AttentionInput in;
  in.begin = begin;
  in.end = end;
  const int64_t rows = ctx.batch * (end - begin);
  const Device device = ctx.x.device();
  if (ctx.batch == 1) in.first_row = begin;
  else if (begin != 0 || end != ctx.seq_len) in.rows = chunk_row_index(ctx.batch, ctx.seq_len, begin, end, device);
  in.x = rows_of(ctx.x, in.rows, in.first_row, rows);
  // bf16: the norm's output is only the projections' operand (its backward reads x and the
  // statistics), so the norm writes it in bf16 (rounded once): half the bytes saved for backward.
  in.a = Tensor::empty({rows, hidden_}, bf16_ ? DType::BF16 : DType::F32, device);
  norm_.forward(in.x, in.a, in.norm);
  // The projections and rope run in float32; under bf16 the rows are rounded once into ctx.qkv.
  const bool staged = in.rows.defined() || bf16_;
  Tensor qkv = staged ? Tensor::empty({rows, ctx.qkv.dim(1)}, DType::F32, device)
                      : ctx.qkv.rows(in.first_row, in.first_row + rows);
  for (const Projection& p : input_)
    linear_forward(in.a, p.weight->operand(), p.bias ? p.bias->value : Tensor(), qkv.cols(p.begin, p.end));
  if (selective_) in.a = Tensor();  // input_backward recomputes it from x and the statistics
  if (rope_) {
    kernels::rope_forward(q_cols(qkv), ctx.batch, heads_, begin, rope_theta_);
    kernels::rope_forward(k_cols(qkv), ctx.batch, kv_heads_, begin, rope_theta_);
  }
  if (in.rows.defined())
    kernels::scatter_rows(kernels::as_dtype(qkv, ctx.qkv.dtype()), in.rows, ctx.qkv);
  else if (staged)
    kernels::convert(qkv, ctx.qkv.rows(in.first_row, in.first_row + rows));
  ctx.inputs.push_back(std::move(in));
  return ctx.inputs.size() - 1;
}

void AttentionLayer::begin_forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const {
  prepare_forward(ctx, x, batch, seq_len);
  input_gather(ctx, 0, seq_len);
  input_forward(ctx, 0, seq_len);
}

Tensor AttentionLayer::chunk_forward(AttentionContext& ctx, int64_t begin, int64_t end, size_t* chunk_index) const {
  size_t index = 0;
  Tensor h = chunk_forward_local(ctx, begin, end, &index);
  if (tensor_group_)
    h = chunk_forward_reduce(h, sp_ ? local_rows(ctx, begin, end) : chunk_rows_of(ctx.x, ctx.chunks[index]));
  if (chunk_index) *chunk_index = index;
  return h;
}

Tensor AttentionLayer::chunk_forward_local(AttentionContext& ctx, int64_t begin, int64_t end,
                                           size_t* chunk_index) const {
  if (sp_) {  // local positions -> the whole sequence's
    begin *= tp_size_;
    end *= tp_size_;
  }
  AMPIPE_CHECK(0 <= begin && begin < end && end <= ctx.seq_len)
      << "attention chunk [" << begin << ", " << end << ") is not inside the sequence [0, " << ctx.seq_len << ")";
  const int64_t d = hidden_;
  AttentionChunk c;
  c.begin = begin;
  c.end = end;
  const int64_t rows = ctx.batch * (end - begin);
  const Device device = ctx.x.device();
  if (ctx.batch == 1) c.first_row = begin;
  else if (begin != 0 || end != ctx.seq_len) c.rows = chunk_row_index(ctx.batch, ctx.seq_len, begin, end, device);
  // bf16: the attention output is kept in bf16 (the projection's operand, rounded once by the kernel).
  c.o = Tensor::empty({rows, q_width()}, bf16_ ? DType::BF16 : DType::F32, device);
  c.q = chunk_rows_of(q_cols(ctx.qkv), c);
  c.lse = Tensor::empty({ctx.batch, heads_, end - begin}, DType::F32, device);
  kernels::attention_forward(c.q, k_cols(ctx.qkv), v_cols(ctx.qkv), chunk_shape(ctx, heads_, kv_heads_, c), c.o,
                             c.lse);
  Tensor h = Tensor::empty({rows, d}, DType::F32, device);
  if (tensor_group_) {
    // Row-parallel: this rank's heads' share of the projection; chunk_forward_reduce sums it.
    linear_forward(c.o, out_w_->operand(), Tensor(), h);
  } else {
    linear_forward(c.o, out_w_->operand(), out_b_ ? out_b_->value : Tensor(), h);
    kernels::add_inplace(h, chunk_rows_of(ctx.x, c));
  }
  if (chunk_index) *chunk_index = ctx.chunks.size();
  ctx.chunks.push_back(std::move(c));
  return h;
}

Tensor AttentionLayer::chunk_forward_reduce(Tensor partial, const Tensor& residual) const {
  AMPIPE_CHECK(tensor_group_) << "chunk_forward_reduce without a tensor-parallel group";
  AMPIPE_CHECK(residual.dim(0) * (sp_ ? tp_size_ : 1) == partial.dim(0) && residual.dim(1) == partial.dim(1))
      << "chunk_forward_reduce: residual rows " << shape_string(residual.shape())
      << " for a partial projection " << shape_string(partial.shape())
      << (sp_ ? " (sequence parallel: the residual holds 1/T of the rows)" : "");
  // The partial projections summed over the group (float32, also under bf16): whole, or this
  // rank's rows of the sum under sequence parallelism; then the whole bias once and the residual.
  if (sp_) {
    Tensor mine = Tensor::empty(residual.shape(), DType::F32, residual.device());
    sequence_reduce_scatter(*tensor_group_, partial, mine);
    partial = mine;
  } else {
    tensor_group_->all_reduce_sum(partial);
  }
  if (out_b_) kernels::add_bias(partial, out_b_->value);
  kernels::add_inplace(partial, residual);
  return partial;
}

void AttentionLayer::chunk_backward(AttentionContext& ctx, size_t chunk_index, const Tensor& dh) const {
  AMPIPE_CHECK(chunk_index < ctx.chunks.size()) << "no attention chunk " << chunk_index;
  AttentionChunk& c = ctx.chunks[chunk_index];
  const int64_t rows = c.o.dim(0);
  const Device device = ctx.x.device();
  if (!ctx.dqkv.defined()) ctx.dqkv = Tensor::zeros({ctx.x.dim(0), q_width() + 2 * kv_width()}, DType::F32, device);
  Tensor d_o = Tensor::empty({rows, q_width()}, DType::F32, device);
  linear_backward(c.o, out_w_->operand(), dh, d_o, out_w_->grad, out_b_ ? out_b_->grad : Tensor());
  Tensor dq = c.rows.defined() ? Tensor::empty({rows, q_width()}, DType::F32, device)
                               : q_cols(ctx.dqkv).rows(c.first_row, c.first_row + rows);
  kernels::attention_backward(c.q, k_cols(ctx.qkv), v_cols(ctx.qkv), c.o, c.lse, d_o,
                              chunk_shape(ctx, heads_, kv_heads_, c), dq, k_cols(ctx.dqkv), v_cols(ctx.dqkv));
  if (c.rows.defined()) kernels::scatter_rows(dq, c.rows, q_cols(ctx.dqkv));
  c = AttentionChunk{};  // the chunk's activations are no longer needed
}

Tensor AttentionLayer::input_backward(AttentionContext& ctx, size_t input_index) const {
  return input_backward_reduce(ctx, input_index, input_backward_local(ctx, input_index));
}

Tensor AttentionLayer::input_backward_local(AttentionContext& ctx, size_t input_index) const {
  AMPIPE_CHECK(input_index < ctx.inputs.size() && ctx.inputs[input_index].x.defined())
      << "no attention input " << input_index << " to run backward";
  AMPIPE_CHECK(ctx.dqkv.defined()) << "attention input backward before any chunk's backward";
  AttentionInput& in = ctx.inputs[input_index];
  const int64_t rows = in.x.dim(0);
  // A view when contiguous: these rows of dqkv are complete and no other chunk touches them again.
  Tensor dqkv = rows_of(ctx.dqkv, in.rows, in.first_row, rows);
  if (rope_) {
    kernels::rope_backward(q_cols(dqkv), ctx.batch, heads_, in.begin, rope_theta_);
    kernels::rope_backward(k_cols(dqkv), ctx.batch, kv_heads_, in.begin, rope_theta_);
  }
  Tensor da = Tensor::empty({rows, hidden_}, DType::F32, in.x.device());
  if (!in.a.defined()) {  // selective recompute: norm1(x) again, the same kernel on the same rows
    NormStats again;
    in.a = Tensor::empty({rows, hidden_}, bf16_ ? DType::BF16 : DType::F32, in.x.device());
    norm_.forward(in.x, in.a, again);
  }
  for (size_t i = 0; i < input_.size(); ++i) {
    const Projection& p = input_[i];
    linear_backward(in.a, p.weight->operand(), dqkv.cols(p.begin, p.end), da, p.weight->grad,
                    p.bias ? p.bias->grad : Tensor(), /*accumulate_dx=*/i > 0);
  }
  in.a = Tensor();  // the projections' operand is spent
  if (!sp_) return da;
  // Sequence parallel: norm1's backward is linear in its output gradient, so it runs on this rank's
  // partial sum; input_backward_reduce reduce-scatters the partial dx (the norm's parameter
  // gradients are partial too, summed over the group with the other sequence-parallel ones).
  Tensor dx = Tensor::empty({rows, hidden_}, DType::F32, in.x.device());
  norm_.backward(da, in.x, in.norm, dx);
  return dx;
}

Tensor AttentionLayer::input_backward_reduce(AttentionContext& ctx, size_t input_index, Tensor da) const {
  AMPIPE_CHECK(input_index < ctx.inputs.size() && ctx.inputs[input_index].x.defined())
      << "no attention input " << input_index << " to finish the backward of";
  AttentionInput& in = ctx.inputs[input_index];
  if (sp_) {  // da is the partial dx of the whole rows: this rank's rows of its sum
    Tensor dx = Tensor::empty({in.x.dim(0) / tp_size_, hidden_}, DType::F32, in.x.device());
    sequence_reduce_scatter(*tensor_group_, da, dx);
    in = AttentionInput{};
    return dx;
  }
  // Column-parallel backward: each rank's heads give a partial gradient of norm1's output.
  if (tensor_group_) tensor_group_->all_reduce_sum(da);
  Tensor dx = Tensor::empty({in.x.dim(0), hidden_}, DType::F32, in.x.device());
  norm_.backward(da, in.x, in.norm, dx);
  in = AttentionInput{};  // release the rows' saved activations
  return dx;
}

Tensor AttentionLayer::finish_backward(AttentionContext& ctx) const {
  AMPIPE_CHECK(ctx.inputs.size() == 1 && ctx.inputs[0].begin == 0 && ctx.inputs[0].end == ctx.seq_len)
      << "finish_backward needs the whole-sequence input of begin_forward";
  Tensor dx = input_backward(ctx, 0);
  ctx = AttentionContext{};  // release the saved activations
  return dx;
}

Tensor AttentionLayer::forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const {
  begin_forward(ctx, x, batch, seq_len);
  Tensor h = chunk_forward(ctx, 0, seq_len);
  return h;
}

Tensor AttentionLayer::backward(AttentionContext& ctx, const Tensor& dy) const {
  chunk_backward(ctx, 0, sequence_gather_rows(dy));
  Tensor dx = finish_backward(ctx);
  kernels::add_inplace(dx, dy);
  return dx;
}

}  // namespace ampipe
