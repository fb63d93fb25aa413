// `ampipe bench`: one step (forward + backward) of L transformer blocks, timed over a grid of
// cases (docs/BENCHMARKS.md, "What a block benchmark reports").
//
// Every model flag of `train` takes a comma-separated list (a grid axis); every schedule, pipe
// degree P, stage order and pipeline scope runs in the same invocation, so the ratios in one table
// come from one run. With L > 1 (--num-layers) the step is one task list over the L blocks
// (pipeline/task_list.h) in block scope (drained between blocks) or model scope (chunks flow
// across blocks as a wavefront). A step is --micro-batches M micro-batches, each forward then its
// backward, or paired (--overlap-moe-expert-parallel-comm: F0, B(m) merged with F(m+1), B(M-1)),
// optionally with delayed expert weight gradients (--delay-wgrad-compute, paired cases only).
// Per case: the median step time over ranks (the slowest rank of each repeat), the speedup over
// `sequential` of the same model shape, L and pairing, for model scope the speedup over the
// block-scope case of the same schedule, for a paired case the speedup over its unpaired twin, the
// step bound max(sum of compute-stream stage times, sum of comm-stream stage times) over the whole
// step from the stage timings of the same repeats, and efficiency = bound / time. Output: a table
// on stdout (rank 0), one progress line per case on stderr, JSON Lines (--json-out) and a Chrome
// trace of every case's last repeat (--trace).
//
// `sequential` runs as the ampipe schedule with P = 1 on the two streams: the same math as the
// sequential block, with its stages on the compute and comm streams so they can be timed. With one
// chunk (sequential, or P = 1) the two scopes are the same schedule, so it runs in block scope only.
#pragma once

#include <cstdint>
#include <string>

#include "cli/grid.h"
#include "train/layout.h"

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
  std::string num_layers = "1";          // blocks per step L (list)
  std::string pipeline_scopes;           // block, model (list); empty: block, and model too where L > 1
  int64_t micro_batches = 1;             // M micro-batches per timed step
  // Boolean list axes (false, true): pair B(m) with F(m+1); delay the experts' weight gradients.
  std::string overlap_moe_expert_parallel_comm = "false";
  std::string delay_wgrad_compute = "false";
  int64_t warmup = 1;
  int64_t repeats = 5;
  int threads = 1;
  std::string device = "cpu";  // --device: cpu or cuda (train/trainer.h parse_device)
  std::string distributed_backend;  // --distributed-backend: "" (default), nccl or mpi
  bool bf16 = false;                // --bf16: mixed precision (docs/MODEL.md "Precision")
  ParallelSizes tensor_parallel;    // cli/parallel_flags.h: T, --sequence-parallel, ETP
  int64_t expert_parallel = 0;      // --expert-model-parallel-size EP; 0: make_layout's default
  std::string link;  // empty: $AMPIPE_LINK, else "unshaped"
  std::string hardware;  // profile for `auto`, predictions and paired merges; empty: calibrate when needed
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
