// The autotuner behind `--pipe-degree auto`: prices every candidate schedule with the cost model
// and the simulator (plan/cost_model.h, plan/simulator.h) over a pass of num_layers blocks (the
// task lists the pipeline executes, pipeline/task_list.h) and picks the fastest, never a pipelined
// one that is not predicted clearly faster than `sequential`.
//
// Candidates, for every pipe degree P of the options with N / P >= min_chunk_positions and every
// schedule of the options (sequential is always a candidate):
//   sequential;
//   moe-pipe P, in each stage order;
//   ampipe P x attention side {equal, balanced (time_balance_weight)} x MoE side {the same chunks,
//   P/2, P, 2P equal chunks behind the token buffer (moe_pipe_degree)}, in each stage order.
// A MoE side of one chunk, or of chunks shorter than min_chunk_positions, is left out, and so is a
// duplicate (equal attention chunks with P MoE chunks are "the same chunks").
// Every pipelined candidate is priced in each scope of the options (block: the blocks one after the
// other; model: the chunks flow across the blocks as a wavefront). With one block the model scope
// differs only by computing QKV per chunk, so with num_layers == 1 only block scope is priced;
// sequential (one chunk) is priced in block scope only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/schedule.h"
#include "plan/simulator.h"

namespace ampipe {

struct AutotuneOptions {
  std::vector<int64_t> pipe_degrees = {2, 4, 8, 16};
  // Pipelined schedules to search (sequential is always a candidate: the baseline).
  std::vector<ScheduleKind> schedules = {ScheduleKind::MoePipe, ScheduleKind::AmPipe};
  std::vector<StageOrder> orders = {StageOrder::StageMajor, StageOrder::Interleaved};
  int64_t min_chunk_positions = 128;  // >= 1
  // A pipelined plan is chosen only if its predicted total is below (1 - min_gain) x sequential's.
  double min_gain = 0.03;
  // Candidates predicted within this fraction of the fastest count as tied; of those the planner
  // takes the one with the fewest chunks (the model's error grows with the chunk count).
  double near_tie = 0.02;
  bool balanced_chunks = true;    // also try the balanced attention side
  bool separate_moe_side = true;  // also try MoE sides of P/2, P, 2P chunks
  // The pass every candidate is priced over (PassShape): blocks (>= 1), the scopes to try (not
  // empty; only block scope when num_layers == 1), a GradReduce task per block in the backward,
  // and a ParamGather task per block in the forward (--overlap-param-gather).
  int64_t num_layers = 1;
  std::vector<PipelineScope> scopes = {PipelineScope::Block, PipelineScope::Model};
  bool reduce_gradients = false;
  bool gather_params = false;

  void validate() const;  // throws ampipe::Error naming the bad option
};

struct PlanCandidate {
  BlockSchedule schedule;
  StageOrder order = StageOrder::StageMajor;
  PipelineScope scope = PipelineScope::Block;
  PassPrediction prediction;  // of the whole pass (AutotuneOptions::num_layers blocks)
  // schedule.describe() plus the stage order, plus " model-scope" for model scope
  // ("ampipe P=4 balanced moe-P=8 interleaved model-scope").
  std::string describe() const;
};

// Every candidate with its prediction; sequential first, then moe-pipe, then ampipe, by P; the
// scopes of one schedule and order next to each other, in the order of options.scopes.
std::vector<PlanCandidate> evaluate_candidates(const BlockShape& shape, const HardwareProfile& hw,
                                               const AutotuneOptions& options = {});

// The fastest candidate by predicted total; of those within near_tie of it, the one with the fewest
// chunks, then block scope before model scope, then the faster (the earlier on exact ties). A
// pipelined one only when it beats sequential's total by more than min_gain, else sequential.
// `candidates` must hold a sequential one, and all must be predictions of the same pass.
PlanCandidate choose_plan(const std::vector<PlanCandidate>& candidates, double min_gain, double near_tie = 0.02);
PlanCandidate choose_plan(const BlockShape& shape, const HardwareProfile& hw,
                          const AutotuneOptions& options = {});

// The balanced policy's weight w (pipeline/schedule.h: chunk cost (e^2 - b^2) + w (e - b)) from the
// cost model: the per-position seconds of an attention chunk (forward + backward compute stages;
// with moe_in_chunk, also the MoE chunk's compute stages over the same positions) over its seconds
// per unit of e^2 - b^2. Balanced chunks then have equal predicted compute time (task overheads
// aside). >= 0.
double time_balance_weight(const BlockShape& shape, const HardwareProfile& hw, bool moe_in_chunk);

}  // namespace ampipe
