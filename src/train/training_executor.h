// The block executor of a training run (train/trainer.h): the planner's choices for the run's
// `auto` flags, made on this machine's profile, and the executor every block runs under.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "comm/timed_communicator.h"
#include "core/trace.h"
#include "model/block.h"
#include "train/distributed.h"
#include "train/trainer.h"

namespace ampipe {

// --pipe-degree auto (the planner's schedule, order and scope), --pipeline-scope auto,
// --overlap-moe-expert-parallel-comm auto (pair unless the planner predicts it slower) and the
// balanced chunks' weight, written back into `o` and logged; refuses chunk boundaries that do not fit
// the sequence. Collective over the world when it calibrates (every rank gets the same profile, so
// the same choices). Returns the executor every block runs under, or null for SequentialBlock.
std::unique_ptr<BlockExecutor> make_block_executor(TrainOptions& o, const TrainingGroups& groups,
                                                   TimedCommunicator& world, TraceRecorder* trace,
                                                   const std::function<void(const std::string&)>& log);

}  // namespace ampipe
