// StreamedBlock: runs a block's schedule on two streams, compute and communication, so that the
// all-to-all of one chunk overlaps the attention or the experts of another
// (docs/ARCHITECTURE.md, "One block under AMPipe"; core/stream.h).
//
// It executes the task lists of pipeline/task_list.h for the schedule's chunk plan: each task on
// its stream, in list order, waiting on events of the other stream's tasks it depends on. Every
// communicator call of the block is a comm-stream task, so every rank issues the collectives in
// one program order and overlapping can never reorder them. The attention side writes its chunks
// into a token buffer that the MoE side reads in its own chunks (equal to the attention chunks
// unless the schedule cuts the MoE side separately). A sequential schedule runs as one chunk of the
// whole sequence: the same block, its stages still on the two streams, where they can be timed and
// traced but cannot overlap.
// The host thread only issues work and waits at the end of forward() and backward(). Each stream
// runs its stages in program order, so results do not depend on timing.
#pragma once

#include <memory>

#include "core/stream.h"
#include "model/block.h"
#include "pipeline/schedule.h"

namespace ampipe {

class StreamedBlock final : public BlockExecutor {
 public:
  // trace (borrowed, may be null): one slice per stage and chunk on "compute" / "comm" tracks of
  // rank `rank`.
  StreamedBlock(const BlockSchedule& schedule, StageOrder order, TraceRecorder* trace = nullptr, int rank = 0);

  Tensor forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                 RoutingStats& stats) const override;
  Tensor backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                  double aux_grad_scale) const override;

  const BlockSchedule& schedule() const { return schedule_; }
  StageOrder order() const { return order_; }

 private:
  BlockSchedule schedule_;
  StageOrder order_;
  std::unique_ptr<Stream> compute_, comm_;
  mutable ChunkPlan plan_;  // of the latest forward(), for its backward()

  // Runs `tasks` on the two streams, calling run(task) for each; waits for both streams.
  void execute(const std::vector<StageTask>& tasks, const std::function<void(const StageTask&)>& run) const;
};

}  // namespace ampipe
