#include "model/moe/dispatcher.h"

#include <cmath>

namespace ampipe {

Dispatcher::Dispatcher(const ModelConfig& config)
    : experts_(config.num_experts), top_k_(config.top_k), capacity_factor_(config.capacity_factor) {}

int64_t Dispatcher::capacity(int64_t tokens) const {
  if (capacity_factor_ <= 0.0) return -1;
  return static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(tokens * top_k_) /
                                        static_cast<double>(experts_)));
}

Tensor Dispatcher::dispatch(DispatchContext& ctx, const Tensor& m, const Tensor& expert_index,
                            const Tensor& gate) const {
  ctx.plan = kernels::make_dispatch_plan(expert_index, static_cast<int>(experts_), capacity(m.dim(0)));
  ctx.gate = gate;
  Tensor out = Tensor::empty({ctx.plan.num_slots(), m.dim(1)});
  kernels::permute_forward(m, ctx.plan, out);
  return out;
}

Tensor Dispatcher::combine(DispatchContext& ctx, const Tensor& expert_output) const {
  ctx.expert_output = expert_output;
  Tensor out = Tensor::empty({ctx.plan.token_slot.dim(0), expert_output.dim(1)});
  kernels::unpermute_forward(expert_output, ctx.plan, ctx.gate, out);
  return out;
}

Tensor Dispatcher::combine_backward(const DispatchContext& ctx, const Tensor& dout, Tensor dgate) const {
  Tensor dy = Tensor::empty(ctx.expert_output.shape());
  kernels::unpermute_backward(dout, ctx.expert_output, ctx.plan, ctx.gate, dy, dgate);
  return dy;
}

Tensor Dispatcher::dispatch_backward(const DispatchContext& ctx, const Tensor& dexpert_input) const {
  Tensor dm = Tensor::empty({ctx.plan.token_slot.dim(0), dexpert_input.dim(1)});
  kernels::permute_backward(dexpert_input, ctx.plan, dm);
  return dm;
}

}  // namespace ampipe
