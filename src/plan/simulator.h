// Discrete-event simulation of a block's task list (pipeline/task_list.h) on two in-order streams,
// compute and comm, with the list's event edges: what StreamedBlock executes, priced by the cost
// model (plan/cost_model.h) instead of run.
//
// A task starts when its stream has finished every earlier task of that stream (list order) and
// every task in its `waits` has ended. Ranks are symmetric (every all-to-all peer runs the same list
// with the same costs), so one rank is simulated. Two slowdowns >= 1 model streams that share the
// rank's cores: while the comm stream is busy, compute tasks progress at 1 / overlap_slowdown of
// their rate; while the compute stream is busy, comm tasks progress at 1 / comm_overlap_slowdown of
// theirs. Both rates change exactly when either stream starts or ends a task.
#pragma once

#include <string>
#include <vector>

#include "pipeline/schedule.h"
#include "pipeline/task_list.h"
#include "plan/cost_model.h"

namespace ampipe {

class TraceRecorder;

struct Simulation {
  double makespan = 0;             // seconds from the first start (0) to the last end
  double compute_busy = 0;         // seconds the compute stream runs a task (slowed time included)
  double comm_busy = 0;            // seconds the comm stream runs a task
  std::vector<double> start, end;  // per task, seconds
};

// seconds[i] is task i's time when it runs alone. Throws ampipe::Error if the sizes differ, a time
// is negative or not finite, a slowdown is < 1 or not finite, or a task waits for one that is not
// earlier in the list (such a list could deadlock).
Simulation simulate(const std::vector<StageTask>& tasks, const std::vector<double>& seconds,
                    double overlap_slowdown = 1.0, double comm_overlap_slowdown = 1.0);

struct BlockPrediction {
  double forward = 0, backward = 0, total = 0;  // seconds; total = forward + backward
  double compute_busy = 0, comm_busy = 0;       // summed over forward and backward
};

// The predicted forward + backward time of one block under `schedule` and `order`: the task lists
// of schedule.plan(shape.seq_len), priced by task_seconds, simulated with hw.overlap_slowdown and
// hw.comm_overlap_slowdown;
// backward starts when forward has ended (the host waits between them). If `trace` is given, the
// predicted timeline is added to it (tracks "compute" and "comm" of `rank`; forward from
// origin_us, backward after it).
BlockPrediction predict_block(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                              const HardwareProfile& hw, TraceRecorder* trace = nullptr, int rank = 0,
                              double origin_us = 0);

// Adds one slice per task of a simulated list ("attention c2" on "compute", ...) starting at
// origin_us + start * 1e6, with the predicted milliseconds as an argument.
void trace_simulation(TraceRecorder& trace, const std::vector<StageTask>& tasks, const Simulation& simulation,
                      int rank = 0, double origin_us = 0);

}  // namespace ampipe
