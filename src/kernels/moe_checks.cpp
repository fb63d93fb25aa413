// Argument checks shared by the CPU and CUDA routing and permutation kernels (kernels/moe_checks.h).
#include "kernels/moe_checks.h"

#include <string>

namespace ampipe::kernels::detail {
namespace {

void check_choice_tensor(const Tensor& t, DType dtype, int64_t tokens, int64_t k, const char* op,
                         const char* name) {
  AMPIPE_CHECK(t.dtype() == dtype && t.ndim() == 2 && t.dim(0) == tokens && t.dim(1) == k)
      << op << ": " << name << " must be " << dtype_name(dtype) << " [" << tokens << ", " << k << "], got "
      << dtype_name(t.dtype()) << " " << shape_string(t.shape());
}

void check_plan(const DispatchPlan& plan, const char* op) {
  AMPIPE_CHECK(plan.token_slot.defined() && plan.slot_token.defined() && plan.token_slot.ndim() == 2)
      << op << ": the dispatch plan is empty (build it with make_dispatch_plan)";
}

void check_rows(const Tensor& t, int64_t rows, int64_t width, const char* op, const char* name) {
  AMPIPE_CHECK(t.ndim() == 2 && t.dim(0) == rows && (width < 0 || t.dim(1) == width))
      << op << ": " << name << " " << shape_string(t.shape()) << " must be [" << rows << ", "
      << (width < 0 ? std::string("d") : std::to_string(width)) << "]";
}

void check_gate(const Tensor& gate, const DispatchPlan& plan, const char* op, const char* name) {
  AMPIPE_CHECK(gate.shape() == plan.token_slot.shape())
      << op << ": " << name << " " << shape_string(gate.shape()) << " must be "
      << shape_string(plan.token_slot.shape()) << " like the plan's [tokens, k]";
}

void check_row_move(const Tensor& src, const Tensor& index, const Tensor& dst, const char* op) {
  AMPIPE_CHECK(src.ndim() == 2 && dst.ndim() == 2 && src.dim(1) == dst.dim(1))
      << op << ": src " << shape_string(src.shape()) << " and dst " << shape_string(dst.shape())
      << " must be 2-D with equal widths";
  AMPIPE_CHECK(src.dtype() == dst.dtype() && (src.dtype() == DType::F32 || src.dtype() == DType::BF16))
      << op << ": src and dst must both be float32 or both bfloat16, got " << dtype_name(src.dtype())
      << " and " << dtype_name(dst.dtype());
  AMPIPE_CHECK(index.dtype() == DType::I32 && index.ndim() == 1)
      << op << ": index must be 1-D int32, got " << dtype_name(index.dtype()) << " "
      << shape_string(index.shape());
}

}  // namespace

void check_router_topk(const Tensor& probs, int k, const Tensor& expert_index, const Tensor& gate) {
  AMPIPE_CHECK(probs.ndim() == 2) << "router_topk: probs must be 2-D [tokens, experts], got "
                                  << shape_string(probs.shape());
  const int64_t tokens = probs.dim(0);
  const int64_t experts = probs.dim(1);
  AMPIPE_CHECK(k >= 1 && k <= experts)
      << "router_topk: top-k " << k << " must be in [1, experts = " << experts << "]";
  check_choice_tensor(expert_index, DType::I32, tokens, k, "router_topk", "expert_index");
  check_choice_tensor(gate, DType::F32, tokens, k, "router_topk", "gate");
}

void check_router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate,
                                const Tensor& dgate, const Tensor& dprobs) {
  AMPIPE_CHECK(probs.ndim() == 2) << "router_topk_backward: probs must be 2-D [tokens, experts], got "
                                  << shape_string(probs.shape());
  const int64_t tokens = probs.dim(0);
  const int64_t experts = probs.dim(1);
  AMPIPE_CHECK(expert_index.ndim() == 2) << "router_topk_backward: expert_index must be 2-D [tokens, k], got "
                                         << shape_string(expert_index.shape());
  const int64_t k = expert_index.dim(1);
  AMPIPE_CHECK(k >= 1 && k <= experts)
      << "router_topk_backward: top-k " << k << " must be in [1, experts = " << experts << "]";
  check_choice_tensor(expert_index, DType::I32, tokens, k, "router_topk_backward", "expert_index");
  check_choice_tensor(gate, DType::F32, tokens, k, "router_topk_backward", "gate");
  check_choice_tensor(dgate, DType::F32, tokens, k, "router_topk_backward", "dgate");
  AMPIPE_CHECK(dprobs.shape() == probs.shape())
      << "router_topk_backward: dprobs " << shape_string(dprobs.shape()) << " must match probs "
      << shape_string(probs.shape());
}

void check_expert_in_range(int64_t expert, int64_t token, int64_t choice, int64_t experts, const char* op) {
  AMPIPE_CHECK(expert >= 0 && expert < experts)
      << op << ": expert index " << expert << " of token " << token << " choice " << choice
      << " is outside [0, " << experts << ")";
}

void check_dispatch_plan_args(const Tensor& expert_index, int num_experts) {
  AMPIPE_CHECK(num_experts >= 1) << "make_dispatch_plan: num_experts must be at least 1, got " << num_experts;
  AMPIPE_CHECK(expert_index.dtype() == DType::I32 && expert_index.ndim() == 2)
      << "make_dispatch_plan: expert_index must be int32 [tokens, k], got "
      << dtype_name(expert_index.dtype()) << " " << shape_string(expert_index.shape());
}

void check_permute_forward(const Tensor& x, const DispatchPlan& plan, const Tensor& out) {
  check_plan(plan, "permute_forward");
  check_rows(x, plan.token_slot.dim(0), -1, "permute_forward", "x");
  check_rows(out, plan.slot_token.dim(0), x.dim(1), "permute_forward", "out");
}

void check_permute_backward(const Tensor& dout, const DispatchPlan& plan, const Tensor& dx) {
  check_plan(plan, "permute_backward");
  check_rows(dout, plan.slot_token.dim(0), -1, "permute_backward", "dout");
  check_rows(dx, plan.token_slot.dim(0), dout.dim(1), "permute_backward", "dx");
}

void check_unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate,
                             const Tensor& out) {
  check_plan(plan, "unpermute_forward");
  check_rows(y, plan.slot_token.dim(0), -1, "unpermute_forward", "y");
  check_rows(out, plan.token_slot.dim(0), y.dim(1), "unpermute_forward", "out");
  check_gate(gate, plan, "unpermute_forward", "gate");
}

void check_unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan,
                              const Tensor& gate, const Tensor& dy, const Tensor& dgate) {
  check_plan(plan, "unpermute_backward");
  const int64_t tokens = plan.token_slot.dim(0);
  const int64_t slots = plan.slot_token.dim(0);
  check_rows(dout, tokens, -1, "unpermute_backward", "dout");
  const int64_t width = dout.dim(1);
  check_rows(y, slots, width, "unpermute_backward", "y");
  check_rows(dy, slots, width, "unpermute_backward", "dy");
  check_gate(gate, plan, "unpermute_backward", "gate");
  check_gate(dgate, plan, "unpermute_backward", "dgate");
}

void check_gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) {
  check_row_move(src, index, dst, "gather_rows");
  AMPIPE_CHECK(dst.dim(0) == index.numel())
      << "gather_rows: dst has " << dst.dim(0) << " rows for " << index.numel() << " indices";
}

void check_scatter_rows(const Tensor& src, const Tensor& index, const Tensor& dst) {
  check_row_move(src, index, dst, "scatter_rows");
  AMPIPE_CHECK(src.dim(0) == index.numel())
      << "scatter_rows: src has " << src.dim(0) << " rows for " << index.numel() << " indices";
}

}  // namespace ampipe::kernels::detail
