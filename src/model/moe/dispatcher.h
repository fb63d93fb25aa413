// MoE token dispatcher: moves each (token, choice) pair to its expert and the results back.
//
// Two halves, separately callable (pipelined schedules interleave them with other work):
//   dispatch: permute tokens into expert-major order, send each expert's rows to the rank of the
//             expert group that holds it (all_to_all_v), and group the received rows by local
//             expert -> expert input [P_local, d];
//   combine:  the mirror image: expert outputs go back to the ranks their tokens came from and are
//             summed per token weighted by the gates.
// Each half has its backward mirror. The rows travel in the wire dtype: bf16 under --bf16 (half the
// bytes of float32, in all four all-to-alls), rounded in begin_* and widened back to float32 in
// finish_* (also without an expert group, so the function does not depend on the group's size).
// Without an expert group (or a group of one) the all-to-all
// and the regrouping are skipped. Every rank of the group must call the halves in the same order
// (they are collectives).
#pragma once

#include <vector>

#include "kernels/permute.h"
#include "model/config.h"
#include "model/parallel.h"

namespace ampipe {

struct DispatchContext {
  kernels::DispatchPlan plan;           // local (token, choice) -> row of the expert-major buffer
  Tensor in_flight;                     // rows between a stage's compute part and its exchange
                                        // (the wire dtype: bf16 under --bf16, else float32)
  Tensor gate;                          // [T, k]
  std::vector<int64_t> send_rows;       // [EP] rows sent to each rank (expert-major buffer order)
  std::vector<int64_t> recv_rows;       // [EP] rows received from each rank
  std::vector<int64_t> local_counts;    // [E_local] rows per local expert after regrouping
  Tensor regroup;                       // [P_local] int32: received row of each expert-input row
  Tensor expert_output_permuted;  // [P, d] combine's result before unpermute (for its backward; bf16 under
                                  // --bf16)
};

class Dispatcher {
 public:
  Dispatcher(const ModelConfig& config, const ModelParallel& parallel);

  // Capacity per expert for a routing group of `tokens` tokens (-1: dropless); docs/MODEL.md.
  int64_t capacity(int64_t tokens) const;
  // The dtype the rows cross the all-to-alls in: BF16 under --bf16, else F32.
  DType wire_dtype() const { return wire_; }

  // m [T, d], expert_index [T, k] (global expert ids), gate [T, k] -> expert input [P_local, d],
  // rows of local expert e being [offset_e, offset_e + local_expert_counts(ctx)[e]).
  Tensor dispatch(DispatchContext& ctx, const Tensor& m, const Tensor& expert_index, const Tensor& gate) const;
  const std::vector<int64_t>& local_expert_counts(const DispatchContext& ctx) const { return ctx.local_counts; }
  // expert_output [P_local, d] -> per-token weighted sum [T, d].
  Tensor combine(DispatchContext& ctx, const Tensor& expert_output) const;

  // Backward of combine: dout [T, d] -> d expert_output [P_local, d]; writes dgate [T, k].
  Tensor combine_backward(DispatchContext& ctx, const Tensor& dout, Tensor dgate) const;
  // Backward of dispatch: d expert_input [P_local, d] -> dm [T, d].
  Tensor dispatch_backward(DispatchContext& ctx, const Tensor& dexpert_input) const;

  // The same four operations in stages, for schedules that run communication on its own stream:
  // each is local compute (begin_*), the all-to-all (exchange_*, communication only: the only
  // part that touches the communicator) and local compute again (finish_*). Calling the three in
  // order equals the one-call form above.
  void begin_dispatch(DispatchContext& ctx, const Tensor& m, const Tensor& expert_index, const Tensor& gate) const;
  void exchange_dispatch(DispatchContext& ctx) const;
  Tensor finish_dispatch(DispatchContext& ctx) const;
  void begin_combine(DispatchContext& ctx, const Tensor& expert_output) const;
  void exchange_combine(DispatchContext& ctx) const;
  Tensor finish_combine(DispatchContext& ctx) const;
  void begin_combine_backward(DispatchContext& ctx, const Tensor& dout, Tensor dgate) const;
  void exchange_combine_backward(DispatchContext& ctx) const;
  Tensor finish_combine_backward(DispatchContext& ctx) const;
  void begin_dispatch_backward(DispatchContext& ctx, const Tensor& dexpert_input) const;
  void exchange_dispatch_backward(DispatchContext& ctx) const;
  Tensor finish_dispatch_backward(DispatchContext& ctx) const;

 private:
  int64_t experts_, local_experts_, top_k_;
  double capacity_factor_;
  DType wire_;           // the rows' dtype between begin_* and finish_*
  Communicator* group_;  // nullptr: all experts local

  bool distributed() const { return group_ != nullptr && group_->size() > 1; }
  // Sends rows [sum send, d] rank-major and returns the received rows (or the reverse direction).
  Tensor exchange(const Tensor& rows, const std::vector<int64_t>& send_rows,
                  const std::vector<int64_t>& recv_rows) const;
};

}  // namespace ampipe
