// The helpers of TrainOptions (train/trainer.h): the device flag, the global batch and its
// micro-batches, the checks of every option and the description ranks compare.
#include <sstream>

#include "core/device.h"
#include "core/error.h"
#include "train/trainer.h"

namespace ampipe {

int64_t global_batch(const TrainOptions& o, int64_t ranks) {
  return o.global_batch_size > 0 ? o.global_batch_size : o.micro_batch_size * ranks;
}

int64_t micro_batches_per_step(const TrainOptions& o, int64_t ranks) {
  const int64_t per_pass = o.micro_batch_size * ranks, global = global_batch(o, ranks);
  AMPIPE_CHECK(global % per_pass == 0)
      << "--global-batch-size " << global << " is not a multiple of --micro-batch-size " << o.micro_batch_size
      << " x " << ranks << " data-parallel rank(s) = " << per_pass
      << " (each step runs global / (micro-batch x DP) "
      << "micro-batches on every rank)";
  return global / per_pass;
}

int64_t data_parallel_size(const TrainOptions& o, int64_t world_size) {
  const int64_t T = o.tensor_parallel_size;
  AMPIPE_CHECK(T >= 1 && world_size % T == 0)
      << "--tensor-model-parallel-size " << T << " does not divide the " << world_size
      << " rank(s); the world is T x DP ranks";
  return world_size / T;
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  AMPIPE_CHECK(name == "cuda") << "--device '" << name << "' is not one of: cpu, cuda";
  require_cuda("--device cuda");
  return Device::CUDA;
}

const char* device_flag_name(Device device) { return device == Device::CUDA ? "cuda" : "cpu"; }

ParallelSizes parallel_sizes(const TrainOptions& o) {
  ParallelSizes s;
  s.tensor = o.tensor_parallel_size;
  s.sequence_parallel = o.sequence_parallel;
  s.expert_tensor = o.expert_tensor_parallel_size;
  s.expert = o.expert_parallel_size;
  return s;
}

// What tensor parallelism does not combine with yet, refused before any work, naming the flag.
static void check_tensor_parallel_options(const TrainOptions& o) {
  const std::string tp = "--tensor-model-parallel-size " + std::to_string(o.tensor_parallel_size);
  AMPIPE_CHECK(o.device == Device::CPU)
      << tp
      << " runs on the CPU only so far (the vocabulary-parallel loss is a CPU function); got --device cuda";
  AMPIPE_CHECK(!o.sequence_parallel || o.model.max_seq_len % o.tensor_parallel_size == 0)
      << tp << " --sequence-parallel splits each sequence's positions over the " << o.tensor_parallel_size
      << " ranks of a tensor group: --seq-length " << o.model.max_seq_len << " is not divisible by "
      << o.tensor_parallel_size;
  if (o.sequence_parallel) {
    for (int64_t b : o.schedule.chunk_boundaries) {
      AMPIPE_CHECK(b % o.tensor_parallel_size == 0)
          << tp << " --sequence-parallel splits every chunk over the group: --chunk-boundaries " << b
          << " is not a multiple of " << o.tensor_parallel_size;
    }
  }
}

void validate_train_options(const TrainOptions& o) {
  o.model.validate();
  require_runnable_sizes(parallel_sizes(o), /*runs_tensor_parallel=*/true);
  if (o.device == Device::CUDA) require_cuda("--device cuda");
  if (o.tensor_parallel_size > 1) check_tensor_parallel_options(o);
  AMPIPE_CHECK(o.micro_batch_size >= 1) << "--micro-batch-size must be at least 1, got " << o.micro_batch_size;
  const bool full = o.recompute_granularity == "full";
  AMPIPE_CHECK(o.recompute_granularity.empty() || full || o.recompute_granularity == "selective")
      << "--recompute-granularity '" << o.recompute_granularity << "' is not one of: full, selective";
  AMPIPE_CHECK(!full || !o.recompute_method.empty())
      << "--recompute-granularity full needs --recompute-method uniform or block (as in Megatron-LM)";
  AMPIPE_CHECK(full || o.recompute_method.empty())
      << "--recompute-method " << o.recompute_method << " has no effect without --recompute-granularity full";
  AMPIPE_CHECK(!full || (o.recompute_num_layers >= 1 && o.recompute_num_layers <= o.model.num_layers))
      << "--recompute-num-layers " << o.recompute_num_layers << " is not in [1, " << o.model.num_layers
      << "] (the model's --num-layers)";
  AMPIPE_CHECK(o.global_batch_size >= 0)
      << "--global-batch-size must be at least 1 (or left out), got " << o.global_batch_size;
  AMPIPE_CHECK(o.train_iters >= 1) << "--train-iters must be at least 1, got " << o.train_iters;
  AMPIPE_CHECK(o.eval_interval >= 0) << "--eval-interval must be >= 0, got " << o.eval_interval;
  AMPIPE_CHECK(o.eval_iters >= 1) << "--eval-iters must be at least 1, got " << o.eval_iters;
  AMPIPE_CHECK(o.log_interval >= 1) << "--log-interval must be at least 1, got " << o.log_interval;
  AMPIPE_CHECK(o.exit_interval >= 0) << "--exit-interval must be >= 0, got " << o.exit_interval;
  AMPIPE_CHECK(o.ckpt_keep >= 0) << "--ckpt-keep must be >= 0 (0 keeps all), got " << o.ckpt_keep;
  AMPIPE_CHECK(o.ckpt_step >= -1) << "--ckpt-step must be >= 0, got " << o.ckpt_step;
  AMPIPE_CHECK(o.ckpt_step < 0 || !o.load.empty()) << "--ckpt-step needs --load";
  AMPIPE_CHECK(o.save_interval >= 0) << "--save-interval must be >= 0, got " << o.save_interval;
  AMPIPE_CHECK(o.lr.lr > 0) << "--lr must be positive, got " << o.lr.lr;
  AMPIPE_CHECK(o.lr.min_lr >= 0 && o.lr.min_lr <= o.lr.lr)
      << "--min-lr must be in [0, --lr " << o.lr.lr << "], got " << o.lr.min_lr;
  AMPIPE_CHECK(o.lr.warmup_iters >= 0) << "--lr-warmup-iters must be >= 0, got " << o.lr.warmup_iters;
  AMPIPE_CHECK(o.adamw.weight_decay >= 0) << "--weight-decay must be >= 0, got " << o.adamw.weight_decay;
  AMPIPE_CHECK(o.adamw.clip_grad >= 0) << "--clip-grad must be >= 0 (0 disables), got " << o.adamw.clip_grad;
  AMPIPE_CHECK(!o.overlap_param_gather || (o.use_distributed_optimizer && o.overlap_grad_reduce))
      << "--overlap-param-gather overlaps the distributed optimizer's parameter all-gather with the next "
         "forward; "
         "it needs --use-distributed-optimizer and --overlap-grad-reduce (as in Megatron-LM)";
  const std::string& pairing = o.overlap_moe_expert_parallel_comm;
  AMPIPE_CHECK(pairing == "off" || pairing == "on" || pairing == "auto")
      << "--overlap-moe-expert-parallel-comm '" << pairing
      << "' is not one of: on (the flag alone), auto, off";
  AMPIPE_CHECK(!o.delay_wgrad_compute || pairing != "off")
      << "--delay-wgrad-compute delays the experts' weight gradients of a paired step; it needs "
         "--overlap-moe-expert-parallel-comm (as in Megatron-LM)";
  AMPIPE_CHECK(pairing == "off" || !full)
      << "--overlap-moe-expert-parallel-comm does not combine with --recompute-granularity full (a "
         "recomputed "
         "group would run a third pass inside the pair); use selective recomputation or leave one out";
  AMPIPE_CHECK(o.ckpt_format == "gathered" || o.ckpt_format == "sharded")
      << "--ckpt-format '" << o.ckpt_format << "' is not one of: gathered, sharded";
  AMPIPE_CHECK(o.ckpt_format == "gathered" || !o.save.empty())
      << "--ckpt-format " << o.ckpt_format << " says how --save writes checkpoints, and there is no --save";
  AMPIPE_CHECK(o.pipeline_scope == "auto" || o.pipeline_scope == "block" || o.pipeline_scope == "model")
      << "--pipeline-scope '" << o.pipeline_scope << "' is not one of: auto, block, model";
}

std::string describe_train_options(const TrainOptions& o) {
  std::ostringstream s;
  for (const auto& [k, v] : o.model.to_metadata()) s << k << "=" << v << "\n";
  for (const std::string& item : o.data_path) s << "data_path=" << item << "\n";
  s << "micro_batch_size=" << o.micro_batch_size << "\nglobal_batch_size=" << o.global_batch_size
    << "\nlr=" << o.lr.lr << "\nmin_lr=" << o.lr.min_lr << "\nwarmup=" << o.lr.warmup_iters
    << "\nweight_decay=" << o.adamw.weight_decay << "\nclip_grad=" << o.adamw.clip_grad
    << "\ntrain_iters=" << o.train_iters << "\nseed=" << o.seed << "\nsplit=" << o.split
    << "\ntokenizer=" << o.tokenizer_type << ":" << o.tokenizer_model << "\nload=" << o.load
    << "\nsave=" << o.save << "\nexpert_parallel_size=" << o.expert_parallel_size
    << "\ntensor_parallel_size=" << o.tensor_parallel_size << "\nsequence_parallel=" << o.sequence_parallel
    << "\nexpert_tensor_parallel_size=" << o.expert_tensor_parallel_size
    << "\neval_interval=" << o.eval_interval << "\neval_iters=" << o.eval_iters
    << "\nexit_interval=" << o.exit_interval << "\nschedule=" << o.schedule.describe()
    << "\nstage_order=" << o.stage_order << "\npipeline_scope=" << o.pipeline_scope
    << "\noverlap_grad_reduce=" << o.overlap_grad_reduce
    << "\nuse_distributed_optimizer=" << o.use_distributed_optimizer
    << "\noverlap_param_gather=" << o.overlap_param_gather << "\nckpt_format=" << o.ckpt_format
    << "\npairing=" << o.overlap_moe_expert_parallel_comm << "\ndelay_wgrad=" << o.delay_wgrad_compute
    << "\nrecompute=" << o.recompute_granularity << ":" << o.recompute_method << ":" << o.recompute_num_layers
    << "\ndevice=" << device_flag_name(o.device) << "\n";
  return s.str();
}

}  // namespace ampipe
