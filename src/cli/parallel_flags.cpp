#include "cli/parallel_flags.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "comm/communicator.h"

namespace ampipe {

void add_tensor_parallel_flags(CLI::App& cmd, ParallelSizes& sizes, const char* what,
                               const char* how_it_runs) {
  const std::string runs = what;
  const std::string which =
      how_it_runs != nullptr
          ? std::string(" ") + how_it_runs
          : " This command runs only 1 today; more is refused before any work (ampipe train and bench run "
            "it, ampipe plan prices it)";
  cmd.add_option("--tensor-model-parallel-size", sizes.tensor,
                 "Tensor-parallel size T (Megatron-LM): " + runs +
                     " with attention's heads and query groups split over T consecutive ranks, the world "
                     "folded into T x DP (docs/ARCHITECTURE.md, \"Parallel layout\")." +
                     which)
      ->capture_default_str();
  cmd.add_flag(
      "--sequence-parallel", sizes.sequence_parallel,
      "With --tensor-model-parallel-size > 1 (Megatron-LM): the residual stream, norms, router and MoE "
      "layers on 1/T of each sequence's positions per rank (--seq-length divisible by T), all-gather and "
      "reduce-scatter around attention and the LM head instead of all-reduce; each rank routes its own "
      "tokens (docs/MODEL.md, \"Sequence parallelism\"); with --expert-tensor-parallel-size > 1 the experts "
      "gather their group's rows. At T = 1 accepted and ignored, with a one-line note (as Megatron-LM)");
  cmd.add_option(
         "--expert-tensor-parallel-size", sizes.expert_tensor,
         "Expert tensor-parallel size ETP (Megatron-Core's MoE parallel folding): each expert's FFN split "
         "over ETP consecutive ranks, the world folded into ETP x EP x EDP independently of T (default 1; "
         "Megatron-LM's default is T). Without --sequence-parallel ETP must divide T (the group lies inside "
         "a "
         "tensor group); the experts' all-reduces run as comm-stream tasks like the attention's")
      ->capture_default_str();
}

void check_tensor_parallel_flags(const ParallelSizes& sizes, Communicator& world, const char* command,
                                 bool runs_tensor_parallel) {
  require_runnable_sizes(sizes, runs_tensor_parallel);
  const std::string note = ignored_sequence_parallel_note(sizes);
  if (note.empty() || world.rank() != 0) return;
  std::fprintf(stderr, "ampipe %s: %s\n", command, note.c_str());
  std::fflush(stderr);
}

}  // namespace ampipe
