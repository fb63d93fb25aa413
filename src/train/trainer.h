// The single-process training loop: batches, forward/backward, AdamW, logging, evaluation,
// checkpoints, resume.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/device_communicator.h"
#include "core/device.h"
#include "model/config.h"
#include "pipeline/schedule.h"
#include "train/layout.h"
#include "train/optimizer.h"

namespace ampipe {

// Resuming with optimizer or schedule flags that differ from the checkpoint's
// (train/resume_schedule.h): refuse (Check), use the flags' values (Override,
// --override-opt_param-scheduler) or the checkpoint's (UseCheckpoint,
// --use-checkpoint-opt_param-scheduler).
enum class OptParamScheduler { Check, Override, UseCheckpoint };

struct TrainOptions {
  ModelConfig model;
  int64_t micro_batch_size = 16;
  // --global-batch-size: sequences per optimizer step over all ranks; each rank runs
  // global / (micro_batch_size x ranks) micro-batches and accumulates their gradients (Megatron's
  // rule; refused when it does not divide). 0: micro_batch_size x ranks (one micro-batch a step).
  int64_t global_batch_size = 0;
  LrSchedule lr{3e-3, 3e-4, 200, 1};  // decay_iters is set from train_iters
  AdamWConfig adamw;
  int64_t train_iters = 3000;
  int64_t eval_interval = 500;  // 0: evaluate only at the end
  int64_t eval_iters = 20;      // validation batches per evaluation
  int64_t log_interval = 50;
  std::string save;             // checkpoint directory ("" = none)
  int64_t save_interval = 0;    // 0: save only at the end
  std::string load;             // resume from this checkpoint ("" = fresh start); a root of iteration
                                // checkpoints resolves to its latest (train/checkpoint.h); one
                                // without a checkpoint yet starts from scratch with a notice
  int64_t ckpt_step = -1;       // with load: resume from iter_<ckpt_step> instead of the latest
  // Resuming: which optimizer/schedule flags the command line gave (the others take the
  // checkpoint's values; train/resume_schedule.h). nullopt: all of them count as given.
  std::optional<std::set<std::string>> schedule_flags_given;
  OptParamScheduler opt_param_scheduler = OptParamScheduler::Check;
  // --exit-signal-handler: on SIGTERM or SIGINT (core/exit_signal.h) every rank stops at the next
  // step boundary, a checkpoint is saved (with --save) and the run ends normally.
  bool exit_signal_handler = false;
  int64_t ckpt_keep = 0;        // keep the newest K complete iteration directories; 0 = all
  bool exit_on_save_failure = true;  // a failed save ends the job; else warn and retry at the next save
  int64_t exit_interval = 0;    // stop (after saving) when the iteration is a multiple; 0 = never
  uint64_t seed = 1234;
  // A text file, an indexed dataset prefix, or pairs "WEIGHT PREFIX" (train/corpus.h).
  std::vector<std::string> data_path = {"data/kjv.txt"};
  std::string split = "969,30,1";  // indexed datasets: train,validation,test parts by documents
  // The tokenizer (train/tokenizer.h): "byte" or "SentencePieceTokenizer" with its .model file.
  // The model's vocabulary is the tokenizer's, padded to a multiple of make_vocab_size_divisible_by.
  std::string tokenizer_type = "byte";
  std::string tokenizer_model;
  int64_t make_vocab_size_divisible_by = 128;
  std::string metrics_file;     // JSON Lines, one object per logged iteration ("" = none)
  int64_t expert_parallel_size = 0;  // EP; 0 = the largest divisor of the world size and E
  // Tensor parallelism (train/layout.h): --tensor-model-parallel-size T, --sequence-parallel,
  // --expert-tensor-parallel-size ETP. The model runs T > 1 without sequence parallelism, on the
  // CPU, --schedule sequential, gathered checkpoints, no distributed optimizer, and ETP = 1:
  // validate_train_options refuses the rest; sequence_parallel at T = 1 is ignored.
  int64_t tensor_parallel_size = 1;
  bool sequence_parallel = false;
  int64_t expert_tensor_parallel_size = 1;
  BlockSchedule schedule;           // how each block is cut (--schedule, --pipe-degree, --chunk-boundaries)
  std::string stage_order = "stage-major";  // compute-stream order: stage-major or interleaved
  // --pipeline-scope: "block" (each block drains before the next), "model" (chunks flow across the
  // blocks; pipeline/task_list.h) or "auto": the planner's choice with --pipe-degree auto, else
  // model for a chunked schedule over more than one block, block otherwise.
  std::string pipeline_scope = "auto";
  // --overlap-grad-reduce: reduce each block's gradients on the comm stream as soon as its backward
  // is done (train/distributed.h GradientBuckets), instead of all of them after the backward.
  bool overlap_grad_reduce = false;
  // --use-distributed-optimizer: the AdamW moments sharded over the data-parallel ranks (dense over
  // the world, expert over the expert-data group), gradients reduce-scattered, parameters
  // all-gathered after the update (train/optimizer.h, train/distributed.h ShardSpace).
  bool use_distributed_optimizer = false;
  // --overlap-param-gather: the all-gather of the updated parameters deferred to the next forward,
  // block by block on the comm stream (needs the two flags above, as in Megatron-LM).
  bool overlap_param_gather = false;
  // --overlap-moe-expert-parallel-comm: "off"; "on" (each micro-batch's backward beside the next
  // one's forward in one task list, GptMoe::backward_and_forward; needs two or more micro-batches a
  // step); "auto" (the planner's choice, plan/simulator.h predict_step). The merge of the two passes
  // is priced by `hardware` or a quick calibration, as --pipe-degree auto is.
  std::string overlap_moe_expert_parallel_comm = "off";
  // --delay-wgrad-compute: the experts' weight gradients of each MoE chunk after its dispatch
  // all-to-all has left (pipeline/task_list.h ExpertsWgrad); needs the flag above (Megatron's rule).
  bool delay_wgrad_compute = false;
  // --ckpt-format: "gathered" (world rank 0 writes model.safetensors and optimizer.safetensors) or
  // "sharded" (every rank its own shard, train/sharded_checkpoint.h).
  std::string ckpt_format = "gathered";
  // Activation recomputation (model/gpt.h recompute_groups): --recompute-granularity ("" none, or
  // "full"), --recompute-method ("uniform" or "block"), --recompute-num-layers.
  std::string recompute_granularity;
  std::string recompute_method;
  int64_t recompute_num_layers = 1;
  // --pipe-degree auto: the planner (plan/autotune.h) picks the schedule (sequential, or `schedule`'s
  // kind), P, chunk policy, MoE side and stage order at start-up, from `hardware` (a profile path or
  // shipped name) or, when empty, a quick calibration of this machine.
  bool auto_plan = false;
  std::string hardware;
  std::string trace_file;           // Chrome trace of two iterations (the 2nd and 3rd of this run)
  bool abort_on_nan = false;    // a non-finite loss ends the job; otherwise the step is skipped
  // --device: where the model, its activations and the optimizer state live. Device::CUDA needs a
  // usable GPU; checkpoints are the same files.
  Device device = Device::CPU;
  // --distributed-backend: what moves GPU buffers between ranks (comm/device_communicator.h).
  DistributedBackend distributed_backend = DistributedBackend::Default;
};

// --device NAME: "cpu" or "cuda". "cuda" first checks that a GPU can be used (require_cuda: the
// error names the reason and what to do). Throws ampipe::Error for any other name.
Device parse_device(const std::string& name);
// "cpu" or "cuda".
const char* device_flag_name(Device device);

// The global batch of `o` on `ranks` ranks (--global-batch-size, or micro-batch x ranks), and the
// micro-batches each rank runs per step (throws ampipe::Error naming the flags when it does not divide).
// `ranks` is the data-parallel size DP (data_parallel_size): the ranks of a tensor group share one
// micro-batch, as in Megatron-LM.
int64_t global_batch(const TrainOptions& o, int64_t ranks);
int64_t micro_batches_per_step(const TrainOptions& o, int64_t ranks);
// DP = world_size / --tensor-model-parallel-size (refused, naming both, when it does not divide).
int64_t data_parallel_size(const TrainOptions& o, int64_t world_size);
// Throws ampipe::Error naming the first bad option and what is allowed (run_training calls it).
void validate_train_options(const TrainOptions& o);
// The parallel sizes the options ask for (train/layout.h); expert 0 = the default EP.
ParallelSizes parallel_sizes(const TrainOptions& o);
// One "key=value" line per option that every rank of a run must agree on.
std::string describe_train_options(const TrainOptions& o);

struct TrainResult {
  int64_t iterations = 0;          // total completed (including resumed ones)
  double final_loss = 0;           // training loss of the last iteration
  double final_val_loss = 0;       // validation loss at the end (nats per token)
  double final_val_nats_per_byte = 0;  // the same per byte of text (text files; 0 for indexed data)
  double tokens_per_sec = 0;       // over this run
  double seconds = 0;              // wall time of this run
  bool nothing_to_do = false;      // the checkpoint was already at --train-iters: no step was run
  int exit_signal = 0;             // the signal that stopped the run early (--exit-signal-handler); 0 = none
};

// Runs training; progress lines go to `log` (one string per line; called on world rank 0 only).
// Throws ampipe::Error on bad configuration or data. `world` (borrowed; nullptr = this process
// alone): every rank trains on its own micro-batch of the global batch (micro-batch x world size),
// with expert parallelism inside groups of --expert-model-parallel-size ranks; collective.
TrainResult run_training(TrainOptions options, const std::function<void(const std::string&)>& log,
                         Communicator* world = nullptr);

}  // namespace ampipe
