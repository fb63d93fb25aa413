#include "plan/simulator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"
#include "core/trace.h"
#include "pipeline/paired_tasks.h"

namespace ampipe {

Simulation simulate(const std::vector<StageTask>& tasks, const std::vector<double>& seconds,
                    double overlap_slowdown, double comm_overlap_slowdown) {
  AMPIPE_CHECK(tasks.size() == seconds.size())
      << "simulate: " << tasks.size() << " tasks but " << seconds.size() << " task times";
  AMPIPE_CHECK(std::isfinite(overlap_slowdown) && overlap_slowdown >= 1)
      << "simulate: overlap_slowdown must be >= 1, got " << overlap_slowdown;
  AMPIPE_CHECK(std::isfinite(comm_overlap_slowdown) && comm_overlap_slowdown >= 1)
      << "simulate: comm_overlap_slowdown must be >= 1, got " << comm_overlap_slowdown;
  const size_t n = tasks.size();
  // Per stream (0 compute, 1 comm), its tasks in list order.
  std::vector<size_t> queue[2];
  for (size_t i = 0; i < n; ++i) {
    AMPIPE_CHECK(std::isfinite(seconds[i]) && seconds[i] >= 0)
        << "simulate: task " << i << " (" << stage_name(tasks[i].stage) << ") has time " << seconds[i]
        << "; times must be finite and >= 0";
    for (int w : tasks[i].waits)
      AMPIPE_CHECK(w >= 0 && static_cast<size_t>(w) < i)
          << "simulate: task " << i << " (" << stage_name(tasks[i].stage) << ") waits for task " << w
          << ", which is not an earlier task of the list";
    queue[tasks[i].stream() == StreamRole::Compute ? 0 : 1].push_back(i);
  }

  // Every task waits only for earlier tasks, so the earliest unfinished task of the list can always
  // start once the running ones end: the loop below cannot stall.
  Simulation sim;
  sim.start.assign(n, 0);
  sim.end.assign(n, 0);
  std::vector<bool> ended(n, false);
  size_t next[2] = {0, 0};
  long running[2] = {-1, -1};
  double remaining[2] = {0, 0};  // per stream: unslowed seconds of work left
  double now = 0;
  size_t done = 0;
  auto ready = [&](size_t i) {
    return std::all_of(tasks[i].waits.begin(), tasks[i].waits.end(), [&](int w) { return ended[w]; });
  };
  while (done < n) {
    // Start what can start now; end zero-length tasks at once (they may free others).
    bool changed = true;
    while (changed) {
      changed = false;
      for (int s = 0; s < 2; ++s) {
        if (running[s] >= 0 || next[s] == queue[s].size() || !ready(queue[s][next[s]])) continue;
        const size_t i = queue[s][next[s]++];
        running[s] = static_cast<long>(i);
        remaining[s] = seconds[i];
        sim.start[i] = now;
        changed = true;
      }
      for (int s = 0; s < 2; ++s)
        if (running[s] >= 0 && remaining[s] == 0) {
          sim.end[running[s]] = now;
          ended[running[s]] = true;
          running[s] = -1;
          ++done;
          changed = true;
        }
    }
    if (done == n) break;
    AMPIPE_CHECK(running[0] >= 0 || running[1] >= 0) << "simulate: no task can start (internal error)";

    // Advance to the next end of a running task. Each stream progresses (in seconds of unslowed
    // work per second) at a rate set by whether the other stream is busy; both rates hold until
    // the next end.
    const bool busy[2] = {running[0] >= 0, running[1] >= 0};
    const double rate[2] = {busy[1] ? 1.0 / overlap_slowdown : 1.0,
                            busy[0] ? 1.0 / comm_overlap_slowdown : 1.0};
    const double inf = std::numeric_limits<double>::infinity();
    double to_end[2];
    for (int s = 0; s < 2; ++s) to_end[s] = busy[s] ? remaining[s] / rate[s] : inf;
    const double step = std::min(to_end[0], to_end[1]);
    for (int s = 0; s < 2; ++s) {
      if (!busy[s]) continue;
      remaining[s] = step == to_end[s] ? 0 : std::max(0.0, remaining[s] - step * rate[s]);
      (s == 0 ? sim.compute_busy : sim.comm_busy) += step;
    }
    now += step;
  }
  for (size_t i = 0; i < n; ++i) sim.makespan = std::max(sim.makespan, sim.end[i]);
  return sim;
}

void trace_simulation(TraceRecorder& trace, const std::vector<StageTask>& tasks, const Simulation& simulation,
                      int rank, double origin_us) {
  AMPIPE_CHECK(simulation.start.size() == tasks.size() && simulation.end.size() == tasks.size())
      << "trace_simulation: the simulation has " << simulation.start.size() << " tasks, the list "
      << tasks.size();
  trace.declare_track(rank, "compute");
  trace.declare_track(rank, "comm");
  const bool several_blocks =
      std::any_of(tasks.begin(), tasks.end(), [](const StageTask& t) { return t.layer != 0; });
  for (size_t i = 0; i < tasks.size(); ++i) {
    TraceSlice slice;
    slice.rank = rank;
    slice.track = tasks[i].stream() == StreamRole::Compute ? "compute" : "comm";
    slice.name = stage_name(tasks[i].stage);
    if (tasks[i].chunk >= 0) slice.name += " c" + std::to_string(tasks[i].chunk);
    if (several_blocks) slice.name += " L" + std::to_string(tasks[i].layer);
    slice.start_us = origin_us + simulation.start[i] * 1e6;
    slice.duration_us = (simulation.end[i] - simulation.start[i]) * 1e6;
    slice.args = {{"predicted_ms", (simulation.end[i] - simulation.start[i]) * 1e3},
                  {"block", static_cast<int64_t>(tasks[i].layer)}};
    trace.add_slice(std::move(slice));
  }
}

PassShape with_tensor_parallel(const PassShape& pass, const BlockShape& shape) {
  PassShape out = pass;
  out.tensor_parallel = shape.tensor_parallel;
  out.sequence_parallel = shape.sequence_parallel;
  out.expert_tensor_parallel = shape.expert_tensor_parallel;
  return out;
}

PassPrediction predict_pass(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                            const HardwareProfile& hw, const PassShape& pass, TraceRecorder* trace, int rank,
                            double origin_us) {
  shape.validate();
  AMPIPE_CHECK(std::isfinite(hw.overlap_slowdown) && hw.overlap_slowdown >= 1)
      << "hardware profile '" << hw.name << "': overlap_slowdown must be >= 1, got " << hw.overlap_slowdown;
  AMPIPE_CHECK(std::isfinite(hw.comm_overlap_slowdown) && hw.comm_overlap_slowdown >= 1)
      << "hardware profile '" << hw.name << "': comm_overlap_slowdown must be >= 1, got "
      << hw.comm_overlap_slowdown;
  const ChunkPlan plan = schedule.plan(shape.seq_len);
  BlockShape priced = shape;
  priced.delay_wgrad = pass.delay_wgrad;
  const PassShape lists = with_tensor_parallel(pass, shape);
  const std::vector<StageTask> fwd = forward_tasks(plan, order, lists),
                               bwd = backward_tasks(plan, order, lists);
  const std::vector<double> fwd_seconds = task_seconds(fwd, plan, priced, hw),
                            bwd_seconds = task_seconds(bwd, plan, priced, hw);
  const Simulation f = simulate(fwd, fwd_seconds, hw.overlap_slowdown, hw.comm_overlap_slowdown);
  const Simulation b = simulate(bwd, bwd_seconds, hw.overlap_slowdown, hw.comm_overlap_slowdown);
  if (trace) {
    trace_simulation(*trace, fwd, f, rank, origin_us);
    trace_simulation(*trace, bwd, b, rank, origin_us + f.makespan * 1e6);
  }
  PassPrediction p;
  p.forward = f.makespan;
  p.backward = b.makespan;
  p.total = f.makespan + b.makespan;
  p.forward_compute_busy = f.compute_busy;
  p.forward_comm_busy = f.comm_busy;
  p.backward_compute_busy = b.compute_busy;
  p.backward_comm_busy = b.comm_busy;
  p.compute_busy = f.compute_busy + b.compute_busy;
  p.comm_busy = f.comm_busy + b.comm_busy;
  p.overlap_bound = std::max(f.compute_busy, f.comm_busy) + std::max(b.compute_busy, b.comm_busy);
  for (size_t i = 0; i < fwd.size(); ++i)
    if (is_tensor_parallel_stage(fwd[i].stage)) p.tensor_parallel_seconds += fwd_seconds[i];
  for (size_t i = 0; i < bwd.size(); ++i)
    if (is_tensor_parallel_stage(bwd[i].stage)) p.tensor_parallel_seconds += bwd_seconds[i];
  return p;
}

StepPrediction predict_step(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                            const HardwareProfile& hw, const PassShape& pass, int64_t micro_batches, bool paired,
                            TraceRecorder* trace, int rank, double origin_us) {
  AMPIPE_CHECK(micro_batches >= 1) << "a step needs at least one micro-batch, got " << micro_batches;
  AMPIPE_CHECK(!paired || micro_batches >= 2)
      << "pairing micro-batches needs at least two a step, got " << micro_batches;
  shape.validate();
  BlockShape priced = shape;
  priced.delay_wgrad = pass.delay_wgrad;
  const ChunkPlan plan = schedule.plan(shape.seq_len);
  const PassShape tp_pass = with_tensor_parallel(pass, shape);
  PassShape first = tp_pass, middle = tp_pass, last = tp_pass;  // the step's first forward, last backward
  first.reduce_gradients = middle.reduce_gradients = middle.gather_params = last.gather_params = false;
  last.reduce_gradients = pass.reduce_gradients;
  first.gather_params = pass.gather_params;
  // The lists of the step, in order, each simulated on its own (the host waits between them).
  std::vector<std::vector<StageTask>> lists;
  auto seconds = [&](const std::vector<StageTask>& l) { return task_seconds(l, plan, priced, hw); };
  const int64_t A = micro_batches;
  lists.push_back(forward_tasks(plan, order, first));
  for (int64_t m = 0; m + 1 < A; ++m) {
    const std::vector<StageTask> bwd = backward_tasks(plan, order, middle);
    const std::vector<StageTask> fwd = forward_tasks(plan, order, middle);
    if (paired) {
      lists.push_back(paired_tasks(bwd, seconds(bwd), fwd, seconds(fwd)));
    } else {
      lists.push_back(bwd);
      lists.push_back(fwd);
    }
  }
  lists.push_back(backward_tasks(plan, order, last));
  StepPrediction p;
  double origin = origin_us;
  for (const std::vector<StageTask>& l : lists) {
    const Simulation sim = simulate(l, seconds(l), hw.overlap_slowdown, hw.comm_overlap_slowdown);
    if (trace) trace_simulation(*trace, l, sim, rank, origin);
    origin += sim.makespan * 1e6;
    p.total += sim.makespan;
    p.compute_busy += sim.compute_busy;
    p.comm_busy += sim.comm_busy;
  }
  p.step_bound = std::max(p.compute_busy, p.comm_busy);
  return p;
}

PairingPrediction predict_pairing(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                                  const HardwareProfile& hw, const PassShape& pass, int64_t micro_batches) {
  PairingPrediction p;
  p.unpaired = predict_step(schedule, order, shape, hw, pass, micro_batches, false);
  p.paired = predict_step(schedule, order, shape, hw, pass, micro_batches, true);
  p.pair = p.paired.total <= p.unpaired.total;
  return p;
}

BlockPrediction predict_block(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                              const HardwareProfile& hw, TraceRecorder* trace, int rank, double origin_us) {
  return predict_pass(schedule, order, shape, hw, PassShape{}, trace, rank, origin_us);
}

}  // namespace ampipe
