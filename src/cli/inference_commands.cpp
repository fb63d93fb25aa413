#include "cli/inference_commands.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command_util.h"
#include "cli/model_flags.h"
#include "cli/parallel_flags.h"
#include "core/device.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/evaluate.h"
#include "train/gpt_dataset.h"
#include "train/trainer.h"

namespace ampipe {

CLI::App* add_eval_command(CLI::App& app, EvalCommand& e, int default_threads) {
  CLI::App* eval = app.add_subcommand(
      "eval",
      "Evaluate a checkpoint's mean loss per token over a whole text file, or the validation or test part of "
      "indexed datasets; prints one JSON line");
  e.threads = default_threads;
  eval->add_option(
          "--load", e.load,
          "Checkpoint directory: a train --save root (its latest iteration), an iteration directory, a "
          "single-checkpoint or Hugging Face directory")
      ->required();
  eval->add_option("--ckpt-step", e.ckpt_step,
                   "With a --save root: read ROOT/iter_<N> instead of the latest");
  eval->add_option_function<std::vector<std::string>>(
          "--data-path", [&e](const std::vector<std::string>& items) { e.data_path = items; },
          "A text file (evaluated whole, tokenized by the checkpoint's tokenizer), or Megatron indexed "
          "datasets "
          "as train takes them: one PREFIX or a blend 'W1 PREFIX1 W2 PREFIX2 ...', evaluated on the part of "
          "--split that --eval-part names")
      ->default_str("data/kjv.txt")
      ->expected(1, -1)
      ->trigger_on_parse();
  eval->add_option(
          "--split", e.split,
          "Indexed datasets: train,validation,test proportions by whole documents, as in training (give "
          "the run's own --split to evaluate on the documents it held out)")
      ->capture_default_str();
  eval->add_option(
          "--eval-part", e.eval_part,
          "Indexed datasets: which part of --split to evaluate, validation or test (each dataset's part "
          "whole, in file order)")
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
  add_device_flags(*eval, e.device, e.distributed_backend, "the model runs");
  add_precision_flag(*eval, e.bf16, "the model runs");
  add_tensor_parallel_flags(
      *eval, e.tensor_parallel, "the model runs",
      "A checkpoint saved at any T loads (its vocabulary must divide by T); the windows "
      "are split over the DP = ranks / T data-parallel ranks. CPU");
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
  add_device_flags(*sample, s.device, s.distributed_backend, "the model runs");
  add_precision_flag(*sample, s.bf16, "the model runs");
  add_tensor_parallel_flags(*sample, s.tensor_parallel, "the model runs",
                            "A checkpoint saved at any T loads (its vocabulary must divide by T); every rank "
                            "generates the same text, each step's logits gathered over the group. CPU. "
                            "--sequence-parallel is noted and left out (prompts of any length)");
  return sample;
}

namespace {

// A text file, evaluated whole: {"loss", "tokens"[, "nats_per_byte"]}.
nlohmann::json evaluate_text(const GptMoe& model, const Tokenizer& tokenizer, const std::string& path,
                             int64_t N, int64_t batch, Communicator& world) {
  const std::string text = byte_decode(load_tokens(path));
  const std::vector<int32_t> tokens = encode_text(tokenizer, text);
  std::vector<int64_t> offsets = consecutive_windows(static_cast<int64_t>(tokens.size()), N);
  AMPIPE_CHECK(!offsets.empty()) << "data file '" << path << "' has " << tokens.size()
                                 << " tokens, shorter than one window of seq-length + 1 = " << N + 1;
  EvalResult r = evaluate_windows(model, tokens, offsets, N, batch, &world);
  nlohmann::json j = {{"loss", r.loss}, {"tokens", r.tokens}};
  if (tokenizer.type() != "byte") {
    // Per byte of text, at the file's mean bytes per token, comparable across tokenizers.
    j["nats_per_byte"] = r.loss * static_cast<double>(tokens.size()) / static_cast<double>(text.size());
  }
  return j;
}

// Indexed datasets: each dataset's part of --split whole; a blend's loss is the mean of the
// datasets' losses by their weights. {"loss", "tokens", "part"[, "datasets": [...]]}.
nlohmann::json evaluate_indexed(const GptMoe& model, const Tokenizer& tokenizer, const EvalCommand& e,
                                const std::vector<WeightedPrefix>& blend, int64_t N, Communicator& world) {
  AMPIPE_CHECK(e.eval_part == "validation" || e.eval_part == "test")
      << "--eval-part '" << e.eval_part << "' is not one of: validation, test";
  const std::vector<EvaluationPart> parts =
      evaluation_parts(blend, parse_split(e.split), e.eval_part == "validation" ? 1 : 2,
                       model.config().vocab_size, tokenizer.identity());
  double weights = 0, weighted_loss = 0;
  int64_t tokens = 0;
  nlohmann::json datasets = nlohmann::json::array();
  for (const EvaluationPart& p : parts) {
    const std::vector<int64_t> offsets = consecutive_windows(static_cast<int64_t>(p.tokens.size()), N);
    AMPIPE_CHECK(!offsets.empty()) << p.prefix << ": its " << e.eval_part << " part holds " << p.tokens.size()
                                   << " tokens, shorter than one window of seq-length + 1 = " << N + 1;
    const EvalResult r = evaluate_windows(model, p.tokens, offsets, N, e.micro_batch_size, &world);
    datasets.push_back({{"prefix", p.prefix},
                        {"weight", p.weight},
                        {"documents", p.documents},
                        {"loss", r.loss},
                        {"tokens", r.tokens}});
    weights += p.weight;
    weighted_loss += p.weight * r.loss;
    tokens += r.tokens;
  }
  nlohmann::json j = {{"loss", weighted_loss / weights}, {"tokens", tokens}, {"part", e.eval_part}};
  if (parts.size() > 1) j["datasets"] = datasets;
  return j;
}

}  // namespace

// The folded layout of `sizes` over the world (EP its default), for a model of `config`; throws
// ampipe::Error naming the numbers where it does not fit (train/layout.h make_layout).
static TrainingGroups inference_groups(Communicator& world, ParallelSizes sizes, const ModelConfig& config) {
  sizes.expert = 0;
  return make_training_groups(world, make_layout(world.size(), sizes, config));
}

int run_eval_command(const EvalCommand& e, Communicator& world_in) {
  check_tensor_parallel_flags(e.tensor_parallel, world_in, "eval", /*runs_tensor_parallel=*/true);
  set_threads(e.threads);
  const Device device = parse_device(e.device);
  std::unique_ptr<Communicator> staged;
  Communicator& world = device_world(world_in, device, e.distributed_backend, staged);
  AMPIPE_CHECK(!e.load.empty()) << "eval needs --load DIR (a checkpoint written by train --save)";
  AMPIPE_CHECK(e.micro_batch_size >= 1)
      << "--micro-batch-size must be at least 1, got " << e.micro_batch_size;
  const std::vector<WeightedPrefix> blend = parse_data_path(e.data_path);
  const bool indexed = blend.size() > 1 || TrainingCorpus::is_indexed_prefix(blend[0].prefix);
  const std::string load = checkpoint_to_read(e.load, e.ckpt_step);
  ModelConfig config = read_checkpoint_config(load);
  config.bf16 = e.bf16;
  const int64_t N = e.seq_length > 0 ? e.seq_length : config.max_seq_len;
  AMPIPE_CHECK(N <= config.max_seq_len)
      << "--seq-length " << N << " exceeds the checkpoint's max_seq_len " << config.max_seq_len;
  TrainingGroups groups = inference_groups(world, e.tensor_parallel, config);
  GptMoe model(config, groups.model_parallel(), device);
  load_model_weights(load, model);
  const std::unique_ptr<Tokenizer> tokenizer = checkpoint_tokenizer(load, config, e.tokenizer_model);
  // The windows are split over the data-parallel ranks; a tensor group evaluates its rank's together.
  Communicator& data = *groups.data_parallel_group();
  const nlohmann::json j =
      indexed ? evaluate_indexed(model, *tokenizer, e, blend, N, data)
              : evaluate_text(model, *tokenizer, blend[0].prefix, N, e.micro_batch_size, data);
  print_line(world, j.dump());
  return 0;
}

int run_sample_command(const SampleCommand& s, Communicator& world_in) {
  check_tensor_parallel_flags(s.tensor_parallel, world_in, "sample", /*runs_tensor_parallel=*/true);
  set_threads(s.threads);
  const Device device = parse_device(s.device);
  std::unique_ptr<Communicator> staged;
  Communicator& world = device_world(world_in, device, s.distributed_backend, staged);
  AMPIPE_CHECK(!s.load.empty()) << "sample needs --load DIR (a checkpoint written by train --save)";
  AMPIPE_CHECK(s.tokens >= 0) << "--tokens must be >= 0, got " << s.tokens;
  const std::string load = checkpoint_to_read(s.load, s.ckpt_step);
  // Every rank generates the same text (the same seed), so their expert all-to-alls match; under
  // tensor parallelism each step's logits are gathered over the group (GptMoe::logits).
  ModelConfig config = read_checkpoint_config(load);
  config.bf16 = s.bf16;
  TrainingGroups groups = inference_groups(world, s.tensor_parallel, config);
  // Generation runs prompts of any length, one position more each step: without sequence
  // parallelism, which needs lengths divisible by T. The weights and the logits are the same.
  ModelParallel parallel = groups.model_parallel();
  if (parallel.sp()) {
    if (world.rank() == 0)
      std::fprintf(stderr,
                   "ampipe sample: note: runs without --sequence-parallel (the prompt grows one position per "
                   "step); the tensor-parallel layout and the results are the same\n");
    parallel.sequence_parallel = false;
  }
  GptMoe model(config, parallel, device);
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
