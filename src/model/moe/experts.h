// The experts of one MoE layer held by this rank, the E_local = E / EP experts
// [offset, offset + E_local), offset = ep_rank * E_local. Two kinds of FFN (ModelConfig::swiglu):
//   GELU    FFN_e(u) = gelu_tanh(u @ W1[e]^T + b1[e]) @ W2[e]^T + b2[e]
//           moe.fc1.weight [E_local, f, d], moe.fc2.weight [E_local, d, f]
//   SwiGLU  FFN_e(u) = (silu(u @ W1[e]^T + b1[e]) * (u @ W3[e]^T + b3[e])) @ W2[e]^T + b2[e]
//           moe.w1.weight, moe.w3.weight [E_local, f, d], moe.w2.weight [E_local, d, f]
// Biases ([E_local, f] or [E_local, d], named .bias beside each weight) exist only with
// ModelConfig::add_bias_linear. Parameters are registered under `prefix` as expert tensors (see
// Parameter::is_expert); a checkpoint holds the gathered [E, ...] tensors. Input rows arrive grouped by
// expert (the dispatcher's output): rows of expert e are the counts[e] rows after those of experts 0..e-1. An
// expert with no rows costs nothing.
//
// Expert tensor parallelism (ETP = parallel.etp_size() > 1, Megatron-Core's
// --expert-tensor-parallel-size): rank r of parallel.expert_tensor_group holds columns
// [r f/ETP, (r+1) f/ETP) of every local expert's hidden layer: fc1 / w1 / w3 and their biases
// [E_local, f/ETP, ...] (column-parallel, SwiGLU's two input maps alike), fc2 / w2 [E_local, d,
// f/ETP] (row-parallel); the output bias whole, added once after the reduction. Without sequence
// parallelism every rank of the group receives the same rows (it lies inside a tensor group); with
// it the MoE layer gathers the group's rows first (model/moe/expert_gather.h). forward = forward_local (this
// rank's partial output) + forward_reduce (all_reduce_sum over the group, then the output bias); backward =
// backward_local (the weight gradients of this rank's shards and the partial input gradient) +
// backward_reduce (its all_reduce_sum). expert_tensor_parallel_shards() states where each shard lies in the
// local experts' full-width tensors (model/tensor_parallel.h).
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/parallel.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"

namespace ampipe {

struct ExpertsContext {
  std::vector<int64_t> counts;  // rows per expert
  Tensor u;                     // [P, d] input (bf16 under --bf16: the GEMMs' operand)
  Tensor h;                     // [P, f] pre-activation (SwiGLU: of the gate, through silu); bf16 under --bf16
  Tensor h3;                    // [P, f] SwiGLU only: the up projection; bf16 under --bf16
  Tensor g;                     // [P, f] gelu(h), or silu(h) * h3 (bf16 under --bf16, as u);
                                // undefined under selective recompute (backward recomputes it)
};

// --delay-wgrad-compute: the weight gradients a backward left for later, one per expert GEMM, in
// the order backward() accumulates them, each with the operands it reads (which it keeps alive).
struct ExpertsWeightGrads {
  struct Item {
    int map = 0;  // 0: the input map (fc1 / w1), 1: SwiGLU's linear branch (w3), 2: the output map
    int64_t expert = 0;
    Tensor x, dy;
  };
  std::vector<Item> items;
};

class Experts {
 public:
  Experts(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
          const ModelParallel& parallel = {});

  // u [P, d] grouped by expert per counts (sum(counts) == P) -> y [P, d].
  Tensor forward(ExpertsContext& ctx, const Tensor& u, const std::vector<int64_t>& counts) const;
  // ETP > 1 in two steps around the group's collective (a pipelined executor runs the second on its
  // communication stream); at ETP = 1 forward_local is forward and the reduces return their input.
  Tensor forward_local(ExpertsContext& ctx, const Tensor& u, const std::vector<int64_t>& counts) const;
  Tensor forward_reduce(const ExpertsContext& ctx, Tensor partial) const;
  Tensor backward_local(ExpertsContext& ctx, const Tensor& dy, ExpertsWeightGrads* delayed = nullptr) const;
  Tensor backward_reduce(Tensor partial) const;
  // Adds each expert's output bias to its rows of y (grouped per counts); nothing without biases.
  // forward_reduce's second step, for a caller that reduces otherwise (model/moe/expert_gather.h).
  void add_output_bias(Tensor y, const std::vector<int64_t>& counts) const;
  int etp_size() const { return etp_size_; }
  // Rank `rank`'s shards of a `ranks`-way group (empty at 1), registration order; without an
  // argument, this rank's.
  std::vector<TensorParallelShard> expert_tensor_parallel_shards(int rank) const;
  std::vector<TensorParallelShard> expert_tensor_parallel_shards() const {
    return expert_tensor_parallel_shards(etp_rank_);
  }
  // dy [P, d] -> du [P, d]; accumulates the expert parameters' gradients, or, with `delayed`, leaves
  // them there for weight_backward (the input gradients do not read them).
  Tensor backward(ExpertsContext& ctx, const Tensor& dy, ExpertsWeightGrads* delayed = nullptr) const;
  // Accumulates the gradients a delayed backward left, in its order, and empties `delayed`: the bits
  // of the undelayed backward.
  void weight_backward(ExpertsWeightGrads& delayed) const;

  int64_t num_local_experts() const { return experts_; }

 private:
  // One stacked linear map of every local expert: weight [E_local, out, in], bias [E_local, out] or
  // nullptr.
  struct Stacked {
    Parameter* weight = nullptr;
    Parameter* bias = nullptr;
  };
  int64_t experts_, hidden_, ffn_;  // ffn_: this rank's width, f / ETP
  Communicator* etp_group_;         // null at ETP = 1
  int etp_size_;
  int etp_rank_;
  bool swiglu_;
  bool bf16_;       // --bf16: u and g are kept in bf16 for the GEMMs and their backward
  bool selective_;  // --recompute-granularity selective: g is not kept; backward recomputes it from h
  // g's rows of one expert from its float32 pre-activation rows (h, and h3 under SwiGLU): the
  // activation into g32, then under bf16 the rounding into g, the GEMM's operand (else g is g32).
  // Forward and the recomputing backward share it, so both give the same bits.
  void activation(const Tensor& h, const Tensor& h3, Tensor g32, Tensor g) const;
  Stacked in_;      // fc1, or w1: the branch through the activation
  Stacked linear_;  // SwiGLU only: w3, the linear branch
  Stacked out_;     // fc2, or w2

  // Expert e's slice of a stacked tensor (undefined stays undefined).
  static Tensor slice(const Parameter* p, bool grad, int64_t e);
  static void forward_map(const Stacked& m, int64_t e, const Tensor& x, Tensor y);
  // dx of one expert's map, and its weight gradients now or (delayed non-null) later.
  void backward_map(int map, int64_t e, const Tensor& x, const Tensor& dy, Tensor dx, bool accumulate_dx,
                    ExpertsWeightGrads* delayed) const;
  const Stacked& stacked(int map) const { return map == 0 ? in_ : map == 1 ? linear_ : out_; }
};

}  // namespace ampipe
