// `ampipe eval` (a checkpoint's loss over a text file, or over the validation or test part of
// indexed datasets and blends) and `ampipe sample` (continue a prompt).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/layout.h"

namespace CLI {
class App;
}

namespace ampipe {

class Communicator;

struct EvalCommand {
  std::string load;
  int64_t ckpt_step = -1;
  // A text file (evaluated whole), one indexed dataset PREFIX, or a blend "W1 P1 W2 P2 ...".
  std::vector<std::string> data_path = {"data/kjv.txt"};
  std::string split = "969,30,1";        // indexed datasets: the documents' train,validation,test parts
  std::string eval_part = "validation";  // indexed datasets: which part of --split (validation, test)
  std::string tokenizer_model;
  int64_t seq_length = 0;  // 0: the checkpoint's max_seq_len
  int64_t micro_batch_size = 8;
  int threads = 1;
  std::string device = "cpu";
  std::string distributed_backend;  // --distributed-backend: "" (default), nccl or mpi
  bool bf16 = false;                // --bf16: mixed precision (docs/MODEL.md "Precision")
  ParallelSizes tensor_parallel;    // cli/parallel_flags.h: T = ETP = 1 only
};

struct SampleCommand {
  std::string load;
  int64_t ckpt_step = -1;
  std::string tokenizer_model;
  std::string prompt = "\n";
  int64_t tokens = 200;
  double temperature = 0.8;
  uint64_t seed = 1;
  int threads = 1;
  std::string device = "cpu";
  std::string distributed_backend;  // --distributed-backend: "" (default), nccl or mpi
  bool bf16 = false;                // --bf16: mixed precision (docs/MODEL.md "Precision")
  ParallelSizes tensor_parallel;    // cli/parallel_flags.h: T = ETP = 1 only
};

// Register the subcommands with their flags bound to the structs (which must outlive parsing);
// `default_threads` is --threads' default. Each returns its command (check ->parsed()).
CLI::App* add_eval_command(CLI::App& app, EvalCommand& eval, int default_threads);
CLI::App* add_sample_command(CLI::App& app, SampleCommand& sample, int default_threads);

// Print one JSON line ({"loss", "tokens"[, "nats_per_byte"]}; for indexed data {"loss", "tokens",
// "part"[, "datasets"]}, see docs/USAGE.md "eval and sample") / the prompt and its continuation on
// world rank 0. Throw ampipe::Error on bad flags or checkpoints. Collective over `world`.
int run_eval_command(const EvalCommand& eval, Communicator& world);
int run_sample_command(const SampleCommand& sample, Communicator& world);

}  // namespace ampipe
