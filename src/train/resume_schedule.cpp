#include "train/resume_schedule.h"

#include <cstdio>

#include "core/error.h"

namespace ampipe {
namespace {

std::string text(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}
std::string text(int64_t v) { return std::to_string(v); }

bool given(const TrainOptions& o, const char* flag) {
  return !o.schedule_flags_given || o.schedule_flags_given->count(flag) > 0;
}

// The rules for one setting, `value` (a field of `o`) against the checkpoint's `stored`: a flag
// left out takes the stored value; a given one that differs is listed in `conflicts` and takes the
// stored value only under --use-checkpoint-opt_param-scheduler.
template <typename T>
void resolve(const TrainOptions& o, const char* flag, T& value, T stored,
             std::vector<std::string>& conflicts) {
  if (!given(o, flag)) {
    value = stored;
    return;
  }
  if (value == stored) return;
  conflicts.push_back(std::string(flag) + " " + text(value) + " (checkpoint " + text(stored) + ")");
  if (o.opt_param_scheduler == OptParamScheduler::UseCheckpoint) value = stored;
}

// The global batch against the checkpoint's. --global-batch-size follows the rule of the other
// settings. Without it the checkpoint's global batch continues: a given --micro-batch-size that
// divides it over the ranks accumulates the rest (Megatron's rule: the micro-batch is free, the
// global batch is the schedule's); one that does not is a conflict; a left-out one takes the whole
// global batch over the ranks (one micro-batch a step).
void resolve_global_batch(TrainOptions& o, int64_t stored, int64_t world_size,
                          std::vector<std::string>& conflicts) {
  if (given(o, "--global-batch-size") && o.global_batch_size > 0) {
    int64_t global = o.global_batch_size;
    resolve(o, "--global-batch-size", global, stored, conflicts);
    o.global_batch_size = global;
    return;
  }
  if (given(o, "--micro-batch-size")) {
    const int64_t per_pass = o.micro_batch_size * world_size;
    if (stored % per_pass == 0) {
      o.global_batch_size = stored;
      return;
    }
    conflicts.push_back("--micro-batch-size " + std::to_string(o.micro_batch_size) + " x " +
                        std::to_string(world_size) + " rank(s) (checkpoint global batch " +
                        std::to_string(stored) + ")");
    if (o.opt_param_scheduler != OptParamScheduler::UseCheckpoint) return;
  }
  AMPIPE_CHECK(stored % world_size == 0)
      << "the checkpoint's global batch of " << stored << " sequences does not divide over " << world_size
      << " rank(s); give --micro-batch-size with --override-opt_param-scheduler to change it";
  o.micro_batch_size = stored / world_size;
  o.global_batch_size = 0;
}

}  // namespace

ScheduleSettings schedule_settings(const TrainOptions& o, int64_t world_size) {
  ScheduleSettings s;
  s.lr = o.lr;
  s.lr.decay_iters = o.train_iters;
  s.adamw = o.adamw;
  s.train_iters = o.train_iters;
  s.global_batch = global_batch(o, world_size);
  return s;
}

std::vector<std::string> apply_checkpoint_schedule(TrainOptions& o, const ScheduleSettings& stored,
                                                   int64_t world_size) {
  std::vector<std::string> conflicts;
  resolve(o, "--lr", o.lr.lr, stored.lr.lr, conflicts);
  resolve(o, "--min-lr", o.lr.min_lr, stored.lr.min_lr, conflicts);
  resolve(o, "--lr-warmup-iters", o.lr.warmup_iters, stored.lr.warmup_iters, conflicts);
  resolve(o, "--weight-decay", o.adamw.weight_decay, stored.adamw.weight_decay, conflicts);
  resolve(o, "--adam-beta1", o.adamw.beta1, stored.adamw.beta1, conflicts);
  resolve(o, "--adam-beta2", o.adamw.beta2, stored.adamw.beta2, conflicts);
  resolve(o, "--clip-grad", o.adamw.clip_grad, stored.adamw.clip_grad, conflicts);
  resolve(o, "--train-iters", o.train_iters, stored.train_iters, conflicts);
  o.adamw.eps = stored.adamw.eps;  // no flag
  resolve_global_batch(o, stored.global_batch, world_size, conflicts);
  std::vector<std::string> notices;
  if (conflicts.empty()) return notices;
  std::string list;
  for (const std::string& c : conflicts) list += (list.empty() ? "" : ", ") + c;
  switch (o.opt_param_scheduler) {
    case OptParamScheduler::Check:
      AMPIPE_CHECK(false) << "--load " << o.load
                          << ": the checkpoint was trained with another optimizer schedule: " << list
                          << ". Leave these flags out to continue its schedule, give "
                          << "--override-opt_param-scheduler to use the flags' values, or "
                          << "--use-checkpoint-opt_param-scheduler to take the checkpoint's";
      break;
    case OptParamScheduler::Override:
      notices.push_back("--override-opt_param-scheduler: the flags' values replace the checkpoint's: " +
                        list);
      break;
    case OptParamScheduler::UseCheckpoint:
      notices.push_back("--use-checkpoint-opt_param-scheduler: the checkpoint's values replace the flags': " +
                        list);
      break;
  }
  return notices;
}

}  // namespace ampipe
