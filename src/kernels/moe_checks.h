// Argument checks shared by the CPU and CUDA backends of kernels/router.h and kernels/permute.h
// (internal to kernels/). They read shapes, dtypes and plan layout only, never tensor contents, so
// they run on tensors of either device; each throws ampipe::Error with the same message on both.
// Checks of contents (expert indices in range) stay with each backend: the CPU reads them on the
// host, the GPU on the device (see kernels/cuda/permute.cu).
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/permute.h"

namespace ampipe::kernels::detail {

// router_topk: probs [T, E] 2-D, 1 <= k <= E, expert_index int32 [T, k], gate float32 [T, k].
void check_router_topk(const Tensor& probs, int k, const Tensor& expert_index, const Tensor& gate);
// router_topk_backward: probs [T, E], expert_index int32 [T, k] with 1 <= k <= E, gate and dgate
// float32 [T, k], dprobs shaped like probs.
void check_router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate,
                                const Tensor& dgate, const Tensor& dprobs);
// One expert index read from the contents (on whichever device holds them): throws unless
// 0 <= expert < experts, naming the token and choice.
void check_expert_in_range(int64_t expert, int64_t token, int64_t choice, int64_t experts, const char* op);

// make_dispatch_plan: num_experts >= 1, expert_index int32 [T, k].
void check_dispatch_plan_args(const Tensor& expert_index, int num_experts);
// The shapes of permute / unpermute against the plan ([T, k] token_slot, [P] slot_token).
void check_permute_forward(const Tensor& x, const DispatchPlan& plan, const Tensor& out);
void check_permute_backward(const Tensor& dout, const DispatchPlan& plan, const Tensor& dx);
void check_unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate,
                             const Tensor& out);
void check_unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan,
                              const Tensor& gate, const Tensor& dy, const Tensor& dgate);
// gather_rows / scatter_rows: 2-D src and dst of equal widths, 1-D int32 index with one entry per
// dst row (gather) or src row (scatter). The index contents are not read here.
void check_gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst);
void check_scatter_rows(const Tensor& src, const Tensor& index, const Tensor& dst);

}  // namespace ampipe::kernels::detail
