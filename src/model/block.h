// One transformer block (attention half + MoE half) and the seam through which a schedule runs it.
//
// A BlockExecutor decides how a block's stages are cut and ordered: SequentialBlock (here) runs the
// block as one piece; pipeline/ provides the chunked schedules (MoE-only chunks, AMPipe). Every
// executor computes the same function (docs/MODEL.md; capacity per routing group aside), and
// keeps what its backward needs in a BlockContext owned by the caller.
#pragma once

#include <cstdint>
#include <vector>

#include "model/attention_layer.h"
#include "model/moe/moe_layer.h"
#include "model/parallel.h"

namespace ampipe {

struct Block {
  const AttentionLayer& attention;
  const MoeLayer& moe;
};

struct BlockContext {
  int64_t batch = 0, seq_len = 0;
  AttentionContext attention;
  std::vector<MoeContext> moe;            // one per MoE chunk (routing group)
  std::vector<size_t> attention_chunk;    // per attention chunk: its index in `attention.chunks`
};

class BlockExecutor {
 public:
  virtual ~BlockExecutor() = default;
  // x [B*N, d] -> block output [B*N, d]; routing statistics of every MoE chunk are added to stats.
  virtual Tensor forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                         RoutingStats& stats) const = 0;
  // dy [B*N, d] -> dx [B*N, d]; accumulates parameter gradients; releases ctx. stats: the totals
  // the aux loss was formed from; aux_grad_scale: d(loss)/d(aux) for this layer.
  virtual Tensor backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                          double aux_grad_scale) const = 0;
};

// One block standing alone, as the benchmarks and the planner's calibration time it: its own
// parameters (names of block 0, "blocks.0."), its two halves built from the config as the model
// builds them, and the model's initialisation rule (model/initialize.h) as a one-layer model.
// Not copyable or movable (the halves point into the registry).
class StandaloneBlock {
 public:
  explicit StandaloneBlock(const ModelConfig& config, const ModelParallel& parallel = {});
  StandaloneBlock(const StandaloneBlock&) = delete;
  StandaloneBlock& operator=(const StandaloneBlock&) = delete;

  void initialize(uint64_t seed);
  Block block() const { return {attention_, moe_}; }
  ParameterRegistry& params() { return params_; }

 private:
  ModelConfig config_;
  ParameterRegistry params_;
  AttentionLayer attention_;
  MoeLayer moe_;
};

// The block as one piece: attention over the whole sequence, then the MoE layer over all tokens.
class SequentialBlock final : public BlockExecutor {
 public:
  Tensor forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                 RoutingStats& stats) const override;
  Tensor backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                  double aux_grad_scale) const override;
};

}  // namespace ampipe
