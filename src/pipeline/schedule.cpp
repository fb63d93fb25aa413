#include "pipeline/schedule.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "model/config.h"

namespace ampipe {

const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::Sequential: return "sequential";
    case ScheduleKind::MoePipe: return "moe-pipe";
    case ScheduleKind::AmPipe: return "ampipe";
  }
  return "?";
}

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "sequential") return ScheduleKind::Sequential;
  if (name == "moe-pipe" || name == "moe_pipe") return ScheduleKind::MoePipe;
  if (name == "ampipe") return ScheduleKind::AmPipe;
  AMPIPE_CHECK(false) << "--schedule '" << name << "' is not one of: sequential, moe-pipe, ampipe";
  return ScheduleKind::Sequential;
}

const char* chunk_policy_name(ChunkPolicy policy) { return policy == ChunkPolicy::Equal ? "equal" : "balanced"; }

ChunkPolicy parse_chunk_policy(const std::string& name) {
  if (name == "equal") return ChunkPolicy::Equal;
  if (name == "balanced") return ChunkPolicy::Balanced;
  AMPIPE_CHECK(false) << "--chunk-policy '" << name << "' is not one of: equal, balanced";
  return ChunkPolicy::Equal;
}

void BlockSchedule::validate() const {
  AMPIPE_CHECK(pipe_degree >= 1) << "--pipe-degree must be at least 1, got " << pipe_degree;
  AMPIPE_CHECK(moe_pipe_degree >= 0) << "--moe-pipe-degree must be 0 (as the attention side) or more, got "
                                     << moe_pipe_degree;
  AMPIPE_CHECK(std::isfinite(balance_weight) && balance_weight >= 0)
      << "the balanced-chunk weight must be finite and >= 0, got " << balance_weight;
  if (chunk_boundaries.empty()) return;
  AMPIPE_CHECK(chunk_boundaries.size() >= 2 && chunk_boundaries.front() == 0)
      << "--chunk-boundaries must start at 0 and hold at least two positions";
  for (size_t i = 1; i < chunk_boundaries.size(); ++i)
    AMPIPE_CHECK(chunk_boundaries[i] > chunk_boundaries[i - 1])
        << "--chunk-boundaries must increase strictly: " << chunk_boundaries[i - 1] << " then " << chunk_boundaries[i];
}

std::vector<int64_t> equal_boundaries(int64_t seq_len, int64_t pipe_degree) {
  AMPIPE_CHECK(seq_len >= 1 && pipe_degree >= 1) << "equal chunks need N >= 1 and P >= 1, got N=" << seq_len
                                                 << " P=" << pipe_degree;
  const int64_t P = std::min(pipe_degree, seq_len);
  std::vector<int64_t> b(P + 1, 0);
  for (int64_t c = 0; c < P; ++c) b[c + 1] = b[c] + seq_len / P + (c < seq_len % P ? 1 : 0);
  return b;
}

std::vector<int64_t> balanced_boundaries(int64_t seq_len, int64_t pipe_degree, double weight) {
  AMPIPE_CHECK(seq_len >= 1 && pipe_degree >= 1) << "balanced chunks need N >= 1 and P >= 1, got N=" << seq_len
                                                 << " P=" << pipe_degree;
  AMPIPE_CHECK(std::isfinite(weight) && weight >= 0) << "balanced chunks need a weight >= 0, got " << weight;
  const int64_t P = std::min(pipe_degree, seq_len);
  const double total = double(seq_len) * seq_len + weight * seq_len;
  std::vector<int64_t> b(P + 1, 0);
  b[P] = seq_len;
  for (int64_t c = 1; c < P; ++c) {
    // x^2 + w x = total * c / P
    const double target = total * double(c) / double(P);
    const double x = (-weight + std::sqrt(weight * weight + 4 * target)) / 2;
    // at least one position per chunk on either side
    b[c] = std::clamp<int64_t>(std::llround(x), b[c - 1] + 1, seq_len - (P - c));
  }
  return b;
}

double balance_weight(const ModelConfig& config, bool moe_in_chunk) {
  // causal attention: ~(e^2 - b^2) / 2 key pairs per chunk at 4d FLOPs each -> 2d per unit of b^2;
  // per token: projection 2d^2, and with the MoE side: router 2dE, experts 2m k d f (m GEMMs per
  // expert: 2 for GELU, 3 for SwiGLU). Grouped-query attention changes neither: the attention core
  // counts query heads, and the narrower K and V projections run before the chunks.
  const double d = double(config.hidden_size);
  const double gemms_per_expert = config.swiglu ? 3.0 : 2.0;
  double per_token = 2 * d * d;
  if (moe_in_chunk)
    per_token += 2 * d * double(config.num_experts) +
                 2 * gemms_per_expert * double(config.top_k) * d * double(config.ffn_hidden_size);
  return per_token / (2 * d);
}

std::vector<int64_t> BlockSchedule::boundaries(int64_t seq_len) const {
  validate();
  if (!chunk_boundaries.empty()) {
    AMPIPE_CHECK(chunk_boundaries.back() == seq_len)
        << "--chunk-boundaries must end at the sequence length " << seq_len << ", got " << chunk_boundaries.back();
    return chunk_boundaries;
  }
  if (kind != ScheduleKind::AmPipe) return {0, seq_len};
  if (chunk_policy == ChunkPolicy::Balanced) return balanced_boundaries(seq_len, pipe_degree, balance_weight);
  return equal_boundaries(seq_len, pipe_degree);
}

ChunkPlan BlockSchedule::plan(int64_t seq_len) const {
  validate();
  ChunkPlan p;
  switch (kind) {
    case ScheduleKind::Sequential:
      p.attention = p.moe = {0, seq_len};
      break;
    case ScheduleKind::MoePipe:
      p.attention = {0, seq_len};
      p.moe = equal_boundaries(seq_len, pipe_degree);
      break;
    case ScheduleKind::AmPipe:
      p.attention = boundaries(seq_len);
      p.moe = moe_pipe_degree > 0 ? equal_boundaries(seq_len, moe_pipe_degree) : p.attention;
      break;
  }
  p.validate();
  return p;
}

std::string BlockSchedule::describe() const {
  std::ostringstream s;
  s << schedule_name(kind);
  if (kind == ScheduleKind::Sequential) return s.str();
  if (!chunk_boundaries.empty()) {
    s << " boundaries=";
    for (size_t i = 0; i < chunk_boundaries.size(); ++i) s << (i ? "," : "") << chunk_boundaries[i];
  } else {
    s << " P=" << pipe_degree;
    if (kind == ScheduleKind::AmPipe && chunk_policy == ChunkPolicy::Balanced) s << " balanced";
  }
  if (kind == ScheduleKind::AmPipe && moe_pipe_degree > 0) s << " moe-P=" << moe_pipe_degree;
  return s.str();
}

std::vector<int64_t> parse_chunk_boundaries(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream s(text);
  std::string item;
  // A trailing comma would otherwise end the list silently; getline never yields its empty item.
  AMPIPE_CHECK(text.empty() || text.back() != ',')
      << "--chunk-boundaries '" << text << "' ends with a comma: an empty position";
  while (std::getline(s, item, ',')) {
    AMPIPE_CHECK(!item.empty() && !std::isspace(static_cast<unsigned char>(item[0])))
        << "--chunk-boundaries '" << text << "': '" << item << "' is not an integer position (no spaces, no empty items)";
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      AMPIPE_CHECK(used == item.size()) << "trailing characters";
    } catch (const std::exception&) {
      AMPIPE_CHECK(false) << "--chunk-boundaries '" << text << "': '" << item << "' is not an integer position";
    }
  }
  return out;
}

}  // namespace ampipe
