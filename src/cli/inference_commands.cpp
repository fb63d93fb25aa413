#include "cli/inference_commands.h"

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command_util.h"
#include "cli/model_flags.h"
#include "comm/host_staged_communicator.h"
#include "core/device.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace ampipe {

CLI::App* add_eval_command(CLI::App& app, EvalCommand& e, int default_threads) {
  CLI::App* eval = app.add_subcommand(
      "eval", "Evaluate a checkpoint's mean loss per token over a whole text file; prints one JSON line");
  e.threads = default_threads;
  eval->add_option(
          "--load", e.load,
          "Checkpoint directory: a train --save root (its latest iteration), an iteration directory, a "
          "single-checkpoint or Hugging Face directory")
      ->required();
  eval->add_option("--ckpt-step", e.ckpt_step,
                   "With a --save root: read ROOT/iter_<N> instead of the latest");
  eval->add_option("--data-path", e.data_path,
                   "Text file to evaluate (all of it), tokenized by the checkpoint's tokenizer")
      ->capture_default_str();
  eval->add_option("--tokenizer-model", e.tokenizer_model,
                   "The checkpoint's SentencePiece model, if not saved beside it (its identity must match)");
  eval->add_option_function<int64_t>(
      "--seq-length",
      [&e](int64_t n) {
        AMPIPE_CHECK(n >= 1) << "--seq-length must be at least 1, got " << n
                             << " (leave it out for the checkpoint's max_seq_len)";
        e.seq_length = n;
      },
      "Window length, 1 to the checkpoint's max_seq_len (default: max_seq_len); windows of seq-length + 1 "
      "tokens, consecutive and non-overlapping");
  eval->add_option("--micro-batch-size", e.micro_batch_size, "Windows per forward pass")
      ->capture_default_str();
  eval->add_option("--threads", e.threads, "Compute threads")->capture_default_str();
  add_device_flag(*eval, e.device, "the model runs");
  return eval;
}

CLI::App* add_sample_command(CLI::App& app, SampleCommand& s, int default_threads) {
  CLI::App* sample = app.add_subcommand("sample", "Continue a prompt with a trained checkpoint");
  s.threads = default_threads;
  sample
      ->add_option(
          "--load", s.load,
          "Checkpoint directory: a train --save root (its latest iteration), an iteration directory, a "
          "single-checkpoint or Hugging Face directory")
      ->required();
  sample->add_option("--ckpt-step", s.ckpt_step,
                     "With a --save root: read ROOT/iter_<N> instead of the latest");
  sample->add_option("--prompt", s.prompt, "Text to continue");
  sample->add_option(
      "--tokenizer-model", s.tokenizer_model,
      "The checkpoint's SentencePiece model, if not saved beside it (its identity must match)");
  sample->add_option("--tokens", s.tokens, "Tokens to generate")->capture_default_str();
  sample->add_option("--temperature", s.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  sample->add_option("--seed", s.seed, "Sampling seed")->check(unsigned_integer())->capture_default_str();
  sample->add_option("--threads", s.threads, "Compute threads")->capture_default_str();
  add_device_flag(*sample, s.device, "the model runs");
  return sample;
}

int run_eval_command(const EvalCommand& e, Communicator& world_in) {
  set_threads(e.threads);
  const Device device = parse_device(e.device);
  if (device == Device::CUDA) use_local_cuda_device();
  std::unique_ptr<Communicator> staged;  // GPU buffers over a host-only backend: through host copies
  Communicator& world = for_device(world_in, device, staged);
  AMPIPE_CHECK(!e.load.empty()) << "eval needs --load DIR (a checkpoint written by train --save)";
  AMPIPE_CHECK(e.micro_batch_size >= 1)
      << "--micro-batch-size must be at least 1, got " << e.micro_batch_size;
  const std::string load = checkpoint_to_read(e.load, e.ckpt_step);
  ModelConfig config = read_checkpoint_config(load);
  const int64_t N = e.seq_length > 0 ? e.seq_length : config.max_seq_len;
  AMPIPE_CHECK(N <= config.max_seq_len)
      << "--seq-length " << N << " exceeds the checkpoint's max_seq_len " << config.max_seq_len;
  TrainingGroups groups = make_training_groups(world, 0, config.num_experts);
  GptMoe model(config, groups.model_parallel(), device);
  load_model_weights(load, model);
  const std::unique_ptr<Tokenizer> tokenizer = checkpoint_tokenizer(load, config, e.tokenizer_model);
  const std::string text = byte_decode(load_tokens(e.data_path));
  const std::vector<int32_t> tokens = encode_text(*tokenizer, text);
  std::vector<int64_t> offsets = consecutive_windows(static_cast<int64_t>(tokens.size()), N);
  AMPIPE_CHECK(!offsets.empty()) << "data file '" << e.data_path << "' has " << tokens.size()
                                 << " tokens, shorter than one window of seq-length + 1 = " << N + 1;
  EvalResult r = evaluate_windows(model, tokens, offsets, N, e.micro_batch_size, &world);
  nlohmann::json j = {{"loss", r.loss}, {"tokens", r.tokens}};
  if (tokenizer->type() != "byte") {
    // Per byte of text, at the file's mean bytes per token, comparable across tokenizers.
    j["nats_per_byte"] = r.loss * static_cast<double>(tokens.size()) / static_cast<double>(text.size());
  }
  print_line(world, j.dump());
  return 0;
}

int run_sample_command(const SampleCommand& s, Communicator& world_in) {
  set_threads(s.threads);
  const Device device = parse_device(s.device);
  if (device == Device::CUDA) use_local_cuda_device();
  std::unique_ptr<Communicator> staged;  // GPU buffers over a host-only backend: through host copies
  Communicator& world = for_device(world_in, device, staged);
  AMPIPE_CHECK(!s.load.empty()) << "sample needs --load DIR (a checkpoint written by train --save)";
  AMPIPE_CHECK(s.tokens >= 0) << "--tokens must be >= 0, got " << s.tokens;
  const std::string load = checkpoint_to_read(s.load, s.ckpt_step);
  // Every rank generates the same text (the same seed), so their expert all-to-alls match.
  ModelConfig config = read_checkpoint_config(load);
  TrainingGroups groups = make_training_groups(world, 0, config.num_experts);
  GptMoe model(config, groups.model_parallel(), device);
  load_model_weights(load, model);
  const std::unique_ptr<Tokenizer> tokenizer = checkpoint_tokenizer(load, config, s.tokenizer_model);
  std::vector<int32_t> context = tokenizer->encode(s.prompt);
  const std::vector<int32_t> out =
      generate(model, context, s.tokens, s.temperature, s.seed, tokenizer->vocab_size());
  context.insert(context.end(), out.begin(), out.end());
  print_line(world, tokenizer->decode(context));
  return 0;
}

}  // namespace ampipe
