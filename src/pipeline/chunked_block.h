// ChunkedBlock: runs a transformer block under a BlockSchedule (pipeline/schedule.h).
//
// moe-pipe: attention over the whole sequence, then the MoE layer on P equal chunks of the tokens.
// ampipe:   LN1 + QKV once, then per sequence chunk c: attention (queries of the chunk against
//           keys [0, end_c)), projection, residual, and the MoE layer on the chunk's tokens; the
//           backward runs chunk by chunk (dK, dV accumulating) and the QKV/LN1 backward once.
// sequential: the block as one piece.
// This executor runs the stages in program order on the calling thread; the stage order is the
// schedule's (stage-major: every chunk's attention, then every chunk's MoE), which is where the
// two-stream executor overlaps the all-to-all with compute.
#pragma once

#include "model/block.h"
#include "pipeline/schedule.h"

namespace ampipe {

class ChunkedBlock final : public BlockExecutor {
 public:
  explicit ChunkedBlock(const BlockSchedule& schedule);

  Tensor forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                 RoutingStats& stats) const override;
  Tensor backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                  double aux_grad_scale) const override;

  const BlockSchedule& schedule() const { return schedule_; }

 private:
  BlockSchedule schedule_;
  SequentialBlock sequential_;
};

}  // namespace ampipe
