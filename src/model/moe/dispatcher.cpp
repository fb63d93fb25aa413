#include "model/moe/dispatcher.h"

#include <cmath>

#include "kernels/elementwise.h"

namespace ampipe {

Dispatcher::Dispatcher(const ModelConfig& config, const ModelParallel& parallel)
    : experts_(config.num_experts),
      local_experts_(config.num_experts / parallel.ep_size()),
      top_k_(config.top_k),
      capacity_factor_(config.capacity_factor),
      wire_(config.bf16 ? DType::BF16 : DType::F32),
      group_(parallel.expert_group) {
  AMPIPE_CHECK(config.num_experts % parallel.ep_size() == 0)
      << "--moe-num-experts " << config.num_experts << " is not divisible by the expert-parallel size "
      << parallel.ep_size();
}

int64_t Dispatcher::capacity(int64_t tokens) const {
  if (capacity_factor_ <= 0.0) return -1;
  return static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(tokens * top_k_) /
                                        static_cast<double>(experts_)));
}

Tensor Dispatcher::exchange(const Tensor& rows, const std::vector<int64_t>& send_rows,
                            const std::vector<int64_t>& recv_rows) const {
  const int64_t d = rows.dim(1);
  int64_t total = 0;
  for (int64_t r : recv_rows) total += r;
  Tensor out = Tensor::empty({total, d}, rows.dtype(), rows.device());
  std::vector<int64_t> send_counts(send_rows.size()), recv_counts(recv_rows.size());
  for (size_t i = 0; i < send_rows.size(); ++i) send_counts[i] = send_rows[i] * d;
  for (size_t i = 0; i < recv_rows.size(); ++i) recv_counts[i] = recv_rows[i] * d;
  group_->all_to_all_v(rows.is_contiguous() ? rows : rows.clone(), send_counts, out, recv_counts);
  return out;
}

Tensor Dispatcher::dispatch(DispatchContext& ctx, const Tensor& m, const Tensor& expert_index,
                            const Tensor& gate) const {
  begin_dispatch(ctx, m, expert_index, gate);
  exchange_dispatch(ctx);
  return finish_dispatch(ctx);
}

Tensor Dispatcher::combine(DispatchContext& ctx, const Tensor& expert_output) const {
  begin_combine(ctx, expert_output);
  exchange_combine(ctx);
  return finish_combine(ctx);
}

Tensor Dispatcher::combine_backward(DispatchContext& ctx, const Tensor& dout, Tensor dgate) const {
  begin_combine_backward(ctx, dout, dgate);
  exchange_combine_backward(ctx);
  return finish_combine_backward(ctx);
}

Tensor Dispatcher::dispatch_backward(DispatchContext& ctx, const Tensor& dexpert_input) const {
  begin_dispatch_backward(ctx, dexpert_input);
  exchange_dispatch_backward(ctx);
  return finish_dispatch_backward(ctx);
}

void Dispatcher::begin_dispatch(DispatchContext& ctx, const Tensor& m, const Tensor& expert_index,
                                const Tensor& gate) const {
  ctx.plan = kernels::make_dispatch_plan(expert_index, static_cast<int>(experts_), capacity(m.dim(0)));
  ctx.gate = gate;
  ctx.in_flight = Tensor::empty({ctx.plan.num_slots(), m.dim(1)}, DType::F32, m.device());
  kernels::permute_forward(m, ctx.plan, ctx.in_flight);
  ctx.in_flight = kernels::as_dtype(ctx.in_flight, wire_);
  if (!distributed()) ctx.local_counts = ctx.plan.expert_counts;
}

void Dispatcher::exchange_dispatch(DispatchContext& ctx) const {
  if (!distributed()) return;
  // Rows per (destination rank, its local expert), exchanged first: counts[src][e_local]. The counts
  // are host values (DispatchPlan::expert_counts), exchanged in host buffers.
  const int ep = group_->size();
  Tensor send_counts = Tensor::empty({experts_}, DType::I32);
  for (int64_t e = 0; e < experts_; ++e)
    send_counts.data<int32_t>()[e] = static_cast<int32_t>(ctx.plan.expert_counts[e]);
  Tensor recv_counts = Tensor::empty({experts_}, DType::I32);
  group_->all_to_all_v(send_counts, std::vector<int64_t>(ep, local_experts_), recv_counts,
                       std::vector<int64_t>(ep, local_experts_));
  const int32_t* rc = recv_counts.data<int32_t>();
  ctx.send_rows.assign(ep, 0);
  ctx.recv_rows.assign(ep, 0);
  ctx.local_counts.assign(local_experts_, 0);
  for (int r = 0; r < ep; ++r)
    for (int64_t e = 0; e < local_experts_; ++e) {
      ctx.send_rows[r] += ctx.plan.expert_counts[r * local_experts_ + e];
      ctx.recv_rows[r] += rc[r * local_experts_ + e];
      ctx.local_counts[e] += rc[r * local_experts_ + e];
    }
  // Received rows are (source rank, local expert)-major; experts want (local expert, source rank).
  std::vector<int64_t> block_start(ep * local_experts_);
  int64_t row = 0;
  for (int r = 0; r < ep; ++r)
    for (int64_t e = 0; e < local_experts_; ++e) {
      block_start[r * local_experts_ + e] = row;
      row += rc[r * local_experts_ + e];
    }
  Tensor host_regroup = Tensor::empty({row}, DType::I32);
  int32_t* regroup = host_regroup.data<int32_t>();
  int64_t out_row = 0;
  for (int64_t e = 0; e < local_experts_; ++e)
    for (int r = 0; r < ep; ++r)
      for (int64_t i = 0; i < rc[r * local_experts_ + e]; ++i)
        regroup[out_row++] = static_cast<int32_t>(block_start[r * local_experts_ + e] + i);
  // host round trip (GPU): the regrouping index [P_local], built on the host from the exchanged
  // counts, crosses to the device of the rows it moves.
  ctx.regroup = host_regroup.to(ctx.in_flight.device());
  ctx.in_flight = exchange(ctx.in_flight, ctx.send_rows, ctx.recv_rows);
}

Tensor Dispatcher::finish_dispatch(DispatchContext& ctx) const {
  Tensor received = kernels::as_dtype(ctx.in_flight, DType::F32);
  ctx.in_flight = Tensor();
  if (!distributed()) return received;
  Tensor expert_input = Tensor::empty({ctx.regroup.numel(), received.dim(1)}, DType::F32, received.device());
  kernels::gather_rows(received, ctx.regroup, expert_input);
  return expert_input;
}

void Dispatcher::begin_combine(DispatchContext& ctx, const Tensor& expert_output) const {
  if (!distributed()) {
    ctx.in_flight = kernels::as_dtype(expert_output, wire_);
    return;
  }
  ctx.in_flight = Tensor::empty(expert_output.shape(), DType::F32, expert_output.device());
  kernels::scatter_rows(expert_output, ctx.regroup, ctx.in_flight);
  ctx.in_flight = kernels::as_dtype(ctx.in_flight, wire_);
}

void Dispatcher::exchange_combine(DispatchContext& ctx) const {
  if (distributed()) ctx.in_flight = exchange(ctx.in_flight, ctx.recv_rows, ctx.send_rows);
}

Tensor Dispatcher::finish_combine(DispatchContext& ctx) const {
  // Kept for the combine's backward (the gates' gradient) as it arrived: bf16 under --bf16, read
  // widened by the unpermute kernels (the same values as widening it here, half the bytes held).
  ctx.expert_output_permuted = ctx.in_flight;
  ctx.in_flight = Tensor();
  Tensor out = Tensor::empty({ctx.plan.token_slot.dim(0), ctx.expert_output_permuted.dim(1)}, DType::F32,
                             ctx.expert_output_permuted.device());
  kernels::unpermute_forward(ctx.expert_output_permuted, ctx.plan, ctx.gate, out);
  return out;
}

void Dispatcher::begin_combine_backward(DispatchContext& ctx, const Tensor& dout, Tensor dgate) const {
  ctx.in_flight = Tensor::empty(ctx.expert_output_permuted.shape(), DType::F32, dout.device());
  kernels::unpermute_backward(dout, ctx.expert_output_permuted, ctx.plan, ctx.gate, ctx.in_flight, dgate);
  ctx.in_flight = kernels::as_dtype(ctx.in_flight, wire_);
}

void Dispatcher::exchange_combine_backward(DispatchContext& ctx) const {
  if (distributed()) ctx.in_flight = exchange(ctx.in_flight, ctx.send_rows, ctx.recv_rows);
}

Tensor Dispatcher::finish_combine_backward(DispatchContext& ctx) const {
  Tensor received = kernels::as_dtype(ctx.in_flight, DType::F32);
  ctx.in_flight = Tensor();
  if (!distributed()) return received;
  Tensor dexpert_output = Tensor::empty({ctx.regroup.numel(), received.dim(1)}, DType::F32, received.device());
  kernels::gather_rows(received, ctx.regroup, dexpert_output);
  return dexpert_output;
}

void Dispatcher::begin_dispatch_backward(DispatchContext& ctx, const Tensor& dexpert_input) const {
  if (!distributed()) {
    ctx.in_flight = kernels::as_dtype(dexpert_input, wire_);
    return;
  }
  ctx.in_flight = Tensor::empty(dexpert_input.shape(), DType::F32, dexpert_input.device());
  kernels::scatter_rows(dexpert_input, ctx.regroup, ctx.in_flight);
  ctx.in_flight = kernels::as_dtype(ctx.in_flight, wire_);
}

void Dispatcher::exchange_dispatch_backward(DispatchContext& ctx) const {
  if (distributed()) ctx.in_flight = exchange(ctx.in_flight, ctx.recv_rows, ctx.send_rows);
}

Tensor Dispatcher::finish_dispatch_backward(DispatchContext& ctx) const {
  Tensor dpermuted = kernels::as_dtype(ctx.in_flight, DType::F32);
  ctx.in_flight = Tensor();
  Tensor dm = Tensor::empty({ctx.plan.token_slot.dim(0), dpermuted.dim(1)}, DType::F32, dpermuted.device());
  kernels::permute_backward(dpermuted, ctx.plan, dm);
  return dm;
}

}  // namespace ampipe
