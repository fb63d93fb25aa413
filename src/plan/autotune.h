// The autotuner behind `--pipe-degree auto`: prices every candidate schedule of a block with the
// cost model and the simulator (plan/cost_model.h, plan/simulator.h) and picks the fastest, never
// a pipelined one that is not predicted clearly faster than `sequential`.
//
// Candidates, for every pipe degree P of the options with N / P >= min_chunk_positions and every
// schedule of the options (sequential is always a candidate):
//   sequential;
//   moe-pipe P, in each stage order;
//   ampipe P x attention side {equal, balanced (time_balance_weight)} x MoE side {the same chunks,
//   P/2, P, 2P equal chunks behind the token buffer (moe_pipe_degree)}, in each stage order.
// A MoE side of one chunk, or of chunks shorter than min_chunk_positions, is left out, and so is a
// duplicate (equal attention chunks with P MoE chunks are "the same chunks").
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

  void validate() const;  // throws ampipe::Error naming the bad option
};

struct PlanCandidate {
  BlockSchedule schedule;
  StageOrder order = StageOrder::StageMajor;
  BlockPrediction prediction;
  // schedule.describe() plus the stage order ("ampipe P=4 balanced moe-P=8 interleaved").
  std::string describe() const;
};

// Every candidate with its prediction; sequential first, then moe-pipe, then ampipe, by P.
std::vector<PlanCandidate> evaluate_candidates(const BlockShape& shape, const HardwareProfile& hw,
                                               const AutotuneOptions& options = {});

// The fastest candidate by predicted total (the earlier on ties); a pipelined one only when it
// beats sequential's total by more than min_gain, else sequential. `candidates` must hold a
// sequential one.
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
