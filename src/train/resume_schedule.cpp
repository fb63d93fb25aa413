#include "train/resume_schedule.h"

#include <cstdio>
#include <functional>

#include "core/error.h"

namespace ampipe {
namespace {

// One setting: its flag, and its value in the options and in the checkpoint.
struct Setting {
  const char* flag;
  std::function<double&(TrainOptions&)> option;
  std::function<double(const ScheduleSettings&)> stored;
};

std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

// The integer settings go through a double copy, set back after the rules ran.
struct Counts {
  double warmup, train_iters;
};

std::vector<Setting> real_settings(Counts& counts) {
  return {
      {"--lr", [](TrainOptions& o) -> double& { return o.lr.lr; },
       [](const ScheduleSettings& s) { return s.lr.lr; }},
      {"--min-lr", [](TrainOptions& o) -> double& { return o.lr.min_lr; },
       [](const ScheduleSettings& s) { return s.lr.min_lr; }},
      {"--lr-warmup-iters", [&counts](TrainOptions&) -> double& { return counts.warmup; },
       [](const ScheduleSettings& s) { return static_cast<double>(s.lr.warmup_iters); }},
      {"--weight-decay", [](TrainOptions& o) -> double& { return o.adamw.weight_decay; },
       [](const ScheduleSettings& s) { return s.adamw.weight_decay; }},
      {"--adam-beta1", [](TrainOptions& o) -> double& { return o.adamw.beta1; },
       [](const ScheduleSettings& s) { return s.adamw.beta1; }},
      {"--adam-beta2", [](TrainOptions& o) -> double& { return o.adamw.beta2; },
       [](const ScheduleSettings& s) { return s.adamw.beta2; }},
      {"--clip-grad", [](TrainOptions& o) -> double& { return o.adamw.clip_grad; },
       [](const ScheduleSettings& s) { return s.adamw.clip_grad; }},
      {"--train-iters", [&counts](TrainOptions&) -> double& { return counts.train_iters; },
       [](const ScheduleSettings& s) { return static_cast<double>(s.train_iters); }},
  };
}

bool given(const TrainOptions& o, const char* flag) {
  return !o.schedule_flags_given || o.schedule_flags_given->count(flag) > 0;
}

// What a flag's value becomes under the policy: the checkpoint's, or the flag's (then `conflict`
// names the difference, for the refusal or the notice).
struct Resolution {
  bool take_stored = true;
  std::string conflict;  // "--lr 0.01 (checkpoint 0.003)", or "" when they agree or the flag was left out
};

Resolution resolve(const TrainOptions& o, const char* flag, double flag_value, double stored_value,
                   const std::string& flag_text, const std::string& stored_text) {
  Resolution r;
  if (!given(o, flag)) return r;
  if (flag_value != stored_value)
    r.conflict = std::string(flag) + " " + flag_text + " (checkpoint " + stored_text + ")";
  r.take_stored = o.opt_param_scheduler == OptParamScheduler::UseCheckpoint || r.conflict.empty();
  return r;
}

}  // namespace

ScheduleSettings schedule_settings(const TrainOptions& o, int64_t world_size) {
  ScheduleSettings s;
  s.lr = o.lr;
  s.lr.decay_iters = o.train_iters;
  s.adamw = o.adamw;
  s.train_iters = o.train_iters;
  s.global_batch = o.micro_batch_size * world_size;
  return s;
}

std::vector<std::string> apply_checkpoint_schedule(TrainOptions& o, const ScheduleSettings& stored,
                                                   int64_t world_size) {
  Counts counts{static_cast<double>(o.lr.warmup_iters), static_cast<double>(o.train_iters)};
  std::vector<std::string> conflicts;
  for (const Setting& s : real_settings(counts)) {
    double& value = s.option(o);
    const Resolution r = resolve(o, s.flag, value, s.stored(stored), number(value), number(s.stored(stored)));
    if (!r.conflict.empty()) conflicts.push_back(r.conflict);
    if (r.take_stored) value = s.stored(stored);
  }
  o.lr.warmup_iters = static_cast<int64_t>(counts.warmup);
  o.train_iters = static_cast<int64_t>(counts.train_iters);
  o.adamw.eps = stored.adamw.eps;
  // The global batch: the micro-batch over this run's ranks.
  const int64_t global = o.micro_batch_size * world_size;
  const Resolution r =
      resolve(o, "--micro-batch-size", static_cast<double>(global), static_cast<double>(stored.global_batch),
              std::to_string(o.micro_batch_size) + " x " + std::to_string(world_size) + " rank(s)",
              "global batch " + std::to_string(stored.global_batch));
  if (!r.conflict.empty()) conflicts.push_back(r.conflict);
  if (r.take_stored) {
    AMPIPE_CHECK(stored.global_batch % world_size == 0)
        << "the checkpoint's global batch of " << stored.global_batch << " sequences does not divide over "
        << world_size << " rank(s); give --micro-batch-size with --override-opt_param-scheduler to change it";
    o.micro_batch_size = stored.global_batch / world_size;
  }
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
