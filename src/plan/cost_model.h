// Per-stage cost model: the seconds one rank spends on one stage task of a block's schedule
// (pipeline/task_list.h), from the FLOPs and bytes of the stage (model config, batch, chunk
// boundaries) priced by a HardwareProfile (plan/profile.h). Formulas: cost_model.cpp.
//
//   GEMMs                   gemm_flops / matrix_flops
//   causal attention core   chunk [b, e) of B sequences: 4d FLOPs per (query i, key j <= i) pair,
//                           B * 2d (e - b)(e + b + 1) forward at matrix_flops * attention_efficiency;
//                           backward 2.5x those FLOPs at attention_backward_efficiency
//   elementwise passes      bytes read + written, bytes_per_element per value, at memory_bandwidth;
//                           with a cache (cache_bytes > 0), the share h = min(1, cache_bytes /
//                           working set) of them at cache_bandwidth, where the working set is half the
//                           stage's bytes (about the distinct bytes: a stage's passes mostly write a
//                           tensor once and read it once more): fits -> all cache, twice the cache ->
//                           half (a smooth blend, so that the planner sees no cliff)
//   all-to-all              per call latency + the bytes that leave the rank / bandwidth, split into
//                           intra- and inter-node parts that run at once (the slower one counts)
//   TP collectives          ring collectives over the T (or ETP) ranks of a tensor-parallel group on
//                           the profile's tensor link: latency + 2 (n - 1) / n of the buffer's bytes
//                           for an all-reduce, (n - 1) / n for an all-gather or reduce-scatter
//   every task              + task_overhead
// Routing is assumed balanced (dropless): every rank receives as many rows as it sends, k per token.
// Tensor parallelism (BlockShape::tensor_parallel T, sequence_parallel, expert_tensor_parallel ETP;
// Megatron-LM's semantics) divides, per rank: attention's QKV and output GEMMs, its core, rope and
// QKV bias by T (heads split); each expert's FFN GEMMs by ETP (width f / ETP; with sequence
// parallelism over the ETP group's gathered rows); the norms, residuals, the router and the MoE
// side's rows (so the all-to-all bytes) by T only with sequence parallelism: without it every rank of
// a tensor-parallel group holds, routes and sends the same rows. Its collectives are stages of their
// own (pipeline/task_list.h, TpAttnGather ..): without sequence parallelism an all-reduce of the
// chunk's [rows, d] (attention: after the output projection, and of the input gradient after the
// QKV backward; experts: of their output, and of their input gradient), with it an all-gather before
// and a reduce-scatter after (mirrored in backward). The all-to-all sees the expert-parallel peers
// ETP ranks apart (ranks_per_node / ETP of them per node).
// Stateless; bad shapes or profiles are refused with ampipe::Error naming the value.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.h"
#include "pipeline/task_list.h"
#include "plan/profile.h"

namespace ampipe {

// One block as one rank of an expert-parallel group sees it.
struct BlockShape {
  ModelConfig config;
  int64_t batch = 1;    // B sequences per block call
  int64_t seq_len = 0;  // N positions per sequence
  int64_t ranks = 1;    // expert-parallel group size R (num_experts % R == 0)
  // Ranks that sum the dense gradients (the world; a multiple of R); expert gradients are summed
  // over data_ranks / R of them; 0: R (one expert group). Prices GradReduce only.
  int64_t data_ranks = 0;
  // --use-distributed-optimizer: GradReduce is a reduce-scatter (half an all-reduce's bytes); the
  // other half, the parameters' all-gather, is a ParamGather task (--overlap-param-gather) or comes
  // after the step, outside the pass.
  bool sharded_optimizer = false;
  // --delay-wgrad-compute: ExpertsBwd prices the input gradients only (half its GEMM FLOPs and the
  // activation backward), ExpertsWgrad the weight gradients (the other half and the bias sums).
  // predict_pass and predict_step set it from their PassShape.
  bool delay_wgrad = false;
  // Share of the routed rows that leave the rank; < 0: (R-1)/R, uniform routing.
  double remote_fraction = -1;
  // Tensor parallelism (above): --tensor-model-parallel-size T (divides the heads and the query
  // groups), --sequence-parallel (counts only with T > 1), --expert-tensor-parallel-size ETP
  // (divides the FFN width; without sequence parallelism also T). 1, false, 1: none, priced exactly
  // as without these fields.
  int64_t tensor_parallel = 1;
  bool sequence_parallel = false;
  int64_t expert_tensor_parallel = 1;

  void validate() const;  // throws ampipe::Error naming the bad field
  bool sequence_split() const { return sequence_parallel && tensor_parallel > 1; }
  double effective_remote_fraction() const;
  int64_t effective_data_ranks() const { return data_ranks > 0 ? data_ranks : ranks; }
};

// What a stage does, before pricing (per rank).
struct StageWork {
  double gemm_flops = 0;
  double attention_forward_flops = 0;   // causal attention core, forward
  double attention_backward_flops = 0;  // causal attention core, backward
  double memory_bytes = 0;              // elementwise passes: bytes read + written
  double wire_bytes = 0;                // all-to-all: bytes this rank sends to other ranks
  int collective_calls = 0;             // all-to-all calls (each pays the link latency); 0 when R == 1
  bool bf16_gemms = false;              // --bf16: gemm_flops run at matrix_flops_bf16 where known
  double tensor_wire_bytes = 0;         // TP collective: bytes this rank sends on the tensor link
  int tensor_calls = 0;                 // TP collective calls (each pays the tensor link's latency)
  int64_t expert_stride = 1;            // the all-to-all's peers are this many ranks apart (ETP)
};

// The tensor-parallel sizes against the model (BlockShape::validate calls it): T divides the heads
// and the query groups, ETP the FFN width (and T, without sequence parallelism); sizes >= 1. Throws
// ampipe::Error naming the flag and the numbers.
void check_tensor_parallel_sizes(const ModelConfig& config, int64_t tensor_parallel, bool sequence_parallel,
                                 int64_t expert_tensor_parallel);
// The layout against the world a profile describes: each tensor-parallel group (T, and ETP) inside
// one node (ranks_per_node a multiple of it: the tensor link is a node's), and the world of T x
// data ranks a multiple of ETP x R (Megatron-Core's folding of the experts' ETP x EP x EDP into the
// attention's T x DP). Throws ampipe::Error naming the numbers.
void check_layout(const BlockShape& shape, const HardwareProfile& hw);
// Seconds of `calls` TP collectives sending `wire_bytes` per rank on hw.tensor_parallel_link() (plus
// host staging, as an all-to-all); 0 when calls == 0.
double tensor_collective_seconds(double wire_bytes, int calls, const HardwareProfile& hw);

// The work of `stage` on positions [begin, end) of each sequence (whole-sequence stages ignore
// begin/end and use [0, N)).
StageWork stage_work(Stage stage, int64_t begin, int64_t end, const BlockShape& shape,
                     int64_t bytes_per_element);

// Seconds of an all-to-all step of `calls` collective calls moving `remote_bytes` per rank off the
// rank: 0 when R == 1; else the max over the intra-node part ((min(R, rpn) - 1) / (R - 1) of the
// bytes) and the inter-node part ((R - min(R, rpn)) / (R - 1)), each calls * latency + bytes / bandwidth.
double all_to_all_seconds(double remote_bytes, int calls, int64_t ranks, const HardwareProfile& hw);

// Gradient elements of one block on one rank: dense (replicated over the data-parallel ranks) and
// expert (this rank's E / expert_ranks experts).
struct BlockGradients {
  double dense = 0, expert = 0;
};
BlockGradients block_gradients(const ModelConfig& config, int64_t expert_ranks);
// A GradReduce task: the dense gradients all-reduced over shape.data_ranks and the expert ones over
// data_ranks / ranks (a ring: 2 (n - 1) / n of the bytes leave each rank, on the all-to-all's
// links; (n - 1) / n for the reduce-scatter of shape.sharded_optimizer), each then scaled; 0 work
// (the task overhead) on one rank.
double grad_reduce_seconds(const BlockShape& shape, const HardwareProfile& hw);
// A ParamGather task (--overlap-param-gather): the block's parameters all-gathered over the same
// groups (a ring: (n - 1) / n of the bytes leave each rank), then unpacked.
double param_gather_seconds(const BlockShape& shape, const HardwareProfile& hw);

// Seconds of `memory_bytes` of elementwise passes (the cache blend above).
double elementwise_seconds(double memory_bytes, const HardwareProfile& hw);

// Seconds of a priced StageWork, task_overhead included.
double work_seconds(const StageWork& work, int64_t ranks, const HardwareProfile& hw);

// The seconds one rank spends on `stage` over positions [begin, end).
double stage_seconds(Stage stage, int64_t begin, int64_t end, const BlockShape& shape,
                     const HardwareProfile& hw);
// The same for a task of a list built from `plan` (its chunk indexes plan.attention or plan.moe).
double stage_seconds(const StageTask& task, const ChunkPlan& plan, const BlockShape& shape,
                     const HardwareProfile& hw);
// stage_seconds of a task of a list cut by its plan, as a function (the merge of paired
// micro-batches, StreamedBlock::set_task_seconds, prices its tasks with it).
std::function<double(const StageTask&, const ChunkPlan&)> stage_pricer(const BlockShape& shape,
                                                                       const HardwareProfile& hw);
// stage_seconds of every task, in list order (the simulator's input).
std::vector<double> task_seconds(const std::vector<StageTask>& tasks, const ChunkPlan& plan,
                                 const BlockShape& shape, const HardwareProfile& hw);

}  // namespace ampipe
