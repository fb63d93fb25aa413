// Fuzzes the schedule flags' parsers (pipeline/schedule.h): parse_chunk_boundaries (the
// --chunk-boundaries list), parse_schedule and parse_chunk_policy, on the same text; an accepted
// boundary list is then checked and used by BlockSchedule (validate, boundaries, plan, describe) and
// balanced_boundaries, as the trainer and planner do.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report (signed overflow
// included), a hang or unbounded memory; a plan whose chunks do not tile [0, N).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "pipeline/schedule.h"

using namespace ampipe;

namespace {

void check_tiling(const std::vector<int64_t>& b, int64_t n, const char* what) {
  if (b.size() < 2 || b.front() != 0 || b.back() != n)
    fuzz::finding(std::string(what) + " does not span [0, N)");
  for (size_t i = 1; i < b.size(); ++i)
    if (b[i] <= b[i - 1]) fuzz::finding(std::string(what) + " has an empty or reversed chunk");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = fuzz::text_of(data, size);
  fuzz::accepts([&] { parse_schedule(text); });
  fuzz::accepts([&] { parse_chunk_policy(text); });

  std::vector<int64_t> boundaries;
  if (!fuzz::accepts([&] { boundaries = parse_chunk_boundaries(text); }) || boundaries.empty()) return 0;
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.chunk_boundaries = boundaries;
  s.pipe_degree = static_cast<int64_t>(boundaries.size()) - 1;
  if (!fuzz::accepts([&] { s.validate(); })) return 0;
  const int64_t n = boundaries.back();
  (void)s.describe();
  fuzz::accepts([&] { check_tiling(s.boundaries(n), n, "BlockSchedule::boundaries"); });
  for (int64_t moe : {int64_t{0}, std::min<int64_t>(s.pipe_degree, 8)}) {
    s.moe_pipe_degree = moe;
    fuzz::accepts([&] {
      const ChunkPlan plan = s.plan(n);
      check_tiling(plan.attention, n, "ChunkPlan::attention");
      check_tiling(plan.moe, n, "ChunkPlan::moe");
    });
  }
  // The balanced policy on the same N and P (weights from balance_weight are finite and >= 0).
  fuzz::accepts([&] {
    check_tiling(balanced_boundaries(n, s.pipe_degree, 0.0), n, "balanced_boundaries(w=0)");
    check_tiling(balanced_boundaries(n, s.pipe_degree, 1e6), n, "balanced_boundaries(w=1e6)");
  });
  return 0;
}
