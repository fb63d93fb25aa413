#include "plan/autotune.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/error.h"

namespace ampipe {

void AutotuneOptions::validate() const {
  for (int64_t P : pipe_degrees) AMPIPE_CHECK(P >= 1) << "the planner's pipe degrees must be >= 1, got " << P;
  AMPIPE_CHECK(!orders.empty()) << "the planner needs at least one stage order";
  AMPIPE_CHECK(min_chunk_positions >= 1)
      << "the planner's minimum chunk length must be >= 1 position, got " << min_chunk_positions;
  AMPIPE_CHECK(std::isfinite(min_gain) && min_gain >= 0 && min_gain < 1)
      << "the planner's minimum gain over sequential must be in [0, 1), got " << min_gain;
  AMPIPE_CHECK(num_layers >= 1) << "the planner's pass needs at least one block (--num-layers), got "
                                << num_layers;
  AMPIPE_CHECK(!scopes.empty()) << "the planner needs at least one pipeline scope";
}

std::string PlanCandidate::describe() const {
  const std::string scope_text = scope == PipelineScope::Model ? " model-scope" : "";
  if (schedule.kind == ScheduleKind::Sequential) return schedule.describe() + scope_text;
  return schedule.describe() + " " + stage_order_name(order) + scope_text;
}

double time_balance_weight(const BlockShape& shape, const HardwareProfile& hw, bool moe_in_chunk) {
  // Every stage below costs a (e^2 - b^2) + c (e - b) + overhead over positions [b, e) (the cost
  // model is quadratic in attention keys, linear in tokens), so three chunks recover a and c:
  //   t[L, 2L) - t[0, L) = 2 a L^2,   t[0, 2L) - t[L, 2L) = a L^2 + c L.
  // A virtual sequence of 4L positions keeps every chunk partial (the same row gathers as in a
  // pipelined block).
  std::vector<Stage> stages = {Stage::AttnChunk, Stage::AttnChunkBwd};
  if (moe_in_chunk)
    stages.insert(stages.end(), {Stage::Route, Stage::Experts, Stage::Finish, Stage::FinishBwd,
                                 Stage::ExpertsBwd, Stage::RouteBwd});
  const int64_t L = 1024;
  BlockShape virtual_shape = shape;
  virtual_shape.seq_len = 4 * L;
  auto t = [&](int64_t b, int64_t e) {
    double sum = 0;
    for (Stage s : stages) sum += stage_seconds(s, b, e, virtual_shape, hw);
    return sum;
  };
  const double first = t(0, L), second = t(L, 2 * L), both = t(0, 2 * L);
  const double Ld = double(L);
  const double a = (second - first) / (2 * Ld * Ld);
  const double c = (both - second - a * Ld * Ld) / Ld;
  AMPIPE_CHECK(a > 0) << "time_balance_weight: the cost model gives attention no quadratic cost";
  return std::max(0.0, c / a);
}

std::vector<PlanCandidate> evaluate_candidates(const BlockShape& shape, const HardwareProfile& hw,
                                               const AutotuneOptions& options) {
  shape.validate();
  options.validate();
  const int64_t N = shape.seq_len;
  std::vector<int64_t> degrees;
  for (int64_t P : options.pipe_degrees)
    if (P >= 2 && N / P >= options.min_chunk_positions &&
        std::find(degrees.begin(), degrees.end(), P) == degrees.end())
      degrees.push_back(P);
  std::sort(degrees.begin(), degrees.end());

  // Scopes to price pipelined candidates in: one block has nothing to flow across.
  std::vector<PipelineScope> scopes;
  for (PipelineScope scope : options.num_layers == 1 ? std::vector{PipelineScope::Block} : options.scopes)
    if (std::find(scopes.begin(), scopes.end(), scope) == scopes.end()) scopes.push_back(scope);
  std::vector<PlanCandidate> out;
  auto price = [&](const BlockSchedule& s, StageOrder order, PipelineScope scope) {
    const PassShape pass{options.num_layers, scope, options.reduce_gradients, options.gather_params};
    out.push_back(PlanCandidate{s, order, scope, predict_pass(s, order, shape, hw, pass)});
  };
  auto add = [&](const BlockSchedule& s, StageOrder order) {
    for (PipelineScope scope : scopes) price(s, order, scope);
  };
  // sequential: one chunk, so every order is the same and the model scope gives nothing
  price(BlockSchedule{}, StageOrder::StageMajor, PipelineScope::Block);

  auto searched = [&](ScheduleKind kind) {
    return std::find(options.schedules.begin(), options.schedules.end(), kind) != options.schedules.end();
  };
  if (searched(ScheduleKind::MoePipe))
    for (int64_t P : degrees) {
      BlockSchedule s;
      s.kind = ScheduleKind::MoePipe;
      s.pipe_degree = P;
      for (StageOrder order : options.orders) add(s, order);
    }
  if (!searched(ScheduleKind::AmPipe)) return out;

  const double weight_same = options.balanced_chunks ? time_balance_weight(shape, hw, true) : 0;
  const double weight_apart = options.balanced_chunks ? time_balance_weight(shape, hw, false) : 0;
  for (int64_t P : degrees) {
    std::vector<ChunkPolicy> policies = {ChunkPolicy::Equal};
    if (options.balanced_chunks) policies.push_back(ChunkPolicy::Balanced);
    std::vector<int64_t> moe_sides = {0};
    if (options.separate_moe_side)
      for (int64_t M : {P / 2, P, 2 * P})
        if (M >= 2 && N / M >= options.min_chunk_positions) moe_sides.push_back(M);
    for (ChunkPolicy policy : policies)
      for (int64_t M : moe_sides) {
        if (policy == ChunkPolicy::Equal && M == P) continue;  // the same chunks as M = 0
        BlockSchedule s;
        s.kind = ScheduleKind::AmPipe;
        s.pipe_degree = P;
        s.chunk_policy = policy;
        s.moe_pipe_degree = M;
        if (policy == ChunkPolicy::Balanced) s.balance_weight = M == 0 ? weight_same : weight_apart;
        for (StageOrder order : options.orders) add(s, order);
      }
  }
  return out;
}

namespace {
// Chunks of the larger side: what the model's error grows with.
int64_t chunk_count(const PlanCandidate& c) {
  if (c.schedule.kind == ScheduleKind::Sequential) return 1;
  const int64_t p = c.schedule.chunk_boundaries.empty() ? c.schedule.pipe_degree
                                                        : static_cast<int64_t>(c.schedule.chunk_boundaries.size()) - 1;
  return std::max(p, c.schedule.moe_pipe_degree);
}
}  // namespace

PlanCandidate choose_plan(const std::vector<PlanCandidate>& candidates, double min_gain, double near_tie) {
  AMPIPE_CHECK(std::isfinite(min_gain) && min_gain >= 0 && min_gain < 1)
      << "the planner's minimum gain over sequential must be in [0, 1), got " << min_gain;
  AMPIPE_CHECK(std::isfinite(near_tie) && near_tie >= 0 && near_tie < 1)
      << "the planner's near-tie margin must be in [0, 1), got " << near_tie;
  const auto sequential = std::find_if(candidates.begin(), candidates.end(), [](const PlanCandidate& c) {
    return c.schedule.kind == ScheduleKind::Sequential;
  });
  AMPIPE_CHECK(sequential != candidates.end()) << "choose_plan: the candidates hold no sequential schedule";
  const PlanCandidate* best = &*sequential;
  for (const PlanCandidate& c : candidates)
    if (c.prediction.total < best->prediction.total) best = &c;
  // Among the candidates within near_tie of the fastest, the one with the fewest chunks: per-chunk
  // costs the model does not see (routing imbalance between ranks synchronised at every exchange,
  // small messages) grow with the chunk count, so a near tie is not worth more chunks. Then block
  // scope: the model scope adds per-chunk QKV tasks and cross-block edges for the same reason.
  const double fastest = best->prediction.total;
  auto rank = [](const PlanCandidate& c) {
    return std::make_tuple(chunk_count(c), c.scope == PipelineScope::Model, c.prediction.total);
  };
  for (const PlanCandidate& c : candidates)
    if (c.prediction.total <= fastest * (1 + near_tie) && rank(c) < rank(*best)) best = &c;
  if (best->prediction.total < (1 - min_gain) * sequential->prediction.total) return *best;
  return *sequential;
}

PlanCandidate choose_plan(const BlockShape& shape, const HardwareProfile& hw,
                          const AutotuneOptions& options) {
  return choose_plan(evaluate_candidates(shape, hw, options), options.min_gain, options.near_tie);
}

}  // namespace ampipe
