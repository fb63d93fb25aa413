// `ampipe train`: its flags (Megatron-LM's names where they mean the same) and the run.
//
//   ampipe train --num-layers 2 --hidden-size 64 ... --data-path data/kjv.txt --save runs/x
#pragma once

#include <string>

#include "cli/model_flags.h"
#include "cli/parallel_flags.h"
#include "train/trainer.h"

namespace CLI {
class App;
}

namespace ampipe {

class Communicator;

// Everything `train` reads from its command line; the strings are parsed by run_train_command.
struct TrainCommand {
  TrainOptions options;
  FamilyFlags family;
  ParallelSizes tensor_parallel;  // --tensor-model-parallel-size, --sequence-parallel, ETP (EP is options')
  std::string schedule = "sequential";
  std::string chunk_boundaries;
  std::string chunk_policy = "equal";
  std::string pipe_degree = "auto";
  std::string device = "cpu";
  std::string distributed_backend;  // --distributed-backend: "" (default), nccl or mpi
  int threads = 1;
  bool override_opt_param_scheduler = false;
  bool use_checkpoint_opt_param_scheduler = false;
  const CLI::App* command = nullptr;  // set by add_train_command: which flags were given
};

// Registers the `train` subcommand with its flags bound to `train` (which must outlive parsing);
// `default_threads` is --threads' default. Returns it (check ->parsed()).
CLI::App* add_train_command(CLI::App& app, TrainCommand& train, int default_threads);

// Parses the string flags, resolves --load (flags left out take the checkpoint's values; given
// ones must match it) and trains; prints progress on world rank 0. Throws ampipe::Error on bad
// flags or data. Collective over `world`.
int run_train_command(TrainCommand& train, Communicator& world);

}  // namespace ampipe
