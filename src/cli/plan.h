// `ampipe plan`: the planner from the command line (plan/).
//
//   ampipe plan --hardware PROFILE --ranks R [model flags as lists]
//       prints, for every model shape and expert-parallel size, the predicted time of a pass
//       (forward + backward) over --num-layers blocks (default 1) of every schedule and pipe degree
//       (each at its best chunk policy, MoE side and stage order; with more than one block, in
//       each pipeline scope), the planner's choice and its predicted speedup over sequential and
//       over the best moe-pipe; --overlap-grad-reduce adds a gradient all-reduce per block;
//       --tensor-model-parallel-size, --sequence-parallel and --expert-tensor-parallel-size price
//       tensor parallelism (its collectives' seconds and share of the choice are reported);
//       --json-out writes one JSON object per shape.
//   ampipe plan --calibrate --out FILE
//       measures this machine (run it under mpirun, and under scripts/netem.sh for a shaped
//       link, to measure the all-to-all) and writes a profile.
#pragma once

#include <string>

#include "cli/grid.h"
#include "plan/profile.h"

namespace CLI {
class App;
}

namespace ampipe {

class Communicator;

struct PlanOptions {
  GridFlags grid;
  std::string hardware;
  std::string ranks = "2";  // expert-parallel group sizes (list)
  int64_t micro_batch_size = 1;
  std::string pipe_degrees = "2,4,8,16";
  double min_gain = 0.03;
  int64_t min_chunk_positions = 128;
  int64_t num_layers = 1;            // blocks of the pass priced (L)
  bool overlap_grad_reduce = false;  // a GradReduce task per block in the backward
  bool use_distributed_optimizer = false;  // GradReduce as a reduce-scatter
  bool overlap_param_gather = false;       // a ParamGather task per block in the forward
  // --micro-batches M: also price a step of M micro-batches, unpaired and paired
  // (--overlap-moe-expert-parallel-comm), and say which the trainer's auto would take.
  int64_t micro_batches = 1;
  bool delay_wgrad_compute = false;  // ExpertsWgrad tasks in every backward of the step
  bool summary = false;
  bool bf16 = false;  // --bf16: price the mixed-precision model (bf16 all-to-alls and GEMMs)
  // Tensor parallelism (Megatron-LM's flags; priced only, the model does not run it yet): T, sequence
  // parallelism (only with T > 1), expert tensor parallelism ETP. Refused before any work where T does
  // not divide the heads or query groups, ETP the FFN width, or the layout does not fit the profile.
  int64_t tensor_model_parallel_size = 1;
  bool sequence_parallel = false;
  int64_t expert_tensor_parallel_size = 1;
  std::string json_out;
  std::string trace;  // predicted timeline of the choice for the first shape
  // --calibrate
  bool calibrate = false;
  bool quick = false;
  std::string out;
  std::string name = "calibrated";
  int threads = 1;
};

CLI::App* add_plan_command(CLI::App& app, PlanOptions& options);
int run_plan(const PlanOptions& options, Communicator& world);

}  // namespace ampipe
