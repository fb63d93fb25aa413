// Block schedules: how a transformer block is cut into chunks (docs/ARCHITECTURE.md,
// "One block under AMPipe"; pipeline/task_list.h for the cut as stage tasks).
//
//   sequential  the block as one piece (pipe degree ignored);
//   moe-pipe    attention whole; the MoE layer's tokens cut into P equal chunks (Tutel-style);
//   ampipe      the sequence cut into P chunks: chunk c's attention takes queries [b_c, b_{c+1})
//               against keys [0, b_{c+1}), and its MoE layer the same tokens; or, with a MoE pipe
//               degree, the MoE side cut into its own equal chunks behind a token buffer.
// Chunk boundaries are positions 0 = b_0 < b_1 < ... < b_P = N: equal chunks, chunks of balanced
// cost, or an explicit list.
// Dropless routing gives the same result under every schedule; with a capacity factor each MoE
// chunk is its own routing group (docs/MODEL.md, "Capacity").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/task_list.h"

namespace ampipe {

struct ModelConfig;

enum class ScheduleKind { Sequential, MoePipe, AmPipe };

const char* schedule_name(ScheduleKind kind);
// "sequential", "moe-pipe" (or "moe_pipe"), "ampipe"; anything else is refused naming the allowed.
ScheduleKind parse_schedule(const std::string& name);

// How the attention side of `ampipe` is cut when no explicit boundaries are given.
//   equal     chunks of equal length;
//   balanced  chunks of equal cost, chunk c costing (b_{c+1}^2 - b_c^2) + w (b_{c+1} - b_c): causal
//             attention grows with the keys a chunk sees, the rest with its tokens.
enum class ChunkPolicy { Equal, Balanced };
const char* chunk_policy_name(ChunkPolicy policy);
ChunkPolicy parse_chunk_policy(const std::string& name);

struct BlockSchedule {
  ScheduleKind kind = ScheduleKind::Sequential;
  int64_t pipe_degree = 1;
  std::vector<int64_t> chunk_boundaries;  // explicit attention-side b_0..b_P (then P = size - 1), or empty
  ChunkPolicy chunk_policy = ChunkPolicy::Equal;
  double balance_weight = 0;              // w of the balanced policy (balance_weight() below)
  int64_t moe_pipe_degree = 0;            // ampipe: MoE side in this many equal chunks; 0: as attention

  // Checks the pipe degrees (>= 1; MoE >= 0), the weight (>= 0) and explicit boundaries (strictly
  // increasing from 0); names the bad value.
  void validate() const;
  // The attention-side boundaries for a sequence of N positions, checked against N; P is capped at N.
  std::vector<int64_t> boundaries(int64_t seq_len) const;
  // Both sides' boundaries for a sequence of N positions.
  ChunkPlan plan(int64_t seq_len) const;
  // "ampipe P=4 balanced moe=2" style description for logs and tables.
  std::string describe() const;
};

// Equal chunks of N positions, the remainder spread over the first ones; P capped at N.
std::vector<int64_t> equal_boundaries(int64_t seq_len, int64_t pipe_degree);
// P chunks of equal cost (b^2 + w b), rounded to whole positions, each at least one long.
std::vector<int64_t> balanced_boundaries(int64_t seq_len, int64_t pipe_degree, double weight);
// w from FLOP counts: per-token work of an attention chunk (projection, and when the MoE side is
// cut with it, routing and experts) over the per-key-pair work of causal attention.
double balance_weight(const ModelConfig& config, bool moe_in_chunk);

// "0,512,1536,2048" -> {0, 512, 1536, 2048}; refuses malformed lists.
std::vector<int64_t> parse_chunk_boundaries(const std::string& text);

}  // namespace ampipe
