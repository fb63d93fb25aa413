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

// The prediction of a whole pass (pipeline/task_list.h, PassShape): the forward list of its blocks,
// then (the host waits between them) the backward list. forward, backward: each list's makespan;
// total = forward + backward; the busy times are each stream's simulated busy seconds (slowed time
// included), per list and summed (compute_busy, comm_busy).
struct PassPrediction : BlockPrediction {
  double forward_compute_busy = 0, forward_comm_busy = 0;
  double backward_compute_busy = 0, backward_comm_busy = 0;
  // max(forward_compute_busy, forward_comm_busy) + max(backward_compute_busy, backward_comm_busy):
  // the total if each list overlapped its two streams perfectly (at the simulated busy times), so
  // overlap_bound <= total always; total / overlap_bound is how far the pass is from hiding the
  // shorter stream behind the longer one.
  double overlap_bound = 0;
  // Seconds of the tensor-parallel collectives' tasks (pipeline/task_list.h, TpAttnGather ..),
  // each priced alone, over both lists (0 without tensor parallelism): what TP adds to the comm
  // stream, hidden or not.
  double tensor_parallel_seconds = 0;
};

// `pass` with the tensor-parallel sizes of `shape` (BlockShape::tensor_parallel, ...): the lists
// predict_pass and predict_step build hold the TP collectives the shape prices.
PassShape with_tensor_parallel(const PassShape& pass, const BlockShape& shape);

// The predicted forward + backward time of a pass under `schedule` and `order`: the task lists
// forward_tasks / backward_tasks(schedule.plan(shape.seq_len), order, pass) (every block cut the
// same; GradReduce tasks when pass.reduce_gradients; the TP collectives of the shape's tensor-parallel
// sizes, whatever pass says of them, with_tensor_parallel), priced by task_seconds, simulated with
// hw.overlap_slowdown and hw.comm_overlap_slowdown; the backward starts when the forward has ended.
// If `trace` is given, the predicted timeline is added to it (tracks "compute" and "comm" of
// `rank`; forward from origin_us, backward after it). Throws ampipe::Error for a bad shape, profile
// or pass (num_layers < 1).
PassPrediction predict_pass(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                            const HardwareProfile& hw, const PassShape& pass, TraceRecorder* trace = nullptr,
                            int rank = 0, double origin_us = 0);

// A training step of `micro_batches` (>= 1) micro-batches, each a pass over pass.num_layers blocks
// as predict_pass prices it, run one after the other (the host waits between lists), or `paired`
// (--overlap-moe-expert-parallel-comm): the first forward alone, each backward merged with the next
// forward (pipeline/paired_tasks.h, by the same task_seconds the trainer's executor merges with),
// the last backward alone. pass.gather_params applies to the step's first forward,
// pass.reduce_gradients to its last backward, pass.delay_wgrad to every backward (and prices
// ExpertsBwd without the weight gradients, BlockShape::delay_wgrad). Pairing one micro-batch is
// refused (there is nothing to pair). With `trace`, the step's predicted timeline.
struct StepPrediction {
  double total = 0;                        // seconds of the step
  double compute_busy = 0, comm_busy = 0;  // simulated busy seconds of each stream over the step
  // max(compute_busy, comm_busy): the step if every list overlapped its streams with each other and
  // across the host's waits perfectly; total / step_bound is how far a step is from it.
  double step_bound = 0;
};
StepPrediction predict_step(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                            const HardwareProfile& hw, const PassShape& pass, int64_t micro_batches, bool paired,
                            TraceRecorder* trace = nullptr, int rank = 0, double origin_us = 0);

// A step of M >= 2 micro-batches predicted both ways, and --overlap-moe-expert-parallel-comm=auto's
// choice: pair unless the paired step is predicted slower. Ties pair: pairing changes no result, and
// it has never measured slower on this project's links (docs/RESULTS.md, "Paired micro-batches");
// its cost is memory, one micro-batch's activations.
struct PairingPrediction {
  StepPrediction unpaired, paired;
  bool pair = false;
};
PairingPrediction predict_pairing(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                                  const HardwareProfile& hw, const PassShape& pass, int64_t micro_batches);

// One block: predict_pass with the default PassShape (one block, block scope, no gradient
// reduction), its BlockPrediction fields.
BlockPrediction predict_block(const BlockSchedule& schedule, StageOrder order, const BlockShape& shape,
                              const HardwareProfile& hw, TraceRecorder* trace = nullptr, int rank = 0,
                              double origin_us = 0);

// Adds one slice per task of a simulated list ("attention c2" on "compute", ...) starting at
// origin_us + start * 1e6, with the predicted milliseconds and the task's block as arguments; in a
// list over several blocks the name ends with the block, as the pipeline's own trace does (" L1").
void trace_simulation(TraceRecorder& trace, const std::vector<StageTask>& tasks, const Simulation& simulation,
                      int rank = 0, double origin_us = 0);

}  // namespace ampipe
