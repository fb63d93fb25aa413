#include "pipeline/schedule.h"

#include <sstream>

#include "core/error.h"

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

void BlockSchedule::validate() const {
  AMPIPE_CHECK(pipe_degree >= 1) << "--pipe-degree must be at least 1, got " << pipe_degree;
  if (chunk_boundaries.empty()) return;
  AMPIPE_CHECK(chunk_boundaries.size() >= 2 && chunk_boundaries.front() == 0)
      << "--chunk-boundaries must start at 0 and hold at least two positions";
  for (size_t i = 1; i < chunk_boundaries.size(); ++i)
    AMPIPE_CHECK(chunk_boundaries[i] > chunk_boundaries[i - 1])
        << "--chunk-boundaries must increase strictly: " << chunk_boundaries[i - 1] << " then " << chunk_boundaries[i];
}

std::vector<int64_t> BlockSchedule::boundaries(int64_t seq_len) const {
  validate();
  if (!chunk_boundaries.empty()) {
    AMPIPE_CHECK(chunk_boundaries.back() == seq_len)
        << "--chunk-boundaries must end at the sequence length " << seq_len << ", got " << chunk_boundaries.back();
    return chunk_boundaries;
  }
  const int64_t P = kind == ScheduleKind::Sequential ? 1 : std::min(pipe_degree, seq_len);
  std::vector<int64_t> b(P + 1, 0);
  for (int64_t c = 0; c < P; ++c) b[c + 1] = b[c] + seq_len / P + (c < seq_len % P ? 1 : 0);
  return b;
}

std::vector<int64_t> parse_chunk_boundaries(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream s(text);
  std::string item;
  while (std::getline(s, item, ',')) {
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
