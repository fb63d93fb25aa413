#include "pipeline/task_list.h"

#include "core/error.h"

namespace ampipe {

const char* stage_order_name(StageOrder order) {
  return order == StageOrder::StageMajor ? "stage-major" : "interleaved";
}

StageOrder parse_stage_order(const std::string& name) {
  if (name == "stage-major" || name == "stage_major") return StageOrder::StageMajor;
  if (name == "interleaved") return StageOrder::Interleaved;
  AMPIPE_CHECK(false) << "--stage-order '" << name << "' is not one of: stage-major, interleaved";
  return StageOrder::StageMajor;
}

const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::AttnBegin: return "ln1+qkv";
    case Stage::AttnChunk: return "attention";
    case Stage::Route: return "route";
    case Stage::Dispatch: return "a2a dispatch";
    case Stage::Experts: return "experts";
    case Stage::Combine: return "a2a combine";
    case Stage::Finish: return "combine";
    case Stage::FinishBwd: return "combine bwd";
    case Stage::CombineBwd: return "a2a combine bwd";
    case Stage::ExpertsBwd: return "experts bwd";
    case Stage::DispatchBwd: return "a2a dispatch bwd";
    case Stage::RouteBwd: return "route bwd";
    case Stage::AttnChunkBwd: return "attention bwd";
    case Stage::AttnFinishBwd: return "qkv+ln1 bwd";
  }
  return "?";
}

StreamRole stage_stream(Stage stage) {
  switch (stage) {
    case Stage::Dispatch:
    case Stage::Combine:
    case Stage::CombineBwd:
    case Stage::DispatchBwd: return StreamRole::Comm;
    default: return StreamRole::Compute;
  }
}

bool is_attention_stage(Stage stage) {
  return stage == Stage::AttnBegin || stage == Stage::AttnChunk || stage == Stage::AttnChunkBwd ||
         stage == Stage::AttnFinishBwd;
}

namespace {

void check_boundaries(const std::vector<int64_t>& b, const char* side) {
  AMPIPE_CHECK(b.size() >= 2 && b.front() == 0)
      << side << " chunk boundaries must start at 0 and hold at least two positions";
  for (size_t i = 1; i < b.size(); ++i)
    AMPIPE_CHECK(b[i] > b[i - 1]) << side << " chunk boundaries must increase strictly: " << b[i - 1] << " then "
                                  << b[i];
}

// For each attention chunk a, the MoE chunks whose last position lies in it, in order: they can
// route once chunk a has run (MoE chunks are taken in position order).
std::vector<std::vector<int>> moe_ready_after(const ChunkPlan& p) {
  std::vector<std::vector<int>> ready(p.attention.size() - 1);
  size_t a = 0;
  for (size_t m = 0; m + 1 < p.moe.size(); ++m) {
    while (p.attention[a + 1] < p.moe[m + 1]) ++a;
    ready[a].push_back(static_cast<int>(m));
  }
  return ready;
}

// Backward takes the MoE chunks last first. For each MoE chunk m, the attention chunks whose first
// position lies in it, last first: their gradient is complete once m's route backward has run.
std::vector<std::vector<int>> attention_done_after(const ChunkPlan& p) {
  std::vector<std::vector<int>> done(p.moe.size() - 1);
  size_t m = p.moe.size() - 2;
  for (size_t a = p.attention.size() - 1; a-- > 0;) {
    while (p.moe[m] > p.attention[a]) --m;
    done[m].push_back(static_cast<int>(a));
  }
  return done;
}

struct Builder {
  std::vector<StageTask> tasks;
  int add(Stage stage, int chunk, std::vector<int> waits = {}) {
    tasks.push_back(StageTask{stage, chunk, std::move(waits)});
    return static_cast<int>(tasks.size()) - 1;
  }
};

}  // namespace

void ChunkPlan::validate() const {
  check_boundaries(attention, "attention-side");
  check_boundaries(moe, "MoE-side");
  AMPIPE_CHECK(attention.back() == moe.back())
      << "the attention side ends at " << attention.back() << " but the MoE side at " << moe.back();
}

std::vector<StageTask> forward_tasks(const ChunkPlan& plan, StageOrder order) {
  plan.validate();
  const int M = static_cast<int>(plan.moe.size()) - 1;
  const auto ready = moe_ready_after(plan);
  Builder b;
  std::vector<int> routed(M), dispatched(M), computed(M), combined(M);
  int next_experts = 0, next_finish = 0;
  auto experts = [&](int m) {
    computed[m] = b.add(Stage::Experts, m, {dispatched[m]});
    combined[m] = b.add(Stage::Combine, m, {computed[m]});
  };
  auto finish = [&](int m) { b.add(Stage::Finish, m, {combined[m]}); };
  b.add(Stage::AttnBegin, -1);
  for (size_t a = 0; a < ready.size(); ++a) {
    b.add(Stage::AttnChunk, static_cast<int>(a));
    for (int m : ready[a]) {
      routed[m] = b.add(Stage::Route, m);
      dispatched[m] = b.add(Stage::Dispatch, m, {routed[m]});
      if (order == StageOrder::Interleaved) {
        if (m >= 1) experts(next_experts++);
        if (m >= 2) finish(next_finish++);
      }
    }
  }
  while (next_experts < M) {
    experts(next_experts++);
    if (order == StageOrder::Interleaved && next_experts >= 2) finish(next_finish++);
  }
  while (next_finish < M) finish(next_finish++);
  return b.tasks;
}

std::vector<StageTask> backward_tasks(const ChunkPlan& plan, StageOrder order) {
  plan.validate();
  const int M = static_cast<int>(plan.moe.size()) - 1;
  const auto done = attention_done_after(plan);
  Builder b;
  std::vector<int> begun(M), exchanged(M), computed(M), returned(M);
  // The i-th MoE chunk taken is M-1-i: the last chunk of the forward comes back first, so a short
  // last chunk (balanced chunks) shortens both the forward's tail and the backward's head.
  auto chunk = [&](int i) { return M - 1 - i; };
  int next_experts = 0, next_route = 0;
  auto experts = [&](int m) {
    computed[m] = b.add(Stage::ExpertsBwd, m, {exchanged[m]});
    returned[m] = b.add(Stage::DispatchBwd, m, {computed[m]});
  };
  auto route = [&](int m) {
    b.add(Stage::RouteBwd, m, {returned[m]});
    for (int a : done[m]) b.add(Stage::AttnChunkBwd, a);
  };
  for (int i = 0; i < M; ++i) {
    const int m = chunk(i);
    begun[m] = b.add(Stage::FinishBwd, m);
    exchanged[m] = b.add(Stage::CombineBwd, m, {begun[m]});
    if (order == StageOrder::Interleaved) {
      if (i >= 1) experts(chunk(next_experts++));
      if (i >= 2) route(chunk(next_route++));
    }
  }
  while (next_experts < M) {
    experts(chunk(next_experts++));
    if (order == StageOrder::Interleaved && next_experts >= 2) route(chunk(next_route++));
  }
  while (next_route < M) route(chunk(next_route++));
  b.add(Stage::AttnFinishBwd, -1);
  return b.tasks;
}

}  // namespace ampipe
