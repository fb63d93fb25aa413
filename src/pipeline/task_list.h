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

enum class Stage {
  // forward
  AttnBegin,      // LN1 + QKV of the whole sequence (compute)
  AttnChunk,      // attention chunk: core + projection + residual -> token buffer (compute)
  Route,          // MoE chunk: LN2, router, permute (compute)
  Dispatch,       // MoE chunk: all-to-all to the experts (comm)
  Experts,        // MoE chunk: expert FFNs (compute)
  Combine,        // MoE chunk: all-to-all back (comm)
  Finish,         // MoE chunk: unpermute * gate + residual -> block output (compute)
  // backward
  FinishBwd,      // MoE chunk: gradient through unpermute and gate (compute)
  CombineBwd,     // MoE chunk: all-to-all of that gradient to the experts (comm)
  ExpertsBwd,     // MoE chunk (compute)
  DispatchBwd,    // MoE chunk: all-to-all back (comm)
  RouteBwd,       // MoE chunk: permute, router, LN2 backward -> token-buffer gradient (compute)
  AttnChunkBwd,   // attention chunk: residual, projection, core backward; dK, dV accumulate (compute)
  AttnFinishBwd,  // QKV + LN1 backward of the whole sequence (compute)
};
const char* stage_name(Stage stage);
StreamRole stage_stream(Stage stage);
bool is_attention_stage(Stage stage);  // chunk indexes the attention side (else the MoE side)

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
  StreamRole stream() const { return stage_stream(stage); }
};

// The forward and backward task lists of a block cut by `plan`, the compute stream taking stages in
// `order`:
//   stage-major   every attention chunk (routing each MoE chunk as soon as its positions are
//                 ready), then every MoE chunk's experts, then every chunk's finish;
//   interleaved   after routing MoE chunk m, the experts of m-1 and the finish of m-2.
// Backward mirrors it, taking the MoE chunks last first (the forward's last chunk returns first):
// finish-bwd, experts-bwd, route-bwd of the MoE chunks (each attention chunk's backward as soon as
// its positions' gradients are complete), then one QKV + LN1 backward.
std::vector<StageTask> forward_tasks(const ChunkPlan& plan, StageOrder order);
std::vector<StageTask> backward_tasks(const ChunkPlan& plan, StageOrder order);

}  // namespace ampipe
