#include "model/moe/experts.h"

#include "kernels/elementwise.h"
#include "model/linear.h"

namespace ampipe {

Experts::Experts(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
                 const ModelParallel& parallel)
    : experts_(config.num_experts / parallel.ep_size()),
      hidden_(config.hidden_size),
      ffn_(config.ffn_hidden_size / parallel.etp_size()),
      etp_group_(parallel.etp_size() > 1 ? parallel.expert_tensor_group : nullptr),
      etp_size_(parallel.etp_size()),
      etp_rank_(parallel.etp_rank()),
      swiglu_(config.swiglu),
      bf16_(config.bf16),
      selective_(config.selective_recompute) {
  AMPIPE_CHECK(config.num_experts % parallel.ep_size() == 0)
      << "--moe-num-experts " << config.num_experts << " is not divisible by the expert-parallel size "
      << parallel.ep_size();
  AMPIPE_CHECK(config.ffn_hidden_size % parallel.etp_size() == 0)
      << "--expert-tensor-parallel-size " << parallel.etp_size() << " does not divide the FFN width "
      << config.ffn_hidden_size << " (--ffn-hidden-size)";
  require_device_communicator(params.device(), etp_group_);
  const int64_t offset = parallel.ep_rank() * experts_;
  auto add = [&](const std::string& name, int64_t out, int64_t in) {
    Stacked m;
    m.weight = &params.add_expert(prefix + "moe." + name + ".weight", {experts_, out, in}, true, offset);
    m.weight->matmul = true;
    if (config.add_bias_linear)
      m.bias = &params.add_expert(prefix + "moe." + name + ".bias", {experts_, out}, false, offset);
    return m;
  };
  if (swiglu_) {
    in_ = add("w1", ffn_, hidden_);
    linear_ = add("w3", ffn_, hidden_);
    out_ = add("w2", hidden_, ffn_);
  } else {
    in_ = add("fc1", ffn_, hidden_);
    out_ = add("fc2", hidden_, ffn_);
  }
  if (!etp_group_) return;
  for (const TensorParallelShard& sh : expert_tensor_parallel_shards())
    params.get(sh.name).tensor_parallel = true;
}

std::vector<TensorParallelShard> Experts::expert_tensor_parallel_shards(int rank) const {
  std::vector<TensorParallelShard> out;
  if (etp_size_ == 1) return out;
  AMPIPE_CHECK(rank >= 0 && rank < etp_size_)
      << "expert-tensor-parallel rank " << rank << " is not in [0, " << etp_size_ << ")";
  const int64_t f = ffn_ * etp_size_;
  const std::vector<TensorParallelShard::Piece> piece{{0, rank * ffn_, ffn_}};
  // The input maps: rows of the hidden layer (dim 1 of [E_local, f, d], of the bias [E_local, f]).
  for (const Stacked* m : {&in_, &linear_}) {
    if (!m->weight) continue;
    out.push_back({m->weight->name, {experts_, f, hidden_}, 1, piece});
    if (m->bias) out.push_back({m->bias->name, {experts_, f}, 1, piece});
  }
  // The output map: its columns (dim 2 of [E_local, d, f]); its bias is whole.
  out.push_back({out_.weight->name, {experts_, hidden_, f}, 2, piece});
  return out;
}

Tensor Experts::slice(const Parameter* p, bool grad, int64_t e) {
  if (!p) return Tensor();
  const Tensor& t = grad ? p->grad : p->operand();
  Shape shape(t.shape().begin() + 1, t.shape().end());
  return t.rows(e, e + 1).reshape(shape);
}

void Experts::forward_map(const Stacked& m, int64_t e, const Tensor& x, Tensor y) {
  linear_forward(x, slice(m.weight, false, e), slice(m.bias, false, e), y);
}

void Experts::backward_map(int map, int64_t e, const Tensor& x, const Tensor& dy, Tensor dx,
                           bool accumulate_dx, ExpertsWeightGrads* delayed) const {
  const Stacked& m = stacked(map);
  if (delayed == nullptr) {
    linear_backward(x, slice(m.weight, false, e), dy, dx, slice(m.weight, true, e), slice(m.bias, true, e),
                    accumulate_dx);
    return;
  }
  linear_backward_input(slice(m.weight, false, e), dy, dx, accumulate_dx);
  delayed->items.push_back(ExpertsWeightGrads::Item{map, e, x, dy});
}

void Experts::weight_backward(ExpertsWeightGrads& delayed) const {
  for (const ExpertsWeightGrads::Item& item : delayed.items) {
    const Stacked& m = stacked(item.map);
    linear_backward_weight(item.x, slice(m.weight, false, item.expert), item.dy,
                           slice(m.weight, true, item.expert), slice(m.bias, true, item.expert));
  }
  delayed = ExpertsWeightGrads{};
}

void Experts::activation(const Tensor& h, const Tensor& h3, Tensor g32, Tensor g) const {
  if (swiglu_) kernels::swiglu_forward(h, h3, g32);
  else kernels::gelu_forward(h, g32);
  if (bf16_) kernels::convert(g32, g);
}

// Under bf16 the pre-activation rows are rounded to bf16 (what is kept for backward) before the
// activation reads them, so that forward and a recomputing backward see the same values.
static void round_in_place(Tensor rows32, Tensor rows16) {
  kernels::convert(rows32, rows16);
  kernels::convert(rows16, rows32);
}

Tensor Experts::forward(ExpertsContext& ctx, const Tensor& u, const std::vector<int64_t>& counts) const {
  return forward_reduce(ctx, forward_local(ctx, u, counts));
}

Tensor Experts::forward_reduce(const ExpertsContext& ctx, Tensor partial) const {
  if (!etp_group_) return partial;
  // The shards' partial outputs summed over the group (float32), then each expert's output bias once.
  etp_group_->all_reduce_sum(partial);
  add_output_bias(partial, ctx.counts);
  return partial;
}

void Experts::add_output_bias(Tensor y, const std::vector<int64_t>& counts) const {
  if (!out_.bias) return;
  int64_t row = 0;
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t n = counts[e];
    if (n > 0) kernels::add_bias(y.rows(row, row + n), slice(out_.bias, false, e));
    row += n;
  }
}

Tensor Experts::backward_reduce(Tensor partial) const {
  if (etp_group_) etp_group_->all_reduce_sum(partial);  // each shard's part of the input gradient
  return partial;
}

Tensor Experts::forward_local(ExpertsContext& ctx, const Tensor& u,
                              const std::vector<int64_t>& counts) const {
  AMPIPE_CHECK(static_cast<int64_t>(counts.size()) == experts_)
      << "experts got counts for " << counts.size() << " experts, hold " << experts_;
  const int64_t P = u.dim(0);
  ctx.counts = counts;
  const DType operand = bf16_ ? DType::BF16 : DType::F32;
  ctx.u = kernels::as_dtype(u, operand);
  const Device device = u.device();
  // bf16: h (and h3) are computed in float32 here and kept in bf16 (h16, h316) for backward.
  Tensor h32 = Tensor::empty({P, ffn_}, DType::F32, device);
  Tensor h332 = swiglu_ ? Tensor::empty({P, ffn_}, DType::F32, device) : Tensor();
  Tensor h16 = bf16_ ? Tensor::empty({P, ffn_}, DType::BF16, device) : Tensor();
  Tensor h316 = bf16_ && swiglu_ ? Tensor::empty({P, ffn_}, DType::BF16, device) : Tensor();
  Tensor g = Tensor::empty({P, ffn_}, operand, device);
  // bf16: the activation writes float32 rows here, which are rounded into g, the GEMM's operand.
  Tensor g32 = bf16_ ? Tensor::empty({P, ffn_}, DType::F32, device) : g;
  Tensor y = Tensor::empty({P, hidden_}, DType::F32, device);
  int64_t row = 0;
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t n = counts[e];
    if (n == 0) continue;
    AMPIPE_CHECK(row + n <= P) << "expert counts sum past the " << P << " input rows";
    const Tensor u_e = ctx.u.rows(row, row + n), h = h32.rows(row, row + n);
    const Tensor h3 = swiglu_ ? h332.rows(row, row + n) : Tensor();
    forward_map(in_, e, u_e, h);
    if (swiglu_) forward_map(linear_, e, u_e, h3);
    if (bf16_) {
      round_in_place(h, h16.rows(row, row + n));
      if (swiglu_) round_in_place(h3, h316.rows(row, row + n));
    }
    activation(h, h3, g32.rows(row, row + n), g.rows(row, row + n));
    if (etp_group_)  // row-parallel: the bias after the group's reduction (forward_reduce)
      linear_forward(g.rows(row, row + n), slice(out_.weight, false, e), Tensor(), y.rows(row, row + n));
    else
      forward_map(out_, e, g.rows(row, row + n), y.rows(row, row + n));
    row += n;
  }
  AMPIPE_CHECK(row == P) << "expert counts sum to " << row << ", input has " << P << " rows";
  // Kept for backward: the pre-activations (bf16 under --bf16, as Megatron keeps its activations;
  // backward widens each expert's rows for the float32 activation kernels) and, unless selective
  // recompute drops it, g.
  ctx.h = bf16_ ? h16 : h32;
  ctx.h3 = bf16_ ? h316 : h332;
  if (!selective_) ctx.g = g;
  return y;
}

Tensor Experts::backward(ExpertsContext& ctx, const Tensor& dy, ExpertsWeightGrads* delayed) const {
  return backward_reduce(backward_local(ctx, dy, delayed));
}

Tensor Experts::backward_local(ExpertsContext& ctx, const Tensor& dy, ExpertsWeightGrads* delayed) const {
  const int64_t P = dy.dim(0);
  const Device device = dy.device();
  Tensor du = Tensor::empty({P, hidden_}, DType::F32, device);
  Tensor dg = Tensor::empty({P, ffn_}, DType::F32, device);
  Tensor dh3 = swiglu_ ? Tensor::empty({P, ffn_}, DType::F32, device) : Tensor();
  int64_t row = 0;
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t n = ctx.counts[e];
    if (n == 0) continue;
    const Tensor u_e = ctx.u.rows(row, row + n), du_e = du.rows(row, row + n);
    const Tensor h = kernels::as_dtype(ctx.h.rows(row, row + n), DType::F32);  // widened when kept in bf16
    const Tensor h3 = swiglu_ ? kernels::as_dtype(ctx.h3.rows(row, row + n), DType::F32) : Tensor();
    Tensor dg_e = dg.rows(row, row + n);
    Tensor g_e;
    if (ctx.g.defined()) {
      g_e = ctx.g.rows(row, row + n);
    } else {  // selective recompute: the activation again, from the kept pre-activations
      Tensor g32 = Tensor::empty({n, ffn_}, DType::F32, device);
      g_e = bf16_ ? Tensor::empty({n, ffn_}, DType::BF16, device) : g32;
      activation(h, h3, g32, g_e);
    }
    backward_map(2, e, g_e, dy.rows(row, row + n), dg_e, false, delayed);
    if (swiglu_) {
      // swiglu_backward's outputs may not alias its inputs: the gate's gradient gets its own buffer.
      const Tensor dh3_e = dh3.rows(row, row + n);
      Tensor dh = Tensor::empty({n, ffn_}, DType::F32, device);
      kernels::swiglu_backward(h, h3, dg_e, dh, dh3_e);
      backward_map(0, e, u_e, dh, du_e, false, delayed);
      backward_map(1, e, u_e, dh3_e, du_e, true, delayed);
    } else {
      kernels::gelu_backward(h, dg_e, dg_e);
      backward_map(0, e, u_e, dg_e, du_e, false, delayed);
    }
    row += n;
  }
  ctx = ExpertsContext{};
  return du;
}

}  // namespace ampipe
