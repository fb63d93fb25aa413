#include "pipeline/paired_tasks.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ampipe {

bool is_backward_stage(Stage stage) {
  switch (stage) {
    case Stage::FinishBwd:
    case Stage::CombineBwd:
    case Stage::ExpertsBwd:
    case Stage::DispatchBwd:
    case Stage::RouteBwd:
    case Stage::AttnChunkBwd:
    case Stage::AttnFinishBwd:
    case Stage::QkvChunkBwd:
    case Stage::GradReduce:
    case Stage::ExpertsWgrad:
    case Stage::TpAttnGatherBwd:
    case Stage::TpAttnReduceBwd:
    case Stage::TpExpertsGatherBwd:
    case Stage::TpExpertsReduceBwd:
      return true;
    default:
      return false;
  }
}

namespace {

int stream_index(const StageTask& t) { return t.stream() == StreamRole::Compute ? 0 : 1; }

// One pass being merged: its tasks, their seconds, what is placed so far.
struct PassQueue {
  const std::vector<StageTask>& tasks;
  const std::vector<double>& seconds;
  std::vector<int> on_stream[2];  // task indices of each stream, in list order
  size_t next[2] = {0, 0};
  std::vector<int> placed;   // index in the merged list, -1 before
  std::vector<double> end;   // predicted end, once placed
  std::vector<double> tail;  // seconds from its start to the end of the pass (longest path)

  PassQueue(const std::vector<StageTask>& t, const std::vector<double>& s, const char* what)
      : tasks(t), seconds(s), placed(t.size(), -1), end(t.size(), 0), tail(t.size(), 0) {
    AMPIPE_CHECK(t.size() == s.size())
        << "paired_tasks: " << t.size() << " " << what << " tasks but " << s.size() << " times";
    for (size_t i = 0; i < t.size(); ++i) {
      AMPIPE_CHECK(std::isfinite(s[i]) && s[i] >= 0)
          << "paired_tasks: " << what << " task " << i << " has time " << s[i]
          << " (needs a finite value >= 0)";
      for (int w : t[i].waits)
        AMPIPE_CHECK(w >= 0 && static_cast<size_t>(w) < i)
            << "paired_tasks: " << what << " task " << i << " waits for task " << w << ", not an earlier one";
      on_stream[stream_index(t[i])].push_back(static_cast<int>(i));
    }
    // The longest path to the end of the pass: successors are the next task of the same stream and
    // every task that waits for this one, all later in the list.
    std::vector<int> next_on_stream(t.size(), -1);
    for (const std::vector<int>& order : on_stream)
      for (size_t k = 0; k + 1 < order.size(); ++k) next_on_stream[order[k]] = order[k + 1];
    std::vector<double> after(t.size(), 0);  // the longest successor tail
    for (size_t i = t.size(); i-- > 0;) {
      if (next_on_stream[i] >= 0) after[i] = std::max(after[i], tail[next_on_stream[i]]);
      tail[i] = s[i] + after[i];
      for (int w : t[i].waits) after[w] = std::max(after[w], tail[i]);
    }
  }
  // The next task of stream `s`, or -1.
  int head(int s) const { return next[s] < on_stream[s].size() ? on_stream[s][next[s]] : -1; }
  bool ready(int i) const {
    return std::all_of(tasks[i].waits.begin(), tasks[i].waits.end(), [&](int w) { return placed[w] >= 0; });
  }
};

}  // namespace

std::vector<StageTask> paired_tasks(const std::vector<StageTask>& backward,
                                    const std::vector<double>& backward_seconds,
                                    const std::vector<StageTask>& forward,
                                    const std::vector<double>& forward_seconds) {
  PassQueue passes[2] = {PassQueue(backward, backward_seconds, "backward"),
                         PassQueue(forward, forward_seconds, "forward")};
  std::vector<StageTask> merged;
  merged.reserve(backward.size() + forward.size());
  double stream_free[2] = {0, 0};
  while (merged.size() < backward.size() + forward.size()) {
    int best_pass = -1, best_task = -1;
    double best_start = 0;
    for (int p = 0; p < 2; ++p)
      for (int s = 0; s < 2; ++s) {
        const PassQueue& q = passes[p];
        const int i = q.head(s);
        if (i < 0 || !q.ready(i)) continue;
        double start = stream_free[s];
        for (int w : q.tasks[i].waits) start = std::max(start, q.end[w]);
        const bool better = best_pass < 0 || start < best_start ||
                            (start == best_start && q.tail[i] > passes[best_pass].tail[best_task]);
        if (better) best_pass = p, best_task = i, best_start = start;
      }
    // Each pass alone is a valid list, so some head is always ready.
    AMPIPE_CHECK(best_pass >= 0) << "paired_tasks: no task can go next (a pass waits for a later task)";
    PassQueue& q = passes[best_pass];
    StageTask t = q.tasks[best_task];
    for (int& w : t.waits) w = q.placed[w];
    const int s = stream_index(t);
    q.placed[best_task] = static_cast<int>(merged.size());
    q.end[best_task] = best_start + q.seconds[best_task];
    stream_free[s] = q.end[best_task];
    ++q.next[s];
    merged.push_back(std::move(t));
  }
  return merged;
}

void check_paired_task_list(const std::vector<StageTask>& tasks, const ChunkPlan& plan,
                            const PassShape& backward_pass, const PassShape& forward_pass) {
  const size_t n = tasks.size();
  // before[i][j]: task j is ordered before task i on the two streams (transitively).
  std::vector<std::vector<bool>> before(n, std::vector<bool>(n, false));
  int last_on[2] = {-1, -1};
  for (size_t i = 0; i < n; ++i) {
    const StageTask& t = tasks[i];
    auto inherit = [&](int j) {
      before[i][j] = true;
      for (size_t k = 0; k < n; ++k)
        if (before[j][k]) before[i][k] = true;
    };
    const int s = stream_index(t);
    if (last_on[s] >= 0) inherit(last_on[s]);
    for (int w : t.waits) {
      AMPIPE_CHECK(w >= 0 && static_cast<size_t>(w) < i && tasks[w].stream() != t.stream())
          << "paired task " << i << " (" << stage_name(t.stage) << " of block " << t.layer
          << ") waits for task " << w << ", which is not an earlier task of the other stream";
      inherit(w);
    }
    last_on[s] = static_cast<int>(i);
  }
  // Each pass alone, its waits being every earlier task of its own pass on the other stream that the
  // merged list orders before it (directly or through the other pass).
  for (const bool backward : {true, false}) {
    std::vector<int> index(n, -1);
    std::vector<StageTask> pass;
    for (size_t i = 0; i < n; ++i) {
      if (is_backward_stage(tasks[i].stage) != backward) continue;
      StageTask t = tasks[i];
      t.waits.clear();
      for (size_t j = 0; j < i; ++j)
        if (index[j] >= 0 && before[i][j] && tasks[j].stream() != t.stream()) t.waits.push_back(index[j]);
      index[i] = static_cast<int>(pass.size());
      pass.push_back(std::move(t));
    }
    check_task_list(pass, plan, backward ? backward_pass : forward_pass, backward);
  }
}

}  // namespace ampipe
