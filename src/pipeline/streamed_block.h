// StreamedBlock: runs a block's schedule on two streams, compute and communication, so that the
// all-to-all of one chunk overlaps the attention or the experts of another
// (shared/ARCHITECTURE.md, "One block under AMPipe"; core/stream.h).
//
// Every communicator call of the block runs on the comm stream in one program order, the same on
// every rank, so overlapping can never reorder collectives between ranks. The compute stream takes
// the stages in the schedule's order:
//   stage-major   every chunk's attention + routing, then every chunk's experts, then every
//                 chunk's combine (as the published AMPipe code does);
//   interleaved   attention of chunk c, then the experts of chunk c-1, then the combine of c-2, ...
// A sequential schedule runs as one chunk of the whole sequence (the same block, its stages still
// on the two streams, where they can be timed and traced but cannot overlap).
// The host thread only issues work and waits at the end of forward() and backward(). Each stream
// runs its stages in program order, so results do not depend on timing.
#pragma once

#include <memory>

#include "core/stream.h"
#include "model/block.h"
#include "pipeline/schedule.h"

namespace ampipe {

enum class StageOrder { StageMajor, Interleaved };
const char* stage_order_name(StageOrder order);
StageOrder parse_stage_order(const std::string& name);

class StreamedBlock final : public BlockExecutor {
 public:
  // trace (borrowed, may be null): one slice per stage and chunk on "compute" / "comm" tracks of
  // rank `rank`.
  StreamedBlock(const BlockSchedule& schedule, StageOrder order, TraceRecorder* trace = nullptr, int rank = 0);

  Tensor forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                 RoutingStats& stats) const override;
  Tensor backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                  double aux_grad_scale) const override;

 private:
  BlockSchedule schedule_;
  StageOrder order_;
  std::unique_ptr<Stream> compute_, comm_;

  // The order in which the compute stream takes the three per-chunk stages (0: attention and
  // routing, 1: experts, 2: combine) for P chunks.
  std::vector<std::pair<int, size_t>> stage_sequence(size_t chunks) const;
};

}  // namespace ampipe
