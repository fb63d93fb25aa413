// A block schedule as a list of stage tasks on two streams with event edges
// (docs/ARCHITECTURE.md, "pipeline/"). StreamedBlock executes this list; plan/'s simulator runs the
// same list against predicted stage times, so what is predicted is what runs.
//
// A block is cut on two sides, each by chunk boundaries in sequence positions (0 = b_0 < ... = N):
//   attention side  chunk a: queries [b_a, b_a+1) against keys [0, b_a+1), projection, residual;
//   MoE side        chunk m: LN2, router, permute, all-to-all, experts, all-to-all, unpermute.
// Between them sits a token buffer (the MoE layer's input h for the whole block): MoE chunk m can
// route once every attention chunk covering its positions has run. Equal sides are AMPipe's chunks;
// one attention chunk and P MoE chunks is the Tutel-style moe-pipe; one and one is sequential.
//
// Each task runs on one stream; a stream runs its tasks in list order; a task may also wait for
// earlier tasks of the other stream (`waits`). Every communicator call is a comm-stream task, so
// every rank issues the collectives in list order.
//
// A pass over L blocks is one list too (`layer` names the block of each task), in one of two scopes:
//   block  every block as above, one after the other: block l+1 starts once block l has drained
//          (forward: its last chunk's combine; backward: its whole-sequence QKV backward);
//   model  the chunks flow through the blocks as a wavefront. Forward: block l+1's attention chunk a
//          (LN1 + QKV of its own rows, then attention) runs as soon as block l has finished every
//          MoE chunk holding positions of a; its keys and values are those of chunks 0..a of block
//          l+1, already projected. Backward: the QKV backward runs per attention chunk, right after
//          that chunk's attention backward (the rows' dQ, dK, dV are complete once chunks a..A-1
//          have run), and block l-1's MoE chunk m starts once every attention chunk of block l
//          holding positions of m has.
// The compute stream still takes each block's stages in `order`; the model scope only slots the
// next block's work in where its inputs exist. With parameter gathering (--overlap-param-gather),
// the forward list holds one ParamGather task per block on the comm stream: block 0's first, block
// l+1's just before block l's first dispatch (so it runs under block l's attention), and block l's
// first compute task waits for block l's. With delayed weight gradients (--delay-wgrad-compute) each
// MoE chunk's ExpertsWgrad follows its DispatchBwd in the list; the chunk's RouteBwd (which releases
// the chunk's context) and the block's GradReduce come after it. With gradient reduction, the backward list
// holds one GradReduce task per block on the comm stream, right after that block's last compute task, which
// it waits for; it reduces that block's gradients (data-parallel), so the reduction overlaps the lower
// blocks' backward.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ampipe {

enum class StageOrder { StageMajor, Interleaved };
const char* stage_order_name(StageOrder order);
// "stage-major" (or "stage_major"), "interleaved"; anything else is refused naming the allowed.
StageOrder parse_stage_order(const std::string& name);

enum class StreamRole { Compute, Comm };

enum class PipelineScope { Block, Model };
const char* pipeline_scope_name(PipelineScope scope);
// "block", "model"; anything else is refused naming the allowed.
PipelineScope parse_pipeline_scope(const std::string& name);

enum class Stage {
  // forward
  AttnBegin,  // LN1 + QKV of the whole sequence (compute)
  AttnChunk,  // attention chunk: core + projection + residual -> token buffer (compute)
  Route,      // MoE chunk: LN2, router, permute (compute)
  Dispatch,   // MoE chunk: all-to-all to the experts (comm)
  Experts,    // MoE chunk: expert FFNs (compute)
  Combine,    // MoE chunk: all-to-all back (comm)
  Finish,     // MoE chunk: unpermute * gate + residual -> block output (compute)
  // backward
  FinishBwd,      // MoE chunk: gradient through unpermute and gate (compute)
  CombineBwd,     // MoE chunk: all-to-all of that gradient to the experts (comm)
  ExpertsBwd,     // MoE chunk (compute)
  DispatchBwd,    // MoE chunk: all-to-all back (comm)
  RouteBwd,       // MoE chunk: permute, router, LN2 backward -> token-buffer gradient (compute)
  AttnChunkBwd,   // attention chunk: residual, projection, core backward; dK, dV accumulate (compute)
  AttnFinishBwd,  // QKV + LN1 backward of the whole sequence (compute)
  // model scope: the attention side's whole-sequence stages, per attention chunk
  QkvChunk,     // LN1 + QKV (+ rope) of the chunk's rows (compute, forward)
  QkvChunkBwd,  // their backward; adds the chunk's rows of the block input gradient (compute)
  // gradient reduction overlapped with the backward
  GradReduce,  // all-reduce of one block's gradients over the data-parallel groups (comm)
  // the distributed optimizer's parameter all-gather overlapped with the forward
  ParamGather,  // all-gather of one block's updated parameters (comm)
  // --delay-wgrad-compute: the experts' weight gradients of a MoE chunk, split from ExpertsBwd
  ExpertsWgrad,  // MoE chunk: dW (and db) of every expert GEMM (compute)
  // Tensor parallelism (PassShape::tensor_parallel > 1): the collectives of the tensor-parallel
  // group, on the comm stream like the all-to-alls (pipeline/streamed_block.h runs them). Attention:
  TpAttnGather,     // --sequence-parallel: all-gather of the QKV's input rows (before AttnBegin,
                    // whole sequence, or QkvChunk c) (comm, forward)
  TpAttnReduce,     // attention chunk: all-reduce (reduce-scatter with --sequence-parallel) of the
                    // output projection's rows, before the chunk's rows are routed (comm, forward)
  TpAttnGatherBwd,  // --sequence-parallel: all-gather of an attention chunk's output gradient
                    // before its AttnChunkBwd (comm, backward)
  TpAttnReduceBwd,  // all-reduce (reduce-scatter) of the QKV backward's input gradient, after
                    // AttnFinishBwd (whole sequence) or QkvChunkBwd c (comm, backward)
  // Expert tensor parallelism (PassShape::expert_tensor_parallel > 1), around a MoE chunk's experts:
  TpExpertsGather,     // --sequence-parallel: all-gather of the received rows before Experts (comm)
  TpExpertsReduce,     // all-reduce (reduce-scatter) of the experts' output before Combine (comm)
  TpExpertsGatherBwd,  // --sequence-parallel: all-gather of the gradient before ExpertsBwd (comm)
  TpExpertsReduceBwd,  // all-reduce (reduce-scatter) of the input gradient before DispatchBwd (comm)
};
const char* stage_name(Stage stage);
StreamRole stage_stream(Stage stage);
bool is_attention_stage(Stage stage);  // chunk indexes the attention side (else the MoE side)
bool is_tensor_parallel_stage(Stage stage);  // TpAttnGather .. TpExpertsReduceBwd
// Whether a task of `stage` covers the whole sequence (chunk -1) in a list of `scope`: AttnBegin,
// AttnFinishBwd, GradReduce, ParamGather; TpAttnGather and TpAttnReduceBwd in block scope.
bool is_whole_sequence_stage(Stage stage, PipelineScope scope);

struct ChunkPlan {
  std::vector<int64_t> attention;  // boundaries of the attention side
  std::vector<int64_t> moe;        // boundaries of the MoE side (same N)
  // Checks both lists (start at 0, increase strictly, same end); names the bad value.
  void validate() const;
  bool operator==(const ChunkPlan&) const = default;
};

struct StageTask {
  Stage stage;
  int chunk = -1;          // attention or MoE chunk index; -1 for whole-sequence stages
  std::vector<int> waits;  // indices of earlier tasks (of the other stream) this one waits for
  int layer = 0;           // the block, in a list over several
  StreamRole stream() const { return stage_stream(stage); }
};

// How a pass over the blocks is laid out.
struct PassShape {
  int64_t num_layers = 1;
  PipelineScope scope = PipelineScope::Block;
  bool reduce_gradients = false;  // backward only: a GradReduce task per block
  bool gather_params = false;     // forward only: a ParamGather task per block
  // backward only (--delay-wgrad-compute): ExpertsBwd computes the input gradients only, and an
  // ExpertsWgrad task per MoE chunk, right after the chunk's DispatchBwd, the weight gradients, so
  // the all-to-all leaves before the weight-gradient GEMMs instead of after them.
  bool delay_wgrad = false;
  // Tensor parallelism (Megatron-LM's --tensor-model-parallel-size, --sequence-parallel,
  // --expert-tensor-parallel-size): with tensor_parallel > 1 the lists hold the attention's TP
  // collectives (TpAttnReduce per attention chunk, TpAttnReduceBwd after each QKV backward; with
  // sequence_parallel also TpAttnGather before each QKV and TpAttnGatherBwd before each attention
  // chunk's backward), with expert_tensor_parallel > 1 the experts' (TpExpertsReduce and
  // TpExpertsReduceBwd per MoE chunk; with sequence_parallel the two gathers). sequence_parallel
  // counts only with tensor_parallel > 1 (Megatron turns it off at T = 1). Forward, the routes of
  // the MoE chunks ready after attention chunk a follow attention chunk a+1, so a's TpAttnReduce
  // travels under a+1's attention. At 1 and 1 the lists are those without tensor parallelism.
  int64_t tensor_parallel = 1;
  bool sequence_parallel = false;
  int64_t expert_tensor_parallel = 1;

  void validate() const;  // at least one block, tensor-parallel sizes >= 1; names the bad value
};

// The forward and backward task lists of a block cut by `plan`, the compute stream taking stages in
// `order`:
//   stage-major   every attention chunk (routing each MoE chunk as soon as its positions are
//                 ready), then every MoE chunk's experts, then every chunk's finish;
//   interleaved   after routing MoE chunk m, the experts of m-1 and the finish of m-2.
// Backward mirrors it, taking the MoE chunks last first (the forward's last chunk returns first):
// finish-bwd, experts-bwd, route-bwd of the MoE chunks (each attention chunk's backward as soon as
// its positions' gradients are complete), then one QKV + LN1 backward.
// With a PassShape: the lists of a pass over its blocks (every block cut by the same plan), block
// L-1's backward first; layer-major in block scope, a wavefront in model scope (above).
std::vector<StageTask> forward_tasks(const ChunkPlan& plan, StageOrder order, const PassShape& pass = {});
std::vector<StageTask> backward_tasks(const ChunkPlan& plan, StageOrder order, const PassShape& pass = {});

// Checks a list against the dependency rule of the scope it was built for: every task's inputs
// (stated per stage in task_list.cpp) are produced by a task that runs before it on its own stream
// or that it waits for, directly or through other tasks; every forward or backward stage of every
// block and chunk appears once; waits point to earlier tasks of the other stream. Throws
// ampipe::Error naming the first task whose input is not ordered before it.
void check_task_list(const std::vector<StageTask>& tasks, const ChunkPlan& plan, const PassShape& pass,
                     bool backward);

}  // namespace ampipe
