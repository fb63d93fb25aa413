#include "cli/export_command.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "comm/communicator.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"

namespace ampipe {

CLI::App* add_export_command(CLI::App& app, ExportOptions& o) {
  CLI::App* cmd = app.add_subcommand("export",
                                     "Write a Mixtral-family checkpoint in the Hugging Face layout "
                                     "(transformers' MixtralForCausalLM), with its tokenizer");
  cmd->add_option(
         "--load", o.load,
         "Checkpoint to export: a train --save root (its latest iteration), an iteration directory or a "
         "single-checkpoint directory")
      ->required();
  cmd->add_option("--ckpt-step", o.ckpt_step,
                  "With a --save root: export ROOT/iter_<N> instead of the latest");
  cmd->add_option("--save", o.save, "Output directory (created; a previous export there is replaced)")
      ->required();
  cmd->add_option(
         "--max-shard-size", o.max_shard_size,
         "Largest safetensors file (tensor bytes) before the export is sharded with an index: bytes or a "
         "number with a unit, e.g. 500MB, 5GB, 2GiB")
      ->capture_default_str();
  cmd->add_option("--dtype", o.dtype,
                  "The exported tensors' dtype (and config.json's): float32, or bf16 (each value rounded to "
                  "nearest even, half the bytes). Default: the precision the checkpoint was trained in (--bf16 "
                  "or not); the checkpoint itself is float32 either way")
      ->check(CLI::IsMember({"bf16", "float32"}));
  return cmd;
}

int run_export(const ExportOptions& o, Communicator& world) {
  AMPIPE_CHECK(world.size() == 1) << "export runs on one process (it reads the whole checkpoint), got "
                                  << world.size() << " ranks";
  HfExportOptions options;
  options.max_shard_bytes = parse_byte_size(o.max_shard_size, "--max-shard-size");
  if (!o.dtype.empty()) options.dtype = o.dtype == "bf16" ? DType::BF16 : DType::F32;
  const HfExportResult r = export_hf_checkpoint(checkpoint_to_read(o.load, o.ckpt_step), o.save, options);
  for (const std::string& w : r.warnings) std::fprintf(stderr, "ampipe: warning: %s\n", w.c_str());
  std::string tokenizer_files;
  for (const std::string& name : r.tokenizer_files)
    tokenizer_files += (tokenizer_files.empty() ? "" : ", ") + name;
  std::printf("ampipe export: %lld %s tensors, %llu bytes in %zu file(s)%s, the tokenizer (%s) to %s\n",
              static_cast<long long>(r.tensors), r.dtype == DType::BF16 ? "bf16" : "float32",
              static_cast<unsigned long long>(r.total_bytes),
              r.files.size(), r.files.size() > 1 ? " + model.safetensors.index.json" : "",
              tokenizer_files.c_str(), o.save.c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace ampipe
