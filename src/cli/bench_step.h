// One timed step of `ampipe bench` (cli/bench.h), inside the command: M micro-batches of the job's
// blocks on one case's executor, unpaired (F0 B0 F1 B1 ... each forward then its backward) or
// paired (--overlap-moe-expert-parallel-comm: F0, then B(m) merged with F(m+1) as one task list,
// then B(M-1)); and the sums over the step's trace slices that the overlap bounds are made of.
// cli/bench_cases.cpp reduces them over the ranks and reports them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "core/trace.h"
#include "pipeline/task_list.h"
#include "plan/cost_model.h"
#include "plan/profile.h"

namespace ampipe {

class StandaloneBlock;
class StreamedBlock;
class TimedCommunicator;

// Stages are indexed by their enum value (pipeline/task_list.h: AttnBegin first, TpExpertsReduceBwd last).
constexpr int kNumStages = static_cast<int>(Stage::TpExpertsReduceBwd) + 1;

// The stage a trace slice of StreamedBlock belongs to, from the label it gives each task: the
// stage's name, then " c<chunk>" for chunked stages, then " L<block>" in a pass over several blocks
// ("attention c2", "ln1+qkv", "ln1+qkv chunk c0 L3", "grad reduce L1"); -1 for anything else.
int slice_stage(const std::string& name);

// The job's blocks and the inputs of every micro-batch (each micro-batch reads the same x and dy,
// with its own contexts and routing statistics).
struct StepInputs {
  StandaloneBlock& blocks;
  Tensor x, dy;
  int64_t batch = 1, seq_len = 0, num_experts = 1;
  int64_t micro_batches = 1;        // M
  TimedCommunicator& expert_group;  // the blocks' expert group, counting the all-to-all bytes
};

// Sets a case's executor up: delayed weight gradients (--delay-wgrad-compute) and, for a paired
// case, the merge's task seconds: the cost model (stage_seconds) with `hw` and a copy of `shape`
// whose delay_wgrad is the executor's, the same on every rank. A paired case needs a profile.
void configure_step_executor(StreamedBlock& exec, bool paired, bool delay_wgrad, const BlockShape& shape,
                             const std::optional<HardwareProfile>& hw);

// What one step took on this rank.
struct StepTiming {
  double ms = 0;                     // wall time of the whole step (M micro-batches)
  double start_us = 0, end_us = 0;   // the step on trace_clock_us()
  std::vector<double> list_ends_us;  // trace_clock_us() as each of the step's task lists returned
  // Host cache growth over the first forward (the step's F0, alone in both kinds of step).
  int64_t forward_held_bytes = 0;
};

// Runs one step of in.micro_batches micro-batches (gradients accumulate; zeroing them is the
// caller's). A paired step needs M >= 2. On the GPU it synchronizes before the clock stops.
StepTiming run_step(const StreamedBlock& exec, bool paired, StepInputs& in, Device device);

// The sums over one step's slices (milliseconds, this rank).
struct StepSums {
  double compute_ms = 0, comm_ms = 0;  // every slice of each stream: the step bound's two sums
  // Per task list of the step (slices split at list_ends_us), max(compute, comm), summed: the
  // per-pass bound of an unpaired step (each pass overlapped in itself, the host waiting between).
  double pass_bound_ms = 0;
  std::vector<float> stage_ms;  // per stage (kNumStages): every slice of it
};
StepSums sum_step_slices(const std::vector<TraceSlice>& slices, const std::vector<double>& list_ends_us);

}  // namespace ampipe
