// The tensor-parallel flags (Megatron-LM's names), shared by every subcommand that runs a model
// (train, eval, sample, bench): --tensor-model-parallel-size, --sequence-parallel,
// --expert-tensor-parallel-size. They describe the folded layout of train/layout.h; `train` runs
// T > 1 without sequence parallelism, the others T = 1 only, and ETP = 1 everywhere, so more is
// refused before any work (`ampipe plan` has the same flags and prices it).
#pragma once

#include <cstdint>

#include "train/layout.h"

namespace CLI {
class App;
}

namespace ampipe {

class Communicator;

// Registers the three flags on `cmd`, bound to `sizes` (which must outlive parsing); `what` names
// what runs split in the help text ("the model trains"); `how_it_runs`: for a command that runs
// T > 1, a sentence of help saying how (else the help says T > 1 is refused).
void add_tensor_parallel_flags(CLI::App& cmd, ParallelSizes& sizes, const char* what,
                               const char* how_it_runs = nullptr);

// First thing a command does with the flags: refuses what it cannot run (train/layout.h
// require_runnable_sizes with `runs_tensor_parallel`: ampipe::Error naming the flag and value) and prints,
// for
// --sequence-parallel at T = 1, a one-line note on stderr of world rank 0 ("ampipe COMMAND: note:
// ..."; stderr, so eval's JSON line stays alone on stdout).
void check_tensor_parallel_flags(const ParallelSizes& sizes, Communicator& world, const char* command,
                                 bool runs_tensor_parallel = false);

}  // namespace ampipe
