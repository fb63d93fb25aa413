// Block schedules: how a transformer block is cut into chunks (shared/ARCHITECTURE.md,
// "One block under AMPipe").
//
//   sequential  the block as one piece (pipe degree ignored);
//   moe-pipe    attention whole; the MoE layer's tokens cut into P equal chunks (Tutel-style);
//   ampipe      the sequence cut into P chunks: chunk c's attention takes queries [b_c, b_{c+1})
//               against keys [0, b_{c+1}), and its MoE layer the same tokens.
// Chunk boundaries are positions 0 = b_0 < b_1 < ... < b_P = N; equal chunks unless given.
// Dropless routing gives the same result under every schedule; with a capacity factor each chunk
// is its own routing group (shared/MODEL.md, "Capacity").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ampipe {

enum class ScheduleKind { Sequential, MoePipe, AmPipe };

const char* schedule_name(ScheduleKind kind);
// "sequential", "moe-pipe" (or "moe_pipe"), "ampipe"; anything else is refused naming the allowed.
ScheduleKind parse_schedule(const std::string& name);

struct BlockSchedule {
  ScheduleKind kind = ScheduleKind::Sequential;
  int64_t pipe_degree = 1;
  std::vector<int64_t> chunk_boundaries;  // explicit b_0..b_P (then P = size - 1), or empty

  // Checks the pipe degree (>= 1) and explicit boundaries (strictly increasing from 0); names the
  // bad value.
  void validate() const;
  // The boundaries for a sequence of N positions (equal chunks, the remainder spread over the
  // first ones), checked against N; P is capped at N.
  std::vector<int64_t> boundaries(int64_t seq_len) const;
};

// "0,512,1536,2048" -> {0, 512, 1536, 2048}; refuses malformed lists.
std::vector<int64_t> parse_chunk_boundaries(const std::string& text);

}  // namespace ampipe
