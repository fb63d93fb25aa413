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
    case Stage::TpAttnGather:
      return "tp gather";
    case Stage::TpAttnReduce:
      return "tp reduce";
    case Stage::TpAttnGatherBwd:
      return "tp gather bwd";
    case Stage::TpAttnReduceBwd:
      return "tp reduce bwd";
    case Stage::TpExpertsGather:
      return "etp gather";
    case Stage::TpExpertsReduce:
      return "etp reduce";
    case Stage::TpExpertsGatherBwd:
      return "etp gather bwd";
    case Stage::TpExpertsReduceBwd:
      return "etp reduce bwd";
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
    default:
      return is_tensor_parallel_stage(stage) ? StreamRole::Comm : StreamRole::Compute;
  }
}

bool is_attention_stage(Stage stage) {
  return stage == Stage::AttnBegin || stage == Stage::AttnChunk || stage == Stage::AttnChunkBwd ||
         stage == Stage::AttnFinishBwd || stage == Stage::QkvChunk || stage == Stage::QkvChunkBwd ||
         stage == Stage::TpAttnGather || stage == Stage::TpAttnReduce || stage == Stage::TpAttnGatherBwd ||
         stage == Stage::TpAttnReduceBwd;
}

bool is_tensor_parallel_stage(Stage stage) {
  return static_cast<int>(stage) >= static_cast<int>(Stage::TpAttnGather) &&
         static_cast<int>(stage) <= static_cast<int>(Stage::TpExpertsReduceBwd);
}

bool is_whole_sequence_stage(Stage stage, PipelineScope scope) {
  if (stage == Stage::TpAttnGather || stage == Stage::TpAttnReduceBwd) return scope == PipelineScope::Block;
  return stage == Stage::AttnBegin || stage == Stage::AttnFinishBwd || stage == Stage::GradReduce ||
         stage == Stage::ParamGather;
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
  int last_compute = -1;  // the latest compute task added
  int add(Stage stage, int chunk, std::vector<int> waits = {}, int layer = 0) {
    tasks.push_back(StageTask{stage, chunk, std::move(waits), layer});
    if (stage_stream(stage) == StreamRole::Compute) last_compute = static_cast<int>(tasks.size()) - 1;
    return static_cast<int>(tasks.size()) - 1;
  }
};

// Which tensor-parallel collectives a pass's lists hold (PassShape).
struct TpLists {
  explicit TpLists(const PassShape& pass)
      : attention(pass.tensor_parallel > 1),
        attention_gathers(attention && pass.sequence_parallel),
        experts(pass.expert_tensor_parallel > 1),
        expert_gathers(experts && pass.tensor_parallel > 1 && pass.sequence_parallel) {}
  bool attention, attention_gathers, experts, expert_gathers;
};

}  // namespace

void PassShape::validate() const {
  const PassShape& pass = *this;
  AMPIPE_CHECK(pass.num_layers >= 1) << "a pass needs at least one block, got " << pass.num_layers;
  AMPIPE_CHECK(pass.tensor_parallel >= 1 && pass.expert_tensor_parallel >= 1)
      << "the tensor-parallel sizes must be at least 1, got " << pass.tensor_parallel << " and "
      << pass.expert_tensor_parallel;
}

namespace {

// The forward list: each block's stages in `order`; in model scope block l+1's attention chunks are
// slotted in after the finish that completes their rows, in block scope after block l's last task.
class ForwardBuilder {
 public:
  ForwardBuilder(const ChunkPlan& p, StageOrder order, const PassShape& pass)
      : order_(order),
        model_(pass.scope == PipelineScope::Model),
        gather_(pass.gather_params),
        tp_(pass),
        L_(static_cast<int>(pass.num_layers)),
        A_(static_cast<int>(p.attention.size()) - 1),
        M_(static_cast<int>(p.moe.size()) - 1),
        ready_(moe_ready_after(p)),
        next_ready_(next_block_ready_after(p)),
        layers_(L_, Layer(A_, M_)),
        gathered_(L_, -1) {}

  std::vector<StageTask> build() {
    if (gather_) gathered_[0] = b_.add(Stage::ParamGather, -1, {}, 0);
    for (int l = 0; l < (model_ ? 1 : L_); ++l)
      for (int a = 0; a < A_; ++a) attention(l, a);
    return std::move(b_.tasks);
  }

 private:
  struct Layer {
    Layer(int A, int M) : reduced(A, -1), dispatched(M), combined(M) {}
    std::vector<int> reduced;  // each attention chunk's TpAttnReduce
    std::vector<int> dispatched, combined;
    int next_experts = 0, next_finish = 0;
  };
  StageOrder order_;
  bool model_, gather_;
  TpLists tp_;
  int L_, A_, M_;
  std::vector<std::vector<int>> ready_, next_ready_;
  std::vector<Layer> layers_;
  std::vector<int> gathered_;  // each block's ParamGather task, once added
  Builder b_;

  void attention(int l, int a) {
    // The block's first compute task waits for its parameters.
    std::vector<int> first;
    if (gather_ && a == 0) first.push_back(gathered_[l]);
    // Sequence parallelism: the QKV's input rows are gathered first; block l > 0 wrote them in the
    // latest compute task (its last finish in block scope, the one completing them in model scope).
    if (tp_.attention_gathers && (model_ || a == 0)) {
      std::vector<int> input;
      if (l > 0) input.push_back(b_.last_compute);
      first.push_back(b_.add(Stage::TpAttnGather, model_ ? a : -1, input, l));
    }
    if (model_)
      b_.add(Stage::QkvChunk, a, first, l);
    else if (a == 0)
      b_.add(Stage::AttnBegin, -1, first, l);
    const int computed = b_.add(Stage::AttnChunk, a, {}, l);
    if (!tp_.attention) {
      route(l, a);
    } else {
      // a's reduce travels under a+1's attention: a's MoE chunks are routed after a+1.
      layers_[l].reduced[a] = b_.add(Stage::TpAttnReduce, a, {computed}, l);
      if (a >= 1) route(l, a - 1);
      if (a == A_ - 1) route(l, a);
    }
    if (a == A_ - 1) drain(l);
  }
  // Routes (and dispatches) the MoE chunks ready once attention chunk a has run.
  void route(int l, int a) {
    Layer& s = layers_[l];
    for (int m : ready_[a]) {
      std::vector<int> input;
      if (tp_.attention) input.push_back(s.reduced[a]);
      const int routed = b_.add(Stage::Route, m, input, l);
      // The next block's parameters travel under this block's attention, before its first dispatch.
      if (gather_ && l + 1 < L_ && gathered_[l + 1] < 0)
        gathered_[l + 1] = b_.add(Stage::ParamGather, -1, {}, l + 1);
      s.dispatched[m] = b_.add(Stage::Dispatch, m, {routed}, l);
      if (order_ == StageOrder::Interleaved) {
        if (m >= 1) experts(l, s.next_experts++);
        if (m >= 2) finish(l, s.next_finish++);
      }
    }
  }
  void experts(int l, int m) {
    Layer& s = layers_[l];
    // Expert TP with sequence parallelism: the received rows are gathered over the group first.
    const int input = tp_.expert_gathers ? b_.add(Stage::TpExpertsGather, m, {}, l) : s.dispatched[m];
    const int computed = b_.add(Stage::Experts, m, {input}, l);
    if (tp_.experts) b_.add(Stage::TpExpertsReduce, m, {computed}, l);
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
        tp_(pass),
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
  TpLists tp_;
  int L_, M_;
  std::vector<std::vector<int>> done_, lower_ready_;
  std::vector<Layer> layers_;
  Builder b_;
  // The latest TpAttnReduceBwd: the block below's next FinishBwd reads the gradient it completes.
  int reduced_input_ = -1;

  // The i-th MoE chunk taken is M-1-i: the last chunk of the forward comes back first, so a short
  // last chunk (balanced chunks) shortens both the forward's tail and the backward's head.
  int chunk(int i) const { return M_ - 1 - i; }

  void begin(int l, int m) {
    Layer& s = layers_[l];
    std::vector<int> input;
    if (reduced_input_ >= 0) input.push_back(reduced_input_);
    reduced_input_ = -1;  // later tasks of the compute stream follow this one
    const int begun = b_.add(Stage::FinishBwd, m, input, l);
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
    const int input = tp_.expert_gathers ? b_.add(Stage::TpExpertsGatherBwd, m, {}, l) : s.exchanged[m];
    const int computed = b_.add(Stage::ExpertsBwd, m, {input}, l);
    if (tp_.experts) b_.add(Stage::TpExpertsReduceBwd, m, {computed}, l);
    s.returned[m] = b_.add(Stage::DispatchBwd, m, {computed}, l);
    if (delay_) b_.add(Stage::ExpertsWgrad, m, {}, l);
  }
  void route(int l, int m) {
    const int routed = b_.add(Stage::RouteBwd, m, {layers_[l].returned[m]}, l);
    for (int a : done_[m]) {
      // Sequence parallelism: the chunk's output gradient is gathered over the group first.
      std::vector<int> input;
      if (tp_.attention_gathers) input.push_back(b_.add(Stage::TpAttnGatherBwd, a, {routed}, l));
      b_.add(Stage::AttnChunkBwd, a, input, l);
      if (!model_) continue;
      const int last = b_.add(Stage::QkvChunkBwd, a, {}, l);
      if (tp_.attention) reduced_input_ = b_.add(Stage::TpAttnReduceBwd, a, {last}, l);
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
    if (model_) return;
    const int last = b_.add(Stage::AttnFinishBwd, -1, {}, l);
    if (tp_.attention) reduced_input_ = b_.add(Stage::TpAttnReduceBwd, -1, {last}, l);
    block_done(l, last);
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
  pass.validate();
  return ForwardBuilder(plan, order, pass).build();
}

std::vector<StageTask> backward_tasks(const ChunkPlan& plan, StageOrder order, const PassShape& pass) {
  plan.validate();
  pass.validate();
  return BackwardBuilder(plan, order, pass).build();
}

}  // namespace ampipe
