// ampipe: one binary, subcommands train / eval / sample / bench / plan.
//
// Errors inside the engine are ampipe::Error exceptions; this file is the edge that turns them into
// one line on stderr ("ampipe: error: ...") and exit status 1. Bad flags exit with CLI11's status.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/bench.h"
#include "cli/data_commands.h"
#include "cli/export_command.h"
#include "core/memory.h"
#include "cli/grid.h"
#include "cli/plan.h"
#include "comm/host_staged_communicator.h"
#include "comm/world.h"
#include "core/parallel.h"
#include "kernels/gemm.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data.h"
#include "cli/model_flags.h"
#include "train/distributed.h"
#include "train/evaluate.h"
#include "pipeline/schedule.h"
#include "train/trainer.h"

namespace {

using namespace ampipe;

// Model flags, shared by the subcommands that build a model. Megatron-LM names.
void add_model_flags(CLI::App& cmd, ModelConfig& m) {
  cmd.add_option("--num-layers", m.num_layers, "Transformer blocks (L)")->capture_default_str();
  cmd.add_option("--hidden-size", m.hidden_size, "Hidden size d; must be divisible by the heads")
      ->capture_default_str();
  cmd.add_option("--num-attention-heads", m.num_attention_heads, "Attention heads h")->capture_default_str();
  cmd.add_option("--ffn-hidden-size", m.ffn_hidden_size, "Expert FFN hidden size f")->capture_default_str();
  cmd.add_option("--seq-length", m.max_seq_len, "Sequence length N (also the model's max_seq_len)")
      ->capture_default_str();
  cmd.add_option("--moe-num-experts", m.num_experts, "Experts per MoE layer (E)")->capture_default_str();
  cmd.add_option("--moe-top-k", m.top_k, "Experts per token (k, 1 <= k <= E)")->capture_default_str();
  cmd.add_option("--moe-capacity-factor", m.capacity_factor,
                 "Expert capacity factor; 0 = dropless. With cf > 0 each expert keeps at most "
                 "ceil(cf*T*k/E) (token, choice) pairs per routing group, earlier tokens first")
      ->capture_default_str();
  cmd.add_option("--moe-aux-loss-coeff", m.aux_loss_weight, "Weight of the load-balancing loss")
      ->capture_default_str();
}

const char* kModelFlags[] = {"--num-layers",      "--hidden-size", "--num-attention-heads",
                             "--ffn-hidden-size", "--seq-length",  "--moe-num-experts",
                             "--moe-top-k",       "--moe-capacity-factor", "--moe-aux-loss-coeff"};

void set_threads(int threads) {
  AMPIPE_CHECK(threads >= 1) << "--threads must be at least 1, got " << threads;
  kernels::set_kernel_threads(threads);
}

// Prints on world rank 0 only.
void print_line(Communicator& world, const std::string& line) {
  if (world.rank() != 0) return;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

int run_train(TrainOptions& o, CLI::App& cmd, const FamilyFlags& family, int threads, Communicator& world) {
  set_threads(threads);
  apply_family_flags(family, o.model);
  o.model.validate();
  if (!o.load.empty()) {  // a root of iteration checkpoints -> the latest (or --ckpt-step's) directory
    const CheckpointLocation where = locate_checkpoint(o.load, o.ckpt_step);
    if (!where.notice.empty()) print_line(world, "ampipe train: " + where.notice);
    o.load = where.path;
    o.ckpt_step = -1;
  }
  if (!o.load.empty()) {
    // Flags not given on the command line take the checkpoint's values; given ones must match.
    ModelConfig stored = read_checkpoint_config(o.load);
    ModelConfig flags = o.model;
    o.model = stored;
    bool any_given = false;
    for (const char* f : kModelFlags) any_given |= cmd.count(f) > 0;
    any_given |= any_family_flag_given(family);
    if (any_given) {
      ModelConfig merged = stored;
      if (cmd.count("--num-layers")) merged.num_layers = flags.num_layers;
      if (cmd.count("--hidden-size")) merged.hidden_size = flags.hidden_size;
      if (cmd.count("--num-attention-heads")) merged.num_attention_heads = flags.num_attention_heads;
      if (cmd.count("--ffn-hidden-size")) merged.ffn_hidden_size = flags.ffn_hidden_size;
      if (cmd.count("--seq-length")) merged.max_seq_len = flags.max_seq_len;
      if (cmd.count("--moe-num-experts")) merged.num_experts = flags.num_experts;
      if (cmd.count("--moe-top-k")) merged.top_k = flags.top_k;
      if (cmd.count("--moe-capacity-factor")) merged.capacity_factor = flags.capacity_factor;
      if (cmd.count("--moe-aux-loss-coeff")) merged.aux_loss_weight = flags.aux_loss_weight;
      apply_family_flags(family, merged);
      const std::string diff = stored.differences(merged);
      AMPIPE_CHECK(diff.empty()) << "--load " << o.load << ": the checkpoint's model config does not match the flags ("
                                 << "checkpoint vs flags: " << diff << ")";
    }
  }
  if (o.device == Device::CUDA) use_local_cuda_device();
  print_line(world, "ampipe train: " + std::to_string(world.size()) + " rank(s), " + std::to_string(threads) +
                        " threads per rank" + (o.device == Device::CUDA ? ", device cuda" : ""));
  TrainResult r = run_training(o, [&](const std::string& line) { print_line(world, line); }, &world);
  char buf[256];
  std::snprintf(buf, sizeof buf, "done: %lld iterations, final loss %.4f, validation loss %.4f, %.0f tokens/s, %.1f s",
                static_cast<long long>(r.iterations), r.final_loss, r.final_val_loss, r.tokens_per_sec, r.seconds);
  print_line(world, buf);
  return 0;
}

int run_eval(std::string load, int64_t step, const std::string& data_path, const std::string& tokenizer_model,
             int64_t seq_length, int64_t batch, int threads, Device device, Communicator& world_in) {
  set_threads(threads);
  if (device == Device::CUDA) use_local_cuda_device();
  std::unique_ptr<Communicator> staged;  // GPU buffers over a host-only backend: through host copies
  Communicator& world = for_device(world_in, device, staged);
  AMPIPE_CHECK(!load.empty()) << "eval needs --load DIR (a checkpoint written by train --save)";
  AMPIPE_CHECK(batch >= 1) << "--micro-batch-size must be at least 1, got " << batch;
  load = checkpoint_to_read(load, step);
  ModelConfig config = read_checkpoint_config(load);
  const int64_t N = seq_length > 0 ? seq_length : config.max_seq_len;
  AMPIPE_CHECK(N <= config.max_seq_len) << "--seq-length " << N << " exceeds the checkpoint's max_seq_len "
                                        << config.max_seq_len;
  TrainingGroups groups = make_training_groups(world, 0, config.num_experts);
  GptMoe model(config, groups.model_parallel(), device);
  load_model_weights(load, model);
  const std::unique_ptr<Tokenizer> tokenizer = checkpoint_tokenizer(load, config, tokenizer_model);
  const std::string text = byte_decode(load_tokens(data_path));
  const std::vector<int32_t> tokens = encode_text(*tokenizer, text);
  std::vector<int64_t> offsets = consecutive_windows(static_cast<int64_t>(tokens.size()), N);
  AMPIPE_CHECK(!offsets.empty()) << "data file '" << data_path << "' has " << tokens.size()
                                 << " tokens, shorter than one window of seq-length + 1 = " << N + 1;
  EvalResult r = evaluate_windows(model, tokens, offsets, N, batch, &world);
  nlohmann::json j = {{"loss", r.loss}, {"tokens", r.tokens}};
  if (tokenizer->type() != "byte") {
    // Per byte of text, at the file's mean bytes per token, comparable across tokenizers.
    j["nats_per_byte"] = r.loss * static_cast<double>(tokens.size()) / static_cast<double>(text.size());
  }
  print_line(world, j.dump());
  return 0;
}

int run_sample(std::string load, int64_t step, const std::string& tokenizer_model, const std::string& prompt, int64_t count,
               double temperature, uint64_t seed, int threads, Device device, Communicator& world_in) {
  set_threads(threads);
  if (device == Device::CUDA) use_local_cuda_device();
  std::unique_ptr<Communicator> staged;  // GPU buffers over a host-only backend: through host copies
  Communicator& world = for_device(world_in, device, staged);
  AMPIPE_CHECK(!load.empty()) << "sample needs --load DIR (a checkpoint written by train --save)";
  AMPIPE_CHECK(count >= 0) << "--tokens must be >= 0, got " << count;
  load = checkpoint_to_read(load, step);
  // Every rank generates the same text (the same seed), so their expert all-to-alls match.
  ModelConfig config = read_checkpoint_config(load);
  TrainingGroups groups = make_training_groups(world, 0, config.num_experts);
  GptMoe model(config, groups.model_parallel(), device);
  load_model_weights(load, model);
  const std::unique_ptr<Tokenizer> tokenizer = checkpoint_tokenizer(load, config, tokenizer_model);
  std::vector<int32_t> context = tokenizer->encode(prompt);
  const std::vector<int32_t> out = generate(model, context, count, temperature, seed, tokenizer->vocab_size());
  context.insert(context.end(), out.begin(), out.end());
  print_line(world, tokenizer->decode(context));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ampipe: train Mixture-of-Experts GPT models with intra-block pipelining"};
  app.require_subcommand(1);
  // A flag given twice takes its last value, so a script's defaults can be overridden by appending.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  const int default_threads = ampipe::available_cores();

  // train
  TrainOptions t;
  std::string schedule_name_flag = "sequential", chunk_boundaries_flag, chunk_policy_flag = "equal",
              pipe_degree_flag = "auto";
  int train_threads = default_threads;
  CLI::App* train = app.add_subcommand("train", "Train an MoE language model (GPT or Mixtral family) on a text file");
  add_model_flags(*train, t.model);
  FamilyFlags train_family;
  add_family_flags(*train, train_family);
  train->add_option("--micro-batch-size", t.micro_batch_size, "Sequences per iteration")->capture_default_str();
  train->add_option("--lr", t.lr.lr, "Peak learning rate")->capture_default_str();
  train->add_option("--min-lr", t.lr.min_lr, "Learning rate at the end of the cosine decay")->capture_default_str();
  train->add_option("--lr-warmup-iters", t.lr.warmup_iters, "Iterations of linear warm-up from 0")
      ->capture_default_str();
  train->add_option("--weight-decay", t.adamw.weight_decay, "AdamW decoupled weight decay (matrices only)")
      ->capture_default_str();
  train->add_option("--adam-beta1", t.adamw.beta1, "AdamW beta1")->capture_default_str();
  train->add_option("--adam-beta2", t.adamw.beta2, "AdamW beta2")->capture_default_str();
  train->add_option("--clip-grad", t.adamw.clip_grad, "Clip gradients to this global L2 norm; 0 disables")
      ->capture_default_str();
  train->add_option("--train-iters", t.train_iters, "Total training iterations")->capture_default_str();
  train->add_option("--eval-interval", t.eval_interval,
                    "Evaluate validation loss every N iterations (and at the end); 0 = only at the end")
      ->capture_default_str();
  train->add_option("--eval-iters", t.eval_iters, "Validation batches per evaluation")->capture_default_str();
  train->add_option("--log-interval", t.log_interval, "Print a progress line every N iterations")
      ->capture_default_str();
  train->add_option("--save", t.save,
                    "Checkpoint root to write, laid out as Megatron-LM's: DIR/iter_0000500/ (model.safetensors, "
                    "optimizer.safetensors with the data position, tokenizer.model) and "
                    "DIR/latest_checkpointed_iteration.txt, each save crash-consistent (docs/USAGE.md)");
  train->add_option("--save-interval", t.save_interval, "Save every N iterations (and at the end); 0 = end only")
      ->capture_default_str();
  train->add_option("--load", t.load,
                    "Resume from this checkpoint: a --save root (its latest_checkpointed_iteration.txt, or "
                    "--ckpt-step), a single-checkpoint or iteration directory, or a Hugging Face directory "
                    "(weights only). A root with no checkpoint yet (missing, empty) starts from scratch with a "
                    "notice, so '--save DIR --load DIR' restarts a job where it left off");
  train->add_option("--ckpt-step", t.ckpt_step,
                    "With --load ROOT: resume from ROOT/iter_<N> instead of the latest (Megatron's flag)");
  train->add_option("--ckpt-keep", t.ckpt_keep,
                    "Keep the newest K complete iteration directories under --save, deleting older ones after "
                    "each successful save; 0 = keep all (ampipe's own flag; Megatron-LM has no equivalent)")
      ->capture_default_str();
  train->add_option("--exit-on-save-failure", t.exit_on_save_failure,
                    "true: a failed save (full disk, I/O error) ends the job with the error; false: log a warning, "
                    "keep training and retry at the next save. Either way the previous checkpoint stays intact "
                    "and latest (ampipe's own flag)")
      ->capture_default_str();
  train->add_option("--exit-interval", t.exit_interval,
                    "Stop after an iteration divisible by N, saving a checkpoint first if --save is set; 0 = never")
      ->capture_default_str();
  train->add_option("--seed", t.seed, "Seed of the initialisation and the data order")->capture_default_str();
  // Several values in one occurrence make a blend; a later occurrence replaces an earlier one (as
  // every flag here: a script's defaults can be overridden by appending).
  train
      ->add_option_function<std::vector<std::string>>(
          "--data-path", [&t](const std::vector<std::string>& items) { t.data_path = items; },
          "A text file (tokenized whole; its last 10% of tokens is validation), or Megatron indexed "
          "datasets: one PREFIX (PREFIX.bin / PREFIX.idx, from ampipe preprocess), or a blend "
          "'W1 PREFIX1 W2 PREFIX2 ...' with positive weights")
      ->default_str("data/kjv.txt")
      ->expected(1, -1)
      ->trigger_on_parse();
  train->add_option("--split", t.split,
                    "Indexed datasets: train,validation,test proportions, by whole documents (Megatron's rule)")
      ->capture_default_str();
  train->add_option("--tokenizer-type", t.tokenizer_type,
                    "byte (one token per byte, vocabulary 256) or SentencePieceTokenizer (with --tokenizer-model); "
                    "the tokenizer is saved with the checkpoint, and resuming uses it")
      ->capture_default_str();
  train->add_option("--tokenizer-model", t.tokenizer_model,
                    "The SentencePiece .model file (e.g. from ampipe tokenizer train, or a Llama/Mistral checkpoint)");
  train->add_option("--make-vocab-size-divisible-by", t.make_vocab_size_divisible_by,
                    "Pad the model's vocabulary to a multiple of this (Megatron's rule)")
      ->capture_default_str();
  train->add_option("--threads", train_threads, "Compute threads (kernels and BLAS)")->capture_default_str();
  std::string train_device = "cpu", eval_device = "cpu", sample_device = "cpu";
  add_device_flag(*train, train_device, "the model trains");
  train->add_option("--expert-model-parallel-size", t.expert_parallel_size,
                    "Ranks that share the experts of each MoE layer (EP; each holds E/EP experts); must divide "
                    "the world size and --moe-num-experts. Default 0: the largest such divisor")
      ->capture_default_str();
  train->add_option("--schedule", schedule_name_flag,
                    "How each transformer block runs: sequential (one piece), moe-pipe (the MoE layer's tokens in "
                    "P chunks), ampipe (the sequence in P chunks: attention, all-to-all and experts per chunk)")
      ->capture_default_str();
  train->add_option("--pipe-degree", pipe_degree_flag,
                    "Chunks per block (P) for moe-pipe and ampipe, or auto: the planner picks the schedule (this "
                    "one or sequential), P, chunk boundaries and stage order from a cost model of this machine")
      ->capture_default_str();
  train->add_option("--hardware", t.hardware,
                    "With --pipe-degree auto: the hardware profile to plan for (JSON path or a name under "
                    "profiles/); default: a quick calibration of this machine at start-up");
  train->add_option("--chunk-boundaries", chunk_boundaries_flag,
                    "Explicit ampipe chunk boundaries as positions, e.g. 0,48,96,128 (overrides --pipe-degree)");
  train->add_option("--chunk-policy", chunk_policy_flag,
                    "How ampipe cuts the attention side when no boundaries are given: equal (equal lengths) or "
                    "balanced (equal FLOPs, counting causal attention's growth along the sequence)")
      ->capture_default_str();
  train->add_option("--moe-pipe-degree", t.schedule.moe_pipe_degree,
                    "ampipe: cut the MoE side (all-to-all and experts) into this many equal chunks of its own, fed "
                    "by a token buffer behind the attention chunks; 0 = the attention chunks")
      ->capture_default_str();
  train->add_option("--stage-order", t.stage_order,
                    "Order in which the compute stream takes a chunked block's stages: stage-major (all attention "
                    "chunks, then all experts) or interleaved (attention c, experts c-1, combine c-2, ...)")
      ->capture_default_str();
  train->add_option("--pipeline-scope", t.pipeline_scope,
                    "How far the chunks of a chunked schedule flow: block (each block drains before the next "
                    "starts), model (chunk c of block l+1 starts as soon as chunks 0..c of block l are done, "
                    "forward and backward: the pipeline fills once per pass), or auto (the planner's choice with "
                    "--pipe-degree auto; otherwise model when there are chunks and more than one layer)")
      ->capture_default_str();
  train->add_flag("--overlap-grad-reduce", t.overlap_grad_reduce,
                  "Reduce each block's gradients over the data-parallel ranks on the communication stream as soon "
                  "as that block's backward is done, overlapping the backward of the blocks below (default: all "
                  "gradients after the backward). Results are the same either way");
  train->add_option("--trace", t.trace_file,
                    "Write a Chrome trace (Perfetto / chrome://tracing) of two training iterations: one track per "
                    "stream per rank, a slice per stage and chunk");
  train->add_flag("--abort-on-nan", t.abort_on_nan,
                  "End the whole job on a non-finite loss (default: skip that update and go on)");
  train->add_option("--metrics-file", t.metrics_file,
                    "Write one JSON object per logged iteration (iter, loss, lr, tokens_per_sec, val_loss)");

  // eval
  std::string eval_load, eval_data = "data/kjv.txt";
  int64_t eval_seq = 0, eval_batch = 8;
  int eval_threads = default_threads;
  CLI::App* eval = app.add_subcommand(
      "eval", "Evaluate a checkpoint's mean loss per token over a whole text file; prints one JSON line");
  int64_t eval_step = -1, sample_step = -1;
  eval->add_option("--load", eval_load,
                   "Checkpoint directory: a train --save root (its latest iteration), an iteration directory, a "
                   "single-checkpoint or Hugging Face directory")
      ->required();
  eval->add_option("--ckpt-step", eval_step, "With a --save root: read ROOT/iter_<N> instead of the latest");
  eval->add_option("--data-path", eval_data, "Text file to evaluate (all of it), tokenized by the checkpoint's tokenizer")
      ->capture_default_str();
  std::string eval_tokenizer;
  eval->add_option("--tokenizer-model", eval_tokenizer,
                   "The checkpoint's SentencePiece model, if not saved beside it (its identity must match)");
  eval->add_option("--seq-length", eval_seq,
                   "Window length (default: the checkpoint's max_seq_len); windows of seq-length + 1 "
                   "tokens, consecutive and non-overlapping");
  eval->add_option("--micro-batch-size", eval_batch, "Windows per forward pass")->capture_default_str();
  eval->add_option("--threads", eval_threads, "Compute threads")->capture_default_str();
  add_device_flag(*eval, eval_device, "the model runs");

  // sample
  std::string sample_load, prompt = "\n";
  int64_t sample_tokens = 200;
  double temperature = 0.8;
  uint64_t sample_seed = 1;
  int sample_threads = default_threads;
  CLI::App* sample = app.add_subcommand("sample", "Continue a prompt with a trained checkpoint");
  sample->add_option("--load", sample_load,
                     "Checkpoint directory: a train --save root (its latest iteration), an iteration directory, a "
                     "single-checkpoint or Hugging Face directory")
      ->required();
  sample->add_option("--ckpt-step", sample_step, "With a --save root: read ROOT/iter_<N> instead of the latest");
  sample->add_option("--prompt", prompt, "Text to continue");
  std::string sample_tokenizer;
  sample->add_option("--tokenizer-model", sample_tokenizer,
                     "The checkpoint's SentencePiece model, if not saved beside it (its identity must match)");
  sample->add_option("--tokens", sample_tokens, "Tokens to generate")->capture_default_str();
  sample->add_option("--temperature", temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  sample->add_option("--seed", sample_seed, "Sampling seed")->capture_default_str();
  sample->add_option("--threads", sample_threads, "Compute threads")->capture_default_str();
  add_device_flag(*sample, sample_device, "the model runs");

  // bench
  BenchOptions bench_options;
  CLI::App* bench = add_bench_command(app, bench_options);
  PlanOptions plan_options;
  CLI::App* plan = add_plan_command(app, plan_options);
  ExportOptions export_options;
  CLI::App* export_cmd = add_export_command(app, export_options);
  PreprocessOptions preprocess_options;
  CLI::App* preprocess_cmd = add_preprocess_command(app, preprocess_options);
  TokenizerTrainOptions tokenizer_options;
  CLI::App* tokenizer_train = nullptr;
  add_tokenizer_command(app, tokenizer_options, &tokenizer_train);

  // Every command that may run on several ranks: the deadline of one collective (comm/communicator.h).
  double timeout_minutes = 10.0;
  for (CLI::App* cmd : {train, eval, sample, bench, plan}) {
    cmd->add_option("--distributed-timeout-minutes", timeout_minutes,
                    "Under mpirun: a collective that some rank has not entered (or finished) this many minutes "
                    "after this rank entered it ends the job, naming the rank and the call; fractions allowed. "
                    "Set it above the longest a rank may wait for another (e.g. rank 0 writing a checkpoint)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
  }

  CLI11_PARSE(app, argc, argv);
  // A file-size limit (ulimit -f) makes a write fail with EFBIG, reported as an error (a failed
  // save leaves the previous checkpoint intact), instead of killing the process with SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  // The engine's commands keep freed memory in one heap (core/memory.h); the corpus commands run
  // many small allocations on many threads, which one heap would serialise.
  if (!preprocess_cmd->parsed() && !tokenizer_train->parsed() && !export_cmd->parsed()) ampipe::retain_freed_memory();
  std::unique_ptr<Communicator> world;
  try {
    // Under mpirun / srun this is the MPI world; otherwise this process alone.
    world = make_world_communicator(timeout_minutes * 60.0);
    if (train->parsed()) {
      t.device = parse_device(train_device);
      t.schedule.kind = parse_schedule(schedule_name_flag);
      if (!chunk_boundaries_flag.empty()) t.schedule.chunk_boundaries = parse_chunk_boundaries(chunk_boundaries_flag);
      t.schedule.chunk_policy = parse_chunk_policy(chunk_policy_flag);
      if (pipe_degree_flag == "auto") {
        t.auto_plan = true;
      } else {
        t.schedule.pipe_degree = parse_int_list("--pipe-degree", pipe_degree_flag, 1).at(0);
        AMPIPE_CHECK(pipe_degree_flag.find(',') == std::string::npos)
            << "--pipe-degree '" << pipe_degree_flag << "' must be one integer >= 1 or auto";
      }
      t.schedule.validate();
      return run_train(t, *train, train_family, train_threads, *world);
    }
    if (eval->parsed())
      return run_eval(eval_load, eval_step, eval_data, eval_tokenizer, eval_seq, eval_batch, eval_threads,
                      parse_device(eval_device), *world);
    if (sample->parsed())
      return run_sample(sample_load, sample_step, sample_tokenizer, prompt, sample_tokens, temperature, sample_seed,
                        sample_threads, parse_device(sample_device), *world);
    if (bench->parsed()) return run_bench(bench_options, *world);
    if (plan->parsed()) return run_plan(plan_options, *world);
    if (export_cmd->parsed()) return run_export(export_options, *world);
    if (preprocess_cmd->parsed()) return run_preprocess(preprocess_options);
    if (tokenizer_train->parsed()) return run_tokenizer_train(tokenizer_options);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    // In a parallel job one rank's error must end every rank (the others may be waiting in a
    // collective): abort() prints "ampipe: rank R: ..." and ends the whole job.
    if (world != nullptr && world->size() > 1) world->abort(1, std::string("error: ") + e.what());
    std::fprintf(stderr, "ampipe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
