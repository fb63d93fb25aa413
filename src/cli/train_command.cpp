#include "cli/train_command.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <set>

#include "cli/command_util.h"
#include "cli/grid.h"
#include "comm/communicator.h"
#include "core/device.h"
#include "core/error.h"
#include "pipeline/schedule.h"
#include "train/checkpoint.h"

namespace ampipe {
namespace {

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

const char* kModelFlags[] = {"--num-layers",      "--hidden-size",         "--num-attention-heads",
                             "--ffn-hidden-size", "--seq-length",          "--moe-num-experts",
                             "--moe-top-k",       "--moe-capacity-factor", "--moe-aux-loss-coeff"};

// The optimizer and its learning-rate schedule.
void add_optimizer_flags(CLI::App& cmd, TrainOptions& t) {
  cmd.add_option("--micro-batch-size", t.micro_batch_size,
                 "Sequences per rank in one forward and backward (a micro-batch)")
      ->capture_default_str();
  cmd.add_option("--global-batch-size", t.global_batch_size,
                 "Sequences per optimizer step over all ranks: each rank runs global / (micro-batch x ranks) "
                 "micro-batches a step and accumulates their gradients (refused when it does not divide). "
                 "Default: micro-batch x ranks (one micro-batch a step)")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--lr", t.lr.lr, "Peak learning rate")->capture_default_str();
  cmd.add_option("--min-lr", t.lr.min_lr, "Learning rate at the end of the cosine decay")
      ->capture_default_str();
  cmd.add_option("--lr-warmup-iters", t.lr.warmup_iters, "Iterations of linear warm-up from 0")
      ->capture_default_str();
  cmd.add_option("--weight-decay", t.adamw.weight_decay, "AdamW decoupled weight decay (matrices only)")
      ->capture_default_str();
  cmd.add_option("--adam-beta1", t.adamw.beta1, "AdamW beta1")->capture_default_str();
  cmd.add_option("--adam-beta2", t.adamw.beta2, "AdamW beta2")->capture_default_str();
  cmd.add_option("--clip-grad", t.adamw.clip_grad, "Clip gradients to this global L2 norm; 0 disables")
      ->capture_default_str();
  cmd.add_option("--train-iters", t.train_iters, "Total training iterations")->capture_default_str();
  cmd.add_option("--seed", t.seed, "Seed of the initialisation and the data order")
      ->check(unsigned_integer())
      ->capture_default_str();
}

// Logging, evaluation, traces and metrics.
void add_progress_flags(CLI::App& cmd, TrainOptions& t) {
  cmd.add_option("--eval-interval", t.eval_interval,
                 "Evaluate validation loss every N iterations (and at the end); 0 = only at the end")
      ->capture_default_str();
  cmd.add_option("--eval-iters", t.eval_iters, "Validation batches per evaluation")->capture_default_str();
  cmd.add_option("--log-interval", t.log_interval, "Print a progress line every N iterations")
      ->capture_default_str();
  cmd.add_option(
      "--trace", t.trace_file,
      "Write a Chrome trace (Perfetto / chrome://tracing) of two training iterations: one track per "
      "stream per rank, a slice per stage and chunk");
  cmd.add_flag("--abort-on-nan", t.abort_on_nan,
               "End the whole job on a non-finite loss (default: skip that update and go on)");
  cmd.add_option("--metrics-file", t.metrics_file,
                 "Write one JSON object per logged iteration (iter, loss, lr, tokens_per_sec, val_loss)");
}

// Saving, resuming and stopping.
void add_checkpoint_flags(CLI::App& cmd, TrainCommand& c) {
  TrainOptions& t = c.options;
  bool& c_override_flag = c.override_opt_param_scheduler;
  bool& c_use_checkpoint_flag = c.use_checkpoint_opt_param_scheduler;
  cmd.add_option("--save", t.save,
                 "Checkpoint root to write, laid out as Megatron-LM's: DIR/iter_0000500/ (model.safetensors, "
                 "optimizer.safetensors with the data position, tokenizer.model) and "
                 "DIR/latest_checkpointed_iteration.txt, each save crash-consistent (docs/USAGE.md)");
  cmd.add_option("--save-interval", t.save_interval, "Save every N iterations (and at the end); 0 = end only")
      ->capture_default_str();
  cmd.add_option("--load", t.load,
                 "Resume from this checkpoint: a --save root (its latest_checkpointed_iteration.txt, or "
                 "--ckpt-step), a single-checkpoint or iteration directory, or a Hugging Face directory "
                 "(weights only). A root with no checkpoint yet (missing, empty) starts from scratch with a "
                 "notice, so '--save DIR --load DIR' restarts a job where it left off");
  cmd.add_option("--ckpt-step", t.ckpt_step,
                 "With --load ROOT: resume from ROOT/iter_<N> instead of the latest (Megatron's flag)");
  cmd.add_option(
         "--ckpt-format", t.ckpt_format,
         "How --save writes a checkpoint: gathered (world rank 0 gathers the model and writes "
         "model.safetensors and optimizer.safetensors) or sharded (every rank writes its own part in "
         "parallel, shard_RRRRR_of_WWWWW.safetensors, and rank 0 an index, checkpoint_index.json; no rank "
         "holds the whole model). --load, eval, sample and export read both, in any layout")
      ->check(CLI::IsMember({"gathered", "sharded"}))
      ->capture_default_str();
  cmd.add_option("--ckpt-keep", t.ckpt_keep,
                 "Keep the newest K complete iteration directories under --save, deleting older ones after "
                 "each successful save; 0 = keep all (ampipe's own flag; Megatron-LM has no equivalent)")
      ->capture_default_str();
  cmd.add_option(
         "--exit-on-save-failure", t.exit_on_save_failure,
         "true: a failed save (full disk, I/O error) ends the job with the error; false: log a warning, "
         "keep training and retry at the next save. Either way the previous checkpoint stays intact "
         "and latest (ampipe's own flag)")
      ->default_str("true");
  cmd.add_option(
         "--exit-interval", t.exit_interval,
         "Stop after an iteration divisible by N, saving a checkpoint first if --save is set; 0 = never")
      ->capture_default_str();
  cmd.add_flag(
      "--exit-signal-handler", t.exit_signal_handler,
      "On SIGTERM or SIGINT (a cluster's preemption, Ctrl-C) every rank stops at the next step boundary, "
      "saves a checkpoint (with --save) and exits with status 0; a second signal ends the run at once. "
      "Without it the signal ends the run at once, named on stderr (Megatron's flag)");
  cmd.add_flag(
      "--override-opt_param-scheduler", c_override_flag,
      "Resuming: a given optimizer or schedule flag (--lr, --min-lr, --lr-warmup-iters, --weight-decay, "
      "--adam-beta1, --adam-beta2, --clip-grad, --train-iters, --micro-batch-size) may differ from the "
      "checkpoint's value, and wins; flags left out still take the checkpoint's (Megatron's flag)");
  cmd.add_flag(
      "--use-checkpoint-opt_param-scheduler", c_use_checkpoint_flag,
      "Resuming: take every optimizer and schedule setting from the checkpoint, whatever the flags say "
      "(Megatron's flag). Without either flag, a left-out one takes the checkpoint's value and a given "
      "one that differs is refused");
}

// The data and its tokenizer.
void add_data_flags(CLI::App& cmd, TrainOptions& t) {
  // Several values in one occurrence make a blend; a later occurrence replaces an earlier one (as
  // every flag here: a script's defaults can be overridden by appending).
  cmd.add_option_function<std::vector<std::string>>(
         "--data-path", [&t](const std::vector<std::string>& items) { t.data_path = items; },
         "A text file (tokenized whole; its last 10% of tokens is validation), or Megatron indexed "
         "datasets: one PREFIX (PREFIX.bin / PREFIX.idx, from ampipe preprocess), or a blend "
         "'W1 PREFIX1 W2 PREFIX2 ...' with positive weights")
      ->default_str("data/kjv.txt")
      ->expected(1, -1)
      ->trigger_on_parse();
  cmd.add_option("--split", t.split,
                 "Indexed datasets: train,validation,test proportions, by whole documents (Megatron's rule)")
      ->capture_default_str();
  cmd.add_option(
         "--tokenizer-type", t.tokenizer_type,
         "byte (one token per byte, vocabulary 256) or SentencePieceTokenizer (with --tokenizer-model); "
         "the tokenizer is saved with the checkpoint, and resuming uses it")
      ->capture_default_str();
  cmd.add_option(
      "--tokenizer-model", t.tokenizer_model,
      "The SentencePiece .model file (e.g. from ampipe tokenizer train, or a Llama/Mistral checkpoint)");
  cmd.add_option("--make-vocab-size-divisible-by", t.make_vocab_size_divisible_by,
                 "Pad the model's vocabulary to a multiple of this (Megatron's rule)")
      ->capture_default_str();
}

// Parallelism and the intra-block pipeline.
void add_parallel_flags(CLI::App& cmd, TrainCommand& c) {
  TrainOptions& t = c.options;
  cmd.add_option("--expert-model-parallel-size", t.expert_parallel_size,
                 "Ranks that share the experts of each MoE layer (EP; each holds E/EP experts); must divide "
                 "the world size and --moe-num-experts. Default 0: the largest such divisor")
      ->capture_default_str();
  add_tensor_parallel_flags(
      cmd, c.tensor_parallel, "the model trains",
      "The embedding and LM head split the vocabulary alike (padded to "
      "--make-vocab-size-divisible-by x T); the ranks of a group share each micro-batch "
      "(global batch = micro-batch x DP x micro-batches). CPU, every schedule, either checkpoint format "
      "(loadable at any T)");
  cmd.add_option(
         "--schedule", c.schedule,
         "How each transformer block runs: sequential (one piece), moe-pipe (the MoE layer's tokens in "
         "P chunks), ampipe (the sequence in P chunks: attention, all-to-all and experts per chunk)")
      ->capture_default_str();
  cmd.add_option(
         "--pipe-degree", c.pipe_degree,
         "Chunks per block (P) for moe-pipe and ampipe, or auto: the planner picks the schedule (this "
         "one or sequential), P, chunk boundaries and stage order from a cost model of this machine")
      ->capture_default_str();
  cmd.add_option(
      "--hardware", t.hardware,
      "With --pipe-degree auto and --schedule moe-pipe or ampipe (the planner), or with "
      "--overlap-moe-expert-parallel-comm (the paired step's merge): the hardware profile to plan for "
      "(JSON path or a name under profiles/); default: a quick calibration of this machine at "
      "start-up. Refused where nothing reads it");
  cmd.add_option("--chunk-boundaries", c.chunk_boundaries,
                 "Explicit ampipe chunk boundaries as positions, e.g. 0,48,96,128 (overrides --pipe-degree)");
  cmd.add_option("--chunk-policy", c.chunk_policy,
                 "How ampipe cuts the attention side when no boundaries are given: equal (equal lengths) or "
                 "balanced (equal FLOPs, counting causal attention's growth along the sequence)")
      ->capture_default_str();
  cmd.add_option(
         "--moe-pipe-degree", t.schedule.moe_pipe_degree,
         "ampipe: cut the MoE side (all-to-all and experts) into this many equal chunks of its own, fed "
         "by a token buffer behind the attention chunks; 0 = the attention chunks")
      ->capture_default_str();
  cmd.add_option(
         "--stage-order", t.stage_order,
         "Order in which the compute stream takes a chunked block's stages: stage-major (all attention "
         "chunks, then all experts) or interleaved (attention c, experts c-1, combine c-2, ...)")
      ->capture_default_str();
  cmd.add_option(
         "--pipeline-scope", t.pipeline_scope,
         "How far the chunks of a chunked schedule flow: block (each block drains before the next "
         "starts), model (chunk c of block l+1 starts as soon as chunks 0..c of block l are done, "
         "forward and backward: the pipeline fills once per pass), or auto (the planner's choice with "
         "--pipe-degree auto; otherwise model when there are chunks and more than one layer)")
      ->capture_default_str();
}

// What overlaps what across the step, and what memory is traded for time: gradient reduction,
// the distributed optimizer, paired micro-batches, recomputation.
void add_overlap_flags(CLI::App& cmd, TrainOptions& t) {
  cmd.add_flag(
      "--overlap-grad-reduce", t.overlap_grad_reduce,
      "Reduce each block's gradients over the data-parallel ranks on the communication stream as soon "
      "as that block's backward is done, overlapping the backward of the blocks below (default: all "
      "gradients after the backward). Results are the same either way");
  cmd.add_flag(
      "--use-distributed-optimizer", t.use_distributed_optimizer,
      "Shard the AdamW moments over the data-parallel ranks (dense parameters over all ranks, expert "
      "parameters over the ranks holding the same experts), as Megatron's distributed optimizer: "
      "gradients are reduce-scattered, each rank updates the parameters it owns, the parameters "
      "are all-gathered. Optimizer memory per rank falls to 1/DP; results equal the plain optimizer's "
      "up to the summation order of the gradient norm");
  cmd.add_flag("--overlap-param-gather", t.overlap_param_gather,
               "With --use-distributed-optimizer and --overlap-grad-reduce: all-gather each block's updated "
               "parameters on the communication stream during the next forward (block 0's first, block l+1's "
               "under block l's attention) instead of right after the update. Results are the same");
  cmd.add_flag(
         "--overlap-moe-expert-parallel-comm{on}", t.overlap_moe_expert_parallel_comm,
         "Pair micro-batches (needs two or more a step, --global-batch-size): each micro-batch's backward "
         "runs beside the next one's forward on the same two streams, so one's all-to-alls hide behind "
         "the other's computation (Megatron-Core's combined 1F1B); the first forward and the last "
         "backward run alone. Results are the same bits. The merge of the two passes is priced by "
         "--hardware or a quick calibration at start-up. =auto: the planner pairs unless it predicts the "
         "paired step slower")
      ->default_str("off");
  cmd.add_flag("--delay-wgrad-compute", t.delay_wgrad_compute,
               "With --overlap-moe-expert-parallel-comm: compute the experts' weight gradients of each chunk "
               "after its dispatch all-to-all has left, instead of before (ZeroBubble's split of the "
               "backward). Results are the same bits");
  cmd.add_option("--recompute-granularity", t.recompute_granularity,
                 "Activation recomputation, the same results bit for bit: full (the blocks of --recompute-method "
                 "keep only their input through the forward and run their forward again just before their "
                 "backward) or selective (every block drops its attention's normed input and its experts' "
                 "activation output after use and recomputes them in the backward: less memory for a little "
                 "elementwise work)")
      ->check(CLI::IsMember({"full", "selective"}));
  cmd.add_option("--recompute-method", t.recompute_method,
                 "With --recompute-granularity full: uniform (the blocks in groups of --recompute-num-layers, each "
                 "group recomputed from its input) or block (the first --recompute-num-layers blocks recomputed "
                 "one by one, the rest kept)")
      ->check(CLI::IsMember({"uniform", "block"}));
  cmd.add_option("--recompute-num-layers", t.recompute_num_layers,
                 "Blocks per recomputed group (uniform) or recomputed blocks (block); in [1, --num-layers]")
      ->capture_default_str();
}

// --load: the checkpoint's model config for every model flag left out; a given one must match.
void merge_checkpoint_model_config(TrainCommand& c) {
  TrainOptions& o = c.options;
  const CLI::App& cmd = *c.command;
  const ModelConfig stored = read_checkpoint_config(o.load);
  const ModelConfig flags = o.model;
  o.model = stored;
  o.model.bf16 = flags.bf16;  // the run's precision, not the checkpoint's (checkpoints are float32)
  bool any_given = any_family_flag_given(c.family);
  for (const char* f : kModelFlags) any_given |= cmd.count(f) > 0;
  if (!any_given) return;
  ModelConfig merged = o.model;
  if (cmd.count("--num-layers")) merged.num_layers = flags.num_layers;
  if (cmd.count("--hidden-size")) merged.hidden_size = flags.hidden_size;
  if (cmd.count("--num-attention-heads")) merged.num_attention_heads = flags.num_attention_heads;
  if (cmd.count("--ffn-hidden-size")) merged.ffn_hidden_size = flags.ffn_hidden_size;
  if (cmd.count("--seq-length")) merged.max_seq_len = flags.max_seq_len;
  if (cmd.count("--moe-num-experts")) merged.num_experts = flags.num_experts;
  if (cmd.count("--moe-top-k")) merged.top_k = flags.top_k;
  if (cmd.count("--moe-capacity-factor")) merged.capacity_factor = flags.capacity_factor;
  if (cmd.count("--moe-aux-loss-coeff")) merged.aux_loss_weight = flags.aux_loss_weight;
  apply_family_flags(c.family, merged);
  const std::string diff = stored.differences(merged);
  AMPIPE_CHECK(diff.empty()) << "--load " << o.load
                             << ": the checkpoint's model config does not match the flags ("
                             << "checkpoint vs flags: " << diff << ")";
}

// Which optimizer/schedule flags were given, and how a resumed run treats a difference.
void parse_resume_flags(TrainCommand& c) {
  AMPIPE_CHECK(!(c.override_opt_param_scheduler && c.use_checkpoint_opt_param_scheduler))
      << "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler exclude each other: the "
         "first "
         "takes the flags' values, the second the checkpoint's";
  TrainOptions& t = c.options;
  t.opt_param_scheduler = c.override_opt_param_scheduler         ? OptParamScheduler::Override
                          : c.use_checkpoint_opt_param_scheduler ? OptParamScheduler::UseCheckpoint
                                                                 : OptParamScheduler::Check;
  std::set<std::string> given;
  for (const char* f : {"--lr", "--min-lr", "--lr-warmup-iters", "--weight-decay", "--adam-beta1",
                        "--adam-beta2", "--clip-grad", "--train-iters", "--micro-batch-size",
                        "--global-batch-size"})
    if (c.command->count(f) > 0) given.insert(f);
  t.schedule_flags_given = given;
}

// --schedule, --pipe-degree, --chunk-boundaries, --chunk-policy, --device into the options.
void parse_schedule_flags(TrainCommand& c) {
  TrainOptions& t = c.options;
  t.device = parse_device(c.device);
  t.distributed_backend = parse_distributed_backend(c.distributed_backend);
  t.schedule.kind = parse_schedule(c.schedule);
  if (!c.chunk_boundaries.empty()) t.schedule.chunk_boundaries = parse_chunk_boundaries(c.chunk_boundaries);
  t.schedule.chunk_policy = parse_chunk_policy(c.chunk_policy);
  // The chunked schedules' flags do nothing with a schedule that has no such chunks: refused.
  auto refuse_unless = [&](const char* flag, bool used, const char* what) {
    AMPIPE_CHECK(c.command->count(flag) == 0 || used)
        << flag << " has no effect with --schedule " << c.schedule << ": it " << what;
  };
  const bool ampipe = t.schedule.kind == ScheduleKind::AmPipe;
  refuse_unless("--chunk-boundaries", ampipe, "sets ampipe's attention chunks (give --schedule ampipe)");
  refuse_unless("--chunk-policy", ampipe, "cuts ampipe's attention side (give --schedule ampipe)");
  refuse_unless("--moe-pipe-degree", ampipe, "cuts ampipe's MoE side (give --schedule ampipe)");
  refuse_unless("--stage-order", t.schedule.kind != ScheduleKind::Sequential,
                "orders the chunks of moe-pipe or ampipe (give one of them)");
  AMPIPE_CHECK(c.command->count("--recompute-num-layers") == 0 || t.recompute_granularity == "full")
      << "--recompute-num-layers " << t.recompute_num_layers << " has no effect without --recompute-granularity full";
  // Only the planner reads a profile, and it runs for a chunked schedule with --pipe-degree auto and
  // no explicit boundaries (train/trainer.h): elsewhere the flag would do nothing (and a bad path
  // would go unnoticed), so it is refused, saying what it needs.
  // The paired step's merge reads it too (train/trainer.h).
  if (!t.hardware.empty() && t.overlap_moe_expert_parallel_comm == "off") {
    AMPIPE_CHECK(c.pipe_degree == "auto")
        << "--hardware " << t.hardware << " is the planner's profile and has no effect with --pipe-degree "
        << c.pipe_degree
        << "; give --pipe-degree auto (or --overlap-moe-expert-parallel-comm) to use it, or leave "
        << "--hardware out";
    AMPIPE_CHECK(t.schedule.kind != ScheduleKind::Sequential)
        << "--hardware " << t.hardware << " is the planner's profile and has no effect with --schedule "
        << c.schedule << " (the planner chooses P for moe-pipe or ampipe); give --schedule ampipe or "
        << "moe-pipe, or leave --hardware out";
    AMPIPE_CHECK(t.schedule.chunk_boundaries.empty())
        << "--hardware " << t.hardware << " is the planner's profile and has no effect with "
        << "--chunk-boundaries (the boundaries are given, nothing is planned); leave one of them out";
  }
  if (c.pipe_degree == "auto") {
    t.auto_plan = true;
  } else {
    t.schedule.pipe_degree = parse_int_list("--pipe-degree", c.pipe_degree, 1).at(0);
    AMPIPE_CHECK(c.pipe_degree.find(',') == std::string::npos)
        << "--pipe-degree '" << c.pipe_degree << "' must be one integer >= 1 or auto";
  }
  t.schedule.validate();
}

}  // namespace

CLI::App* add_train_command(CLI::App& app, TrainCommand& c, int default_threads) {
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train an MoE language model (GPT or Mixtral family) on a text file, Megatron indexed datasets or a "
      "blend of them");
  c.command = cmd;
  c.threads = default_threads;
  add_model_flags(*cmd, c.options.model);
  add_family_flags(*cmd, c.family);
  add_optimizer_flags(*cmd, c.options);
  add_progress_flags(*cmd, c.options);
  add_checkpoint_flags(*cmd, c);
  add_data_flags(*cmd, c.options);
  cmd->add_option("--threads", c.threads, "Compute threads (kernels and BLAS)")->capture_default_str();
  add_device_flags(*cmd, c.device, c.distributed_backend, "the model trains");
  add_precision_flag(*cmd, c.options.model.bf16, "the model trains");
  add_parallel_flags(*cmd, c);
  add_overlap_flags(*cmd, c.options);
  return cmd;
}

int run_train_command(TrainCommand& c, Communicator& world) {
  check_tensor_parallel_flags(c.tensor_parallel, world, "train", true);
  c.options.tensor_parallel_size = c.tensor_parallel.tensor;
  c.options.sequence_parallel = c.tensor_parallel.sequence_parallel;
  c.options.expert_tensor_parallel_size = c.tensor_parallel.expert_tensor;
  parse_schedule_flags(c);
  parse_resume_flags(c);
  TrainOptions& o = c.options;
  set_threads(c.threads);
  apply_family_flags(c.family, o.model);
  o.model.validate();
  if (!o.load.empty()) {  // a root of iteration checkpoints -> the latest (or --ckpt-step's) directory
    const CheckpointLocation where = locate_checkpoint(o.load, o.ckpt_step);
    if (!where.notice.empty()) print_line(world, "ampipe train: " + where.notice);
    o.load = where.path;
    o.ckpt_step = -1;
  }
  if (!o.load.empty()) merge_checkpoint_model_config(c);
  if (o.device == Device::CUDA) use_local_cuda_device();
  print_line(world, "ampipe train: " + std::to_string(world.size()) + " rank(s), " +
                        std::to_string(c.threads) + " threads per rank" +
                        (o.device == Device::CUDA ? ", device cuda" : ""));
  TrainResult r = run_training(
      o, [&](const std::string& line) { print_line(world, line); }, &world);
  if (r.nothing_to_do) return 0;  // the trainer said so
  char buf[256];
  std::snprintf(
      buf, sizeof buf, "%lld iterations, final loss %.4f, validation loss %.4f, %.0f tokens/s, %.1f s",
      static_cast<long long>(r.iterations), r.final_loss, r.final_val_loss, r.tokens_per_sec, r.seconds);
  // A run stopped by a signal (--exit-signal-handler) is not done: a job script must not take it so.
  print_line(world, std::string(r.exit_signal != 0 ? "stopped early: " : "done: ") + buf);
  return 0;
}

}  // namespace ampipe
