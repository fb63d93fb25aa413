#include "pipeline/task_list.h"

#include <algorithm>
#include <map>

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

const char* pipeline_scope_name(PipelineScope scope) { return scope == PipelineScope::Block ? "block" : "model"; }

PipelineScope parse_pipeline_scope(const std::string& name) {
  if (name == "block") return PipelineScope::Block;
  if (name == "model") return PipelineScope::Model;
  AMPIPE_CHECK(false) << "--pipeline-scope '" << name << "' is not one of: block, model";
  return PipelineScope::Block;
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
    case Stage::QkvChunk: return "ln1+qkv chunk";
    case Stage::QkvChunkBwd: return "qkv+ln1 bwd chunk";
    case Stage::GradReduce: return "grad reduce";
    case Stage::ParamGather:
      return "param gather";
    case Stage::ExpertsWgrad:
      return "experts wgrad";
  }
  return "?";
}

StreamRole stage_stream(Stage stage) {
  switch (stage) {
    case Stage::Dispatch:
    case Stage::Combine:
    case Stage::CombineBwd:
    case Stage::DispatchBwd:
    case Stage::GradReduce:
    case Stage::ParamGather:
      return StreamRole::Comm;
    default: return StreamRole::Compute;
  }
}

bool is_attention_stage(Stage stage) {
  return stage == Stage::AttnBegin || stage == Stage::AttnChunk || stage == Stage::AttnChunkBwd ||
         stage == Stage::AttnFinishBwd || stage == Stage::QkvChunk || stage == Stage::QkvChunkBwd;
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

// For each MoE chunk m, the attention chunks whose last position lies in it, in order: in model
// scope the next block can take them once m's finish has run (finishes are taken in order).
std::vector<std::vector<int>> next_block_ready_after(const ChunkPlan& p) {
  std::vector<std::vector<int>> ready(p.moe.size() - 1);
  size_t m = 0;
  for (size_t a = 0; a + 1 < p.attention.size(); ++a) {
    while (p.moe[m + 1] < p.attention[a + 1]) ++m;
    ready[m].push_back(static_cast<int>(a));
  }
  return ready;
}

// Backward, model scope: for each attention chunk a, the MoE chunks of the block below whose first
// position lies in it, last first: their output gradient is complete once a's QKV backward has run.
std::vector<std::vector<int>> lower_block_ready_after(const ChunkPlan& p) {
  std::vector<std::vector<int>> ready(p.attention.size() - 1);
  size_t a = p.attention.size() - 2;
  for (size_t m = p.moe.size() - 1; m-- > 0;) {
    while (p.attention[a] > p.moe[m]) --a;
    ready[a].push_back(static_cast<int>(m));
  }
  return ready;
}

struct Builder {
  std::vector<StageTask> tasks;
  int add(Stage stage, int chunk, std::vector<int> waits = {}, int layer = 0) {
    tasks.push_back(StageTask{stage, chunk, std::move(waits), layer});
    return static_cast<int>(tasks.size()) - 1;
  }
};

void check_pass(const PassShape& pass) {
  AMPIPE_CHECK(pass.num_layers >= 1) << "a pass needs at least one block, got " << pass.num_layers;
}

// The forward list: each block's stages in `order`; in model scope block l+1's attention chunks are
// slotted in after the finish that completes their rows, in block scope after block l's last task.
class ForwardBuilder {
 public:
  ForwardBuilder(const ChunkPlan& p, StageOrder order, const PassShape& pass)
      : order_(order),
        model_(pass.scope == PipelineScope::Model),
        gather_(pass.gather_params),
        L_(static_cast<int>(pass.num_layers)),
        A_(static_cast<int>(p.attention.size()) - 1),
        M_(static_cast<int>(p.moe.size()) - 1),
        ready_(moe_ready_after(p)),
        next_ready_(next_block_ready_after(p)),
        layers_(L_, Layer(M_)),
        gathered_(L_, -1) {}

  std::vector<StageTask> build() {
    if (gather_) gathered_[0] = b_.add(Stage::ParamGather, -1, {}, 0);
    for (int l = 0; l < (model_ ? 1 : L_); ++l)
      for (int a = 0; a < A_; ++a) attention(l, a);
    return std::move(b_.tasks);
  }

 private:
  struct Layer {
    explicit Layer(int M) : dispatched(M), combined(M) {}
    std::vector<int> dispatched, combined;
    int next_experts = 0, next_finish = 0;
  };
  StageOrder order_;
  bool model_, gather_;
  int L_, A_, M_;
  std::vector<std::vector<int>> ready_, next_ready_;
  std::vector<Layer> layers_;
  std::vector<int> gathered_;  // each block's ParamGather task, once added
  Builder b_;

  void attention(int l, int a) {
    Layer& s = layers_[l];
    // The block's first compute task waits for its parameters.
    std::vector<int> first;
    if (gather_ && a == 0) first.push_back(gathered_[l]);
    if (model_)
      b_.add(Stage::QkvChunk, a, first, l);
    else if (a == 0)
      b_.add(Stage::AttnBegin, -1, first, l);
    b_.add(Stage::AttnChunk, a, {}, l);
    for (int m : ready_[a]) {
      const int routed = b_.add(Stage::Route, m, {}, l);
      // The next block's parameters travel under this block's attention, before its first dispatch.
      if (gather_ && l + 1 < L_ && gathered_[l + 1] < 0)
        gathered_[l + 1] = b_.add(Stage::ParamGather, -1, {}, l + 1);
      s.dispatched[m] = b_.add(Stage::Dispatch, m, {routed}, l);
      if (order_ == StageOrder::Interleaved) {
        if (m >= 1) experts(l, s.next_experts++);
        if (m >= 2) finish(l, s.next_finish++);
      }
    }
    if (a == A_ - 1) drain(l);
  }
  void experts(int l, int m) {
    Layer& s = layers_[l];
    const int computed = b_.add(Stage::Experts, m, {s.dispatched[m]}, l);
    s.combined[m] = b_.add(Stage::Combine, m, {computed}, l);
  }
  void finish(int l, int m) {
    b_.add(Stage::Finish, m, {layers_[l].combined[m]}, l);
    if (model_ && l + 1 < L_)
      for (int a : next_ready_[m]) attention(l + 1, a);
  }
  void drain(int l) {
    Layer& s = layers_[l];
    while (s.next_experts < M_) {
      experts(l, s.next_experts++);
      if (order_ == StageOrder::Interleaved && s.next_experts >= 2) finish(l, s.next_finish++);
    }
    while (s.next_finish < M_) finish(l, s.next_finish++);
  }
};

// The backward list: blocks last first, each block's MoE chunks last first in `order`; in model
// scope block l-1's MoE chunks are slotted in after the QKV backward that completes their rows.
class BackwardBuilder {
 public:
  BackwardBuilder(const ChunkPlan& p, StageOrder order, const PassShape& pass)
      : order_(order),
        model_(pass.scope == PipelineScope::Model),
        reduce_(pass.reduce_gradients),
        delay_(pass.delay_wgrad),
        L_(static_cast<int>(pass.num_layers)),
        M_(static_cast<int>(p.moe.size()) - 1),
        done_(attention_done_after(p)),
        lower_ready_(lower_block_ready_after(p)),
        layers_(L_, Layer(M_)) {}

  std::vector<StageTask> build() {
    for (int l = L_ - 1; l >= (model_ ? L_ - 1 : 0); --l)
      for (int i = 0; i < M_; ++i) begin(l, chunk(i));
    return std::move(b_.tasks);
  }

 private:
  struct Layer {
    explicit Layer(int M) : exchanged(M), returned(M) {}
    std::vector<int> exchanged, returned;
    int begun = 0, next_experts = 0, next_route = 0;
  };
  StageOrder order_;
  bool model_, reduce_, delay_;
  int L_, M_;
  std::vector<std::vector<int>> done_, lower_ready_;
  std::vector<Layer> layers_;
  Builder b_;

  // The i-th MoE chunk taken is M-1-i: the last chunk of the forward comes back first, so a short
  // last chunk (balanced chunks) shortens both the forward's tail and the backward's head.
  int chunk(int i) const { return M_ - 1 - i; }

  void begin(int l, int m) {
    Layer& s = layers_[l];
    const int begun = b_.add(Stage::FinishBwd, m, {}, l);
    s.exchanged[m] = b_.add(Stage::CombineBwd, m, {begun}, l);
    const int i = s.begun++;
    if (order_ == StageOrder::Interleaved) {
      if (i >= 1) experts(l, chunk(s.next_experts++));
      if (i >= 2) route(l, chunk(s.next_route++));
    }
    if (i == M_ - 1) drain(l);
  }
  void experts(int l, int m) {
    Layer& s = layers_[l];
    const int computed = b_.add(Stage::ExpertsBwd, m, {s.exchanged[m]}, l);
    s.returned[m] = b_.add(Stage::DispatchBwd, m, {computed}, l);
    if (delay_) b_.add(Stage::ExpertsWgrad, m, {}, l);
  }
  void route(int l, int m) {
    b_.add(Stage::RouteBwd, m, {layers_[l].returned[m]}, l);
    for (int a : done_[m]) {
      b_.add(Stage::AttnChunkBwd, a, {}, l);
      if (!model_) continue;
      const int last = b_.add(Stage::QkvChunkBwd, a, {}, l);
      if (a == 0) block_done(l, last);
      if (l > 0)
        for (int lower : lower_ready_[a]) begin(l - 1, lower);
    }
  }
  void drain(int l) {
    Layer& s = layers_[l];
    while (s.next_experts < M_) {
      experts(l, chunk(s.next_experts++));
      if (order_ == StageOrder::Interleaved && s.next_experts >= 2) route(l, chunk(s.next_route++));
    }
    while (s.next_route < M_) route(l, chunk(s.next_route++));
    if (!model_) block_done(l, b_.add(Stage::AttnFinishBwd, -1, {}, l));
  }
  // `last`: the block's last compute task; its gradients are complete after it.
  void block_done(int l, int last) {
    if (reduce_) b_.add(Stage::GradReduce, -1, {last}, l);
  }
};

}  // namespace

void ChunkPlan::validate() const {
  check_boundaries(attention, "attention-side");
  check_boundaries(moe, "MoE-side");
  AMPIPE_CHECK(attention.back() == moe.back())
      << "the attention side ends at " << attention.back() << " but the MoE side at " << moe.back();
}

std::vector<StageTask> forward_tasks(const ChunkPlan& plan, StageOrder order, const PassShape& pass) {
  plan.validate();
  check_pass(pass);
  return ForwardBuilder(plan, order, pass).build();
}

std::vector<StageTask> backward_tasks(const ChunkPlan& plan, StageOrder order, const PassShape& pass) {
  plan.validate();
  check_pass(pass);
  return BackwardBuilder(plan, order, pass).build();
}

namespace {

bool overlaps(int64_t b0, int64_t e0, int64_t b1, int64_t e1) { return b0 < e1 && b1 < e0; }

std::string task_label(const StageTask& t) {
  return std::string(stage_name(t.stage)) + (t.chunk >= 0 ? " c" + std::to_string(t.chunk) : std::string()) +
         " of block " + std::to_string(t.layer);
}

}  // namespace

void check_task_list(const std::vector<StageTask>& tasks, const ChunkPlan& plan, const PassShape& pass,
                     bool backward) {
  plan.validate();
  check_pass(pass);
  const int L = static_cast<int>(pass.num_layers), A = static_cast<int>(plan.attention.size()) - 1,
            M = static_cast<int>(plan.moe.size()) - 1;
  const size_t n = tasks.size();
  // before[i][j]: task j is ordered before task i (same stream and earlier, or waited for, transitively).
  std::vector<std::vector<bool>> before(n, std::vector<bool>(n, false));
  int last_on[2] = {-1, -1};
  for (size_t i = 0; i < n; ++i) {
    const StageTask& t = tasks[i];
    AMPIPE_CHECK(t.layer >= 0 && t.layer < L) << "task " << i << " (" << stage_name(t.stage) << ") names block "
                                              << t.layer << " of " << L;
    auto inherit = [&](int j) {
      before[i][j] = true;
      for (size_t k = 0; k < n; ++k)
        if (before[j][k]) before[i][k] = true;
    };
    const int s = t.stream() == StreamRole::Compute ? 0 : 1;
    if (last_on[s] >= 0) inherit(last_on[s]);
    for (int w : t.waits) {
      AMPIPE_CHECK(w >= 0 && static_cast<size_t>(w) < i && tasks[w].stream() != t.stream())
          << "task " << i << " (" << task_label(t) << ") waits for task " << w
          << ", which is not an earlier task of the other stream";
      inherit(w);
    }
    last_on[s] = static_cast<int>(i);
  }
  // Where each (stage, block, chunk) sits; each must appear exactly once.
  std::vector<Stage> stages;
  if (!backward) {
    stages = {Stage::AttnChunk, Stage::Route, Stage::Dispatch, Stage::Experts, Stage::Combine, Stage::Finish};
    stages.push_back(pass.scope == PipelineScope::Model ? Stage::QkvChunk : Stage::AttnBegin);
    if (pass.gather_params) stages.push_back(Stage::ParamGather);
  } else {
    stages = {Stage::FinishBwd, Stage::CombineBwd, Stage::ExpertsBwd, Stage::DispatchBwd, Stage::RouteBwd,
              Stage::AttnChunkBwd};
    stages.push_back(pass.scope == PipelineScope::Model ? Stage::QkvChunkBwd : Stage::AttnFinishBwd);
    if (pass.reduce_gradients) stages.push_back(Stage::GradReduce);
    if (pass.delay_wgrad) stages.push_back(Stage::ExpertsWgrad);
  }
  // Whole-sequence (and whole-block) stages carry chunk -1.
  auto whole = [](Stage s) {
    return s == Stage::AttnBegin || s == Stage::AttnFinishBwd || s == Stage::GradReduce ||
           s == Stage::ParamGather;
  };
  auto chunks_of = [&](Stage s) { return is_attention_stage(s) ? A : M; };
  auto key = [](Stage s, int l, int c) { return (static_cast<int64_t>(s) * 4096 + l) * 65536 + (c + 1); };
  std::map<int64_t, int> where;
  for (size_t i = 0; i < n; ++i) {
    const StageTask& t = tasks[i];
    AMPIPE_CHECK(std::find(stages.begin(), stages.end(), t.stage) != stages.end())
        << "task " << i << " (" << task_label(t) << ") does not belong in a "
        << (backward ? "backward" : "forward") << " list of " << pipeline_scope_name(pass.scope) << " scope";
    AMPIPE_CHECK(whole(t.stage) ? t.chunk == -1 : t.chunk >= 0 && t.chunk < chunks_of(t.stage))
        << "task " << i << " (" << task_label(t) << ") names a chunk outside the plan";
    AMPIPE_CHECK(where.emplace(key(t.stage, t.layer, t.chunk), static_cast<int>(i)).second)
        << "task " << i << " (" << task_label(t) << ") appears twice";
  }
  for (Stage s : stages)
    for (int l = 0; l < L; ++l)
      for (int c = whole(s) ? -1 : 0; c < (whole(s) ? 0 : chunks_of(s)); ++c)
        AMPIPE_CHECK(where.count(key(s, l, c)))
            << "the list has no " << stage_name(s) << (c >= 0 ? " c" + std::to_string(c) : std::string())
            << " of block " << l;
  auto at = [&](Stage s, int l, int c) { return where.at(key(s, l, c)); };
  const bool model = pass.scope == PipelineScope::Model;
  // The inputs of each task (the rule), as tasks that must be ordered before it.
  for (size_t i = 0; i < n; ++i) {
    const StageTask& t = tasks[i];
    const int l = t.layer, c = t.chunk;
    std::vector<int> needs;
    // Every compute task of a block reads its parameters: gathered first.
    if (!backward && pass.gather_params && t.stream() == StreamRole::Compute)
      needs.push_back(at(Stage::ParamGather, l, -1));
    auto attn_range = [&](int a) { return std::pair(plan.attention[a], plan.attention[a + 1]); };
    auto moe_range = [&](int m) { return std::pair(plan.moe[m], plan.moe[m + 1]); };
    // the finishes (forward) of block l-1 that write rows of [b, e)
    auto lower_finishes = [&](int64_t b, int64_t e) {
      if (l == 0) return;
      for (int m = 0; m < M; ++m)
        if (overlaps(b, e, plan.moe[m], plan.moe[m + 1])) needs.push_back(at(Stage::Finish, l - 1, m));
    };
    switch (t.stage) {
      case Stage::AttnBegin: lower_finishes(0, plan.moe[M]); break;
      case Stage::QkvChunk: lower_finishes(attn_range(c).first, attn_range(c).second); break;
      case Stage::AttnChunk:
        if (model)
          for (int a = 0; a <= c; ++a) needs.push_back(at(Stage::QkvChunk, l, a));
        else
          needs.push_back(at(Stage::AttnBegin, l, -1));
        break;
      case Stage::Route:
        for (int a = 0; a < A; ++a)
          if (overlaps(moe_range(c).first, moe_range(c).second, attn_range(a).first, attn_range(a).second))
            needs.push_back(at(Stage::AttnChunk, l, a));
        break;
      case Stage::Dispatch: needs.push_back(at(Stage::Route, l, c)); break;
      case Stage::Experts: needs.push_back(at(Stage::Dispatch, l, c)); break;
      case Stage::Combine: needs.push_back(at(Stage::Experts, l, c)); break;
      case Stage::Finish: needs.push_back(at(Stage::Combine, l, c)); break;
      case Stage::FinishBwd:
        if (l + 1 < L) {
          if (!model) needs.push_back(at(Stage::AttnFinishBwd, l + 1, -1));
          else
            for (int a = 0; a < A; ++a)
              if (overlaps(moe_range(c).first, moe_range(c).second, attn_range(a).first, attn_range(a).second))
                needs.push_back(at(Stage::QkvChunkBwd, l + 1, a));
        }
        break;
      case Stage::CombineBwd: needs.push_back(at(Stage::FinishBwd, l, c)); break;
      case Stage::ExpertsBwd: needs.push_back(at(Stage::CombineBwd, l, c)); break;
      case Stage::DispatchBwd: needs.push_back(at(Stage::ExpertsBwd, l, c)); break;
      case Stage::RouteBwd:
        needs.push_back(at(Stage::DispatchBwd, l, c));
        // it releases the chunk's context, which the delayed weight gradients read
        if (pass.delay_wgrad) needs.push_back(at(Stage::ExpertsWgrad, l, c));
        break;
      case Stage::ExpertsWgrad:
        needs.push_back(at(Stage::ExpertsBwd, l, c));
        break;
      case Stage::AttnChunkBwd:
        for (int m = 0; m < M; ++m)
          if (overlaps(attn_range(c).first, attn_range(c).second, moe_range(m).first, moe_range(m).second))
            needs.push_back(at(Stage::RouteBwd, l, m));
        break;
      case Stage::QkvChunkBwd:
        for (int a = c; a < A; ++a) needs.push_back(at(Stage::AttnChunkBwd, l, a));
        break;
      case Stage::AttnFinishBwd:
        for (int a = 0; a < A; ++a) needs.push_back(at(Stage::AttnChunkBwd, l, a));
        break;
      case Stage::GradReduce:
        for (int m = 0; m < M; ++m) {
          needs.push_back(at(Stage::ExpertsBwd, l, m));
          needs.push_back(at(Stage::RouteBwd, l, m));
          if (pass.delay_wgrad) needs.push_back(at(Stage::ExpertsWgrad, l, m));
        }
        for (int a = 0; a < A; ++a) {
          needs.push_back(at(Stage::AttnChunkBwd, l, a));
          if (model) needs.push_back(at(Stage::QkvChunkBwd, l, a));
        }
        if (!model) needs.push_back(at(Stage::AttnFinishBwd, l, -1));
        break;
      case Stage::ParamGather:
        break;  // the optimizer's update, before the pass
    }
    for (int j : needs)
      AMPIPE_CHECK(before[i][j]) << "task " << i << " (" << task_label(t) << ") may run before its input, task " << j
                                 << " (" << task_label(tasks[j]) << ")";
  }
}

}  // namespace ampipe
