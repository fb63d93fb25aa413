// `ampipe bench`: one transformer block, forward + backward, timed over a grid of cases
// (docs/BENCHMARKS.md, "What a block benchmark reports").
//
// Every model flag of `train` takes a comma-separated list (a grid axis); every schedule, pipe
// degree P and stage order runs in the same invocation, so the ratios in one table come from one
// run. Per case: the median forward+backward time over ranks (the slowest rank of each repeat),
// the speedup over `sequential` of the same model shape, the overlap bound
// max(sum of compute-stream stage times, sum of comm-stream stage times) from the stage timings of
// the same repeats, and efficiency = bound / time. Output: a table on stdout (rank 0), one progress
// line per case on stderr, JSON Lines (--json-out) and a Chrome trace of every case's last repeat
// (--trace).
//
// `sequential` runs as the ampipe schedule with P = 1 on the two streams: the same math as the
// sequential block, with its stages on the compute and comm streams so they can be timed.
#pragma once

#include <cstdint>
#include <string>

#include "cli/grid.h"

namespace CLI {
class App;
}

namespace ampipe {

class Communicator;

struct BenchOptions {
  GridFlags grid;  // model-shape axes (comma-separated lists)
  double capacity_factor = 0.0;
  int64_t micro_batch_size = 1;
  std::string schedules = "sequential,moe-pipe,ampipe";
  std::string pipe_degrees = "1,2,4,8";
  std::string stage_orders = "stage-major,interleaved";
  std::string chunk_boundaries;  // explicit ampipe boundaries (replace the P list for ampipe)
  std::string chunk_policies = "equal";  // ampipe attention-side policies: equal, balanced
  std::string moe_pipe_degrees = "0";    // ampipe MoE-side pipe degrees (0: the attention chunks)
  int64_t warmup = 1;
  int64_t repeats = 5;
  int threads = 1;
  std::string link;  // empty: $AMPIPE_LINK, else "unshaped"
  std::string hardware;  // profile for `auto` and predictions; empty: calibrate when needed
  std::string json_out;
  std::string trace;
  uint64_t seed = 1;
  bool predict_only = false;  // with `hardware`: price every case, run nothing
};

// Registers the `bench` subcommand with its flags bound to `options` (which must outlive parsing);
// returns it (check ->parsed()).
CLI::App* add_bench_command(CLI::App& app, BenchOptions& options);

// Runs the grid (collective over `world`). Throws ampipe::Error naming a bad flag value.
int run_bench(const BenchOptions& options, Communicator& world);

}  // namespace ampipe
