// check_task_list (pipeline/task_list.h): the dependency rule of every stage, and the check of a
// list against it.
#include <algorithm>
#include <map>

#include "core/error.h"
#include "pipeline/task_list.h"

namespace ampipe {

namespace {

bool overlaps(int64_t b0, int64_t e0, int64_t b1, int64_t e1) { return b0 < e1 && b1 < e0; }

std::string task_label(const StageTask& t) {
  return std::string(stage_name(t.stage)) + (t.chunk >= 0 ? " c" + std::to_string(t.chunk) : std::string()) +
         " of block " + std::to_string(t.layer);
}

// before[i][j]: task j is ordered before task i (same stream and earlier, or waited for,
// transitively). Refuses a wait that is not an earlier task of the other stream, or a bad block.
std::vector<std::vector<bool>> ordering(const std::vector<StageTask>& tasks, int L) {
  const size_t n = tasks.size();
  std::vector<std::vector<bool>> before(n, std::vector<bool>(n, false));
  int last_on[2] = {-1, -1};
  for (size_t i = 0; i < n; ++i) {
    const StageTask& t = tasks[i];
    AMPIPE_CHECK(t.layer >= 0 && t.layer < L)
        << "task " << i << " (" << stage_name(t.stage) << ") names block " << t.layer << " of " << L;
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
  return before;
}

// The stages a list of this direction and pass must hold (each once per block and chunk).
std::vector<Stage> expected_stages(const PassShape& pass, bool backward) {
  const bool model = pass.scope == PipelineScope::Model;
  const bool tp = pass.tensor_parallel > 1, sp = tp && pass.sequence_parallel,
             etp = pass.expert_tensor_parallel > 1;
  std::vector<Stage> stages;
  if (!backward) {
    stages = {Stage::AttnChunk, Stage::Route, Stage::Dispatch, Stage::Experts, Stage::Combine, Stage::Finish};
    stages.push_back(model ? Stage::QkvChunk : Stage::AttnBegin);
    if (pass.gather_params) stages.push_back(Stage::ParamGather);
    if (tp) stages.push_back(Stage::TpAttnReduce);
    if (sp) stages.push_back(Stage::TpAttnGather);
    if (etp) stages.push_back(Stage::TpExpertsReduce);
    if (etp && sp) stages.push_back(Stage::TpExpertsGather);
  } else {
    stages = {Stage::FinishBwd,   Stage::CombineBwd, Stage::ExpertsBwd,
              Stage::DispatchBwd, Stage::RouteBwd,   Stage::AttnChunkBwd};
    stages.push_back(model ? Stage::QkvChunkBwd : Stage::AttnFinishBwd);
    if (pass.reduce_gradients) stages.push_back(Stage::GradReduce);
    if (pass.delay_wgrad) stages.push_back(Stage::ExpertsWgrad);
    if (tp) stages.push_back(Stage::TpAttnReduceBwd);
    if (sp) stages.push_back(Stage::TpAttnGatherBwd);
    if (etp) stages.push_back(Stage::TpExpertsReduceBwd);
    if (etp && sp) stages.push_back(Stage::TpExpertsGatherBwd);
  }
  return stages;
}

// The rule: for each task, the tasks whose outputs it reads.
class Rule {
 public:
  Rule(const ChunkPlan& plan, const PassShape& pass, const std::map<int64_t, int>& where)
      : plan_(plan),
        pass_(pass),
        where_(where),
        L_(static_cast<int>(pass.num_layers)),
        A_(static_cast<int>(plan.attention.size()) - 1),
        M_(static_cast<int>(plan.moe.size()) - 1),
        model_(pass.scope == PipelineScope::Model),
        tp_(pass.tensor_parallel > 1),
        sp_(tp_ && pass.sequence_parallel),
        etp_(pass.expert_tensor_parallel > 1) {}

  static int64_t key(Stage s, int l, int c) { return (static_cast<int64_t>(s) * 4096 + l) * 65536 + (c + 1); }

  std::vector<int> needs(const StageTask& t, bool backward) const {
    std::vector<int> n;
    // Every compute task of a block reads its parameters: gathered first.
    if (!backward && pass_.gather_params && t.stream() == StreamRole::Compute)
      n.push_back(at(Stage::ParamGather, t.layer, -1));
    if (backward)
      backward_needs(t, n);
    else
      forward_needs(t, n);
    return n;
  }

 private:
  const ChunkPlan& plan_;
  const PassShape& pass_;
  const std::map<int64_t, int>& where_;
  int L_, A_, M_;
  bool model_, tp_, sp_, etp_;

  int at(Stage s, int l, int c) const { return where_.at(key(s, l, c)); }
  bool attn_moe(int a, int m) const {
    return overlaps(plan_.attention[a], plan_.attention[a + 1], plan_.moe[m], plan_.moe[m + 1]);
  }
  // the finishes (forward) of block l-1 that write rows of [b, e)
  void lower_finishes(int l, int64_t b, int64_t e, std::vector<int>& n) const {
    if (l == 0) return;
    for (int m = 0; m < M_; ++m)
      if (overlaps(b, e, plan_.moe[m], plan_.moe[m + 1])) n.push_back(at(Stage::Finish, l - 1, m));
  }

  void forward_needs(const StageTask& t, std::vector<int>& n) const {
    const int l = t.layer, c = t.chunk;
    switch (t.stage) {
      case Stage::AttnBegin:
        lower_finishes(l, 0, plan_.moe[M_], n);
        if (sp_) n.push_back(at(Stage::TpAttnGather, l, -1));
        break;
      case Stage::QkvChunk:
        lower_finishes(l, plan_.attention[c], plan_.attention[c + 1], n);
        if (sp_) n.push_back(at(Stage::TpAttnGather, l, c));
        break;
      case Stage::TpAttnGather:
        if (model_)
          lower_finishes(l, plan_.attention[c], plan_.attention[c + 1], n);
        else
          lower_finishes(l, 0, plan_.moe[M_], n);
        break;
      case Stage::AttnChunk:
        if (model_)
          for (int a = 0; a <= c; ++a) n.push_back(at(Stage::QkvChunk, l, a));
        else
          n.push_back(at(Stage::AttnBegin, l, -1));
        break;
      case Stage::TpAttnReduce:
        n.push_back(at(Stage::AttnChunk, l, c));
        break;
      case Stage::Route:
        for (int a = 0; a < A_; ++a)
          if (attn_moe(a, c)) n.push_back(at(tp_ ? Stage::TpAttnReduce : Stage::AttnChunk, l, a));
        break;
      case Stage::Dispatch:
        n.push_back(at(Stage::Route, l, c));
        break;
      case Stage::TpExpertsGather:
        n.push_back(at(Stage::Dispatch, l, c));
        break;
      case Stage::Experts:
        n.push_back(at(etp_ && sp_ ? Stage::TpExpertsGather : Stage::Dispatch, l, c));
        break;
      case Stage::TpExpertsReduce:
        n.push_back(at(Stage::Experts, l, c));
        break;
      case Stage::Combine:
        n.push_back(at(etp_ ? Stage::TpExpertsReduce : Stage::Experts, l, c));
        break;
      case Stage::Finish:
        n.push_back(at(Stage::Combine, l, c));
        break;
      case Stage::ParamGather:
        break;  // the optimizer's update, before the pass
      default:
        break;  // refused before (not a forward stage)
    }
  }

  void backward_needs(const StageTask& t, std::vector<int>& n) const {
    const int l = t.layer, c = t.chunk;
    switch (t.stage) {
      case Stage::FinishBwd:
        if (l + 1 < L_) {
          const Stage upper =
              tp_ ? Stage::TpAttnReduceBwd : (model_ ? Stage::QkvChunkBwd : Stage::AttnFinishBwd);
          if (!model_)
            n.push_back(at(upper, l + 1, -1));
          else
            for (int a = 0; a < A_; ++a)
              if (attn_moe(a, c)) n.push_back(at(upper, l + 1, a));
        }
        break;
      case Stage::CombineBwd:
        n.push_back(at(Stage::FinishBwd, l, c));
        break;
      case Stage::TpExpertsGatherBwd:
        n.push_back(at(Stage::CombineBwd, l, c));
        break;
      case Stage::ExpertsBwd:
        n.push_back(at(etp_ && sp_ ? Stage::TpExpertsGatherBwd : Stage::CombineBwd, l, c));
        break;
      case Stage::TpExpertsReduceBwd:
        n.push_back(at(Stage::ExpertsBwd, l, c));
        break;
      case Stage::DispatchBwd:
        n.push_back(at(etp_ ? Stage::TpExpertsReduceBwd : Stage::ExpertsBwd, l, c));
        break;
      case Stage::RouteBwd:
        n.push_back(at(Stage::DispatchBwd, l, c));
        // it releases the chunk's context, which the delayed weight gradients read
        if (pass_.delay_wgrad) n.push_back(at(Stage::ExpertsWgrad, l, c));
        break;
      case Stage::ExpertsWgrad:
        n.push_back(at(Stage::ExpertsBwd, l, c));
        break;
      case Stage::TpAttnGatherBwd:
        for (int m = 0; m < M_; ++m)
          if (attn_moe(c, m)) n.push_back(at(Stage::RouteBwd, l, m));
        break;
      case Stage::AttnChunkBwd:
        for (int m = 0; m < M_; ++m)
          if (attn_moe(c, m)) n.push_back(at(Stage::RouteBwd, l, m));
        if (sp_) n.push_back(at(Stage::TpAttnGatherBwd, l, c));
        break;
      case Stage::QkvChunkBwd:
        for (int a = c; a < A_; ++a) n.push_back(at(Stage::AttnChunkBwd, l, a));
        break;
      case Stage::AttnFinishBwd:
        for (int a = 0; a < A_; ++a) n.push_back(at(Stage::AttnChunkBwd, l, a));
        break;
      case Stage::TpAttnReduceBwd:
        n.push_back(model_ ? at(Stage::QkvChunkBwd, l, c) : at(Stage::AttnFinishBwd, l, -1));
        break;
      case Stage::GradReduce:
        grad_reduce_needs(l, n);
        break;
      default:
        break;  // refused before (not a backward stage)
    }
  }

  void grad_reduce_needs(int l, std::vector<int>& n) const {
    for (int m = 0; m < M_; ++m) {
      n.push_back(at(Stage::ExpertsBwd, l, m));
      n.push_back(at(Stage::RouteBwd, l, m));
      if (pass_.delay_wgrad) n.push_back(at(Stage::ExpertsWgrad, l, m));
    }
    for (int a = 0; a < A_; ++a) {
      n.push_back(at(Stage::AttnChunkBwd, l, a));
      if (model_) n.push_back(at(Stage::QkvChunkBwd, l, a));
    }
    if (!model_) n.push_back(at(Stage::AttnFinishBwd, l, -1));
  }
};

}  // namespace

void check_task_list(const std::vector<StageTask>& tasks, const ChunkPlan& plan, const PassShape& pass,
                     bool backward) {
  plan.validate();
  pass.validate();
  const int L = static_cast<int>(pass.num_layers), A = static_cast<int>(plan.attention.size()) - 1,
            M = static_cast<int>(plan.moe.size()) - 1;
  const std::vector<std::vector<bool>> before = ordering(tasks, L);
  const std::vector<Stage> stages = expected_stages(pass, backward);
  auto whole = [&pass](Stage s) { return is_whole_sequence_stage(s, pass.scope); };
  auto chunks_of = [&](Stage s) { return is_attention_stage(s) ? A : M; };
  // Where each (stage, block, chunk) sits; each must appear exactly once.
  std::map<int64_t, int> where;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const StageTask& t = tasks[i];
    AMPIPE_CHECK(std::find(stages.begin(), stages.end(), t.stage) != stages.end())
        << "task " << i << " (" << task_label(t) << ") does not belong in a "
        << (backward ? "backward" : "forward") << " list of " << pipeline_scope_name(pass.scope) << " scope";
    AMPIPE_CHECK(whole(t.stage) ? t.chunk == -1 : t.chunk >= 0 && t.chunk < chunks_of(t.stage))
        << "task " << i << " (" << task_label(t) << ") names a chunk outside the plan";
    AMPIPE_CHECK(where.emplace(Rule::key(t.stage, t.layer, t.chunk), static_cast<int>(i)).second)
        << "task " << i << " (" << task_label(t) << ") appears twice";
  }
  for (Stage s : stages)
    for (int l = 0; l < L; ++l)
      for (int c = whole(s) ? -1 : 0; c < (whole(s) ? 0 : chunks_of(s)); ++c)
        AMPIPE_CHECK(where.count(Rule::key(s, l, c)))
            << "the list has no " << stage_name(s) << (c >= 0 ? " c" + std::to_string(c) : std::string())
            << " of block " << l;
  const Rule rule(plan, pass, where);
  for (size_t i = 0; i < tasks.size(); ++i)
    for (int j : rule.needs(tasks[i], backward))
      AMPIPE_CHECK(before[i][j]) << "task " << i << " (" << task_label(tasks[i])
                                 << ") may run before its input, task " << j << " (" << task_label(tasks[j])
                                 << ")";
}

}  // namespace ampipe
