// The cases of `ampipe bench` (cli/bench.h), inside the command: cli/bench.cpp reads the flags and
// lays out the grid as jobs (one model shape with L blocks, and the variants to run on it);
// cli/bench_cases.cpp runs each job's cases round after round and reports them (table rows, JSON
// Lines, trace slices).
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "cli/bench.h"
#include "cli/grid.h"
#include "core/device.h"
#include "core/trace.h"
#include "pipeline/schedule.h"
#include "pipeline/task_list.h"
#include "plan/profile.h"

namespace ampipe {

class Communicator;

// One point of the schedule axes, resolved for one model shape.
struct BenchVariant {
  BlockSchedule schedule;  // concrete: `auto` holds the planner's choice, balanced its weight
  StageOrder order = StageOrder::StageMajor;
  PipelineScope scope = PipelineScope::Block;  // one chunk (sequential, P = 1): block scope only
  bool planned = false;  // `auto`: the planner's choice (schedule, order, scope) for the shape and L
  std::string label;                           // "ampipe P=2 stage-major", "auto: ampipe P=4 ..."
  bool paired = false;                         // --overlap-moe-expert-parallel-comm: B(m) merged with F(m+1)
  bool delay_wgrad = false;                    // --delay-wgrad-compute (paired cases only)
};

// One model shape with L blocks and the variants timed on it.
struct BenchJob {
  GridShape shape;
  int64_t num_layers = 1;
  std::vector<BenchVariant> variants;
};

// What every case of one invocation shares.
struct BenchRun {
  BenchRun(const BenchOptions& o, Communicator& w) : options(o), world(w) {}
  const BenchOptions& options;
  Communicator& world;
  Device device = Device::CPU;           // where the blocks and their inputs live (--device)
  std::string link;                      // the link label
  std::string gemm_implementation;       // what runs the block's GEMMs (set by run_bench)
  std::optional<HardwareProfile> hw;     // the planner's profile, if any
  bool show_layers = false;              // an L column: some --num-layers is not 1
  bool show_scope = false;               // a scope column and the ratio over block scope
  bool show_micro_batches = false;       // an M column: --micro-batches is not 1
  bool show_paired = false;              // a pairing column and the ratio over the unpaired twin
  bool show_delay = false;               // a delayed-weight-gradient column
  std::ofstream json;                    // --json-out, open on rank 0 only
  TraceRecorder trace;                   // the last repeat of every case (--trace)
  size_t total_cases = 0, done_cases = 0;
  int64_t expert_parallel = 1;           // the current job's expert-parallel size (its layout's EP)

  void line(const std::string& text) const;  // rank 0: a line on stdout
};

// The table's header (rank 0).
void print_bench_table_header(const BenchRun& run);

// Builds the job's blocks and cases, times them round after round (--warmup untimed, --repeats
// timed; nothing with --predict-only) and reports every case: a table row, a progress line on
// stderr, a JSON object and, with --trace, the slices of its last repeat. Collective over the world.
void run_bench_job(BenchRun& run, const BenchJob& job);

}  // namespace ampipe
