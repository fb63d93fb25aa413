// `ampipe export`: an ampipe Mixtral-family checkpoint -> the Hugging Face layout (config.json +
// model.safetensors, or shards + model.safetensors.index.json) that transformers'
// MixtralForCausalLM loads; train/hf_checkpoint.h has the names and the rules.
//
//   ampipe export --load CKPT_DIR --save OUT_DIR [--max-shard-size 5GB]
//
// The import direction needs no command: --load of train, eval and sample accepts such a directory.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace ampipe {

class Communicator;

struct ExportOptions {
  std::string load;                    // ampipe checkpoint directory (a Hugging Face one works too)
  std::string save;                    // output directory
  int64_t ckpt_step = -1;              // with a train --save root: iter_<N> instead of the latest
  std::string max_shard_size = "5GB";  // bytes, or a number with a unit (500MB, 5GB, 2GiB)
  std::string dtype;                   // --dtype: bf16 or float32; empty: the checkpoint's training precision
};

// Registers the `export` subcommand with its flags bound to `options` (which must outlive parsing);
// returns it (check ->parsed()).
CLI::App* add_export_command(CLI::App& app, ExportOptions& options);

// Runs the export on one process; prints a summary line on stdout and any warning on stderr.
// Throws ampipe::Error naming a bad flag value or what makes the checkpoint unexportable.
int run_export(const ExportOptions& options, Communicator& world);

}  // namespace ampipe
