// Resuming keeps the schedule: the optimizer and learning-rate settings a checkpoint records
// (ScheduleSettings, train/checkpoint.h) against the ones a resumed run is given, with Megatron-LM's
// rules and flag names (docs/USAGE.md, "Resuming: the schedule").
//
//   - a setting whose flag was left out takes the checkpoint's value;
//   - a flag given with another value is refused, naming each such flag and both values, unless
//     --override-opt_param-scheduler (the flag's value wins; the ones left out still come from the
//     checkpoint) or --use-checkpoint-opt_param-scheduler (every setting is the checkpoint's; a given
//     flag that differs is named in a notice).
//
// The settings: --lr, --min-lr, --lr-warmup-iters (the decay runs to --train-iters), --weight-decay,
// --adam-beta1, --adam-beta2, --clip-grad, --train-iters, and the global batch (--global-batch-size,
// or --micro-batch-size x ranks): without --global-batch-size the checkpoint's global batch
// continues, a given --micro-batch-size that divides it over the ranks accumulating the rest, a
// left-out one taking it whole over this run's ranks.
// AdamW's eps has no flag and is always the checkpoint's.
#pragma once

#include <string>
#include <vector>

#include "train/checkpoint.h"
#include "train/trainer.h"

namespace ampipe {

// Applies the rules above to `o` (whose schedule_flags_given and opt_param_scheduler say which
// flags were given and how to treat a difference) for a run on `world_size` ranks. Returns the
// notices to log (what was taken from where); throws ampipe::Error naming every refused flag.
std::vector<std::string> apply_checkpoint_schedule(TrainOptions& o, const ScheduleSettings& stored,
                                                   int64_t world_size);

// The settings of a run, as recorded in its checkpoints.
ScheduleSettings schedule_settings(const TrainOptions& o, int64_t world_size);

}  // namespace ampipe
