// One transformer block (attention half + MoE half) and the seam through which a schedule runs it.
//
// A BlockExecutor decides how a block's stages are cut and ordered: SequentialBlock (here) runs the
// block as one piece; pipeline/ provides the chunked schedules (MoE-only chunks, AMPipe). Every
// executor computes the same function (docs/MODEL.md; capacity per routing group aside), and
// keeps what its backward needs in a BlockContext owned by the caller.
#pragma once

#include <cstdint>
#include <functional>
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
  std::vector<size_t> attention_input;    // per attention chunk: its index in `attention.inputs`
                                          // (model-scope pipeline: norm1 + QKV per chunk)
};

// The two passes of BlockExecutor::paired_layers: one micro-batch's backward (as backward_layers
// takes it, without gradient reduction) and the next micro-batch's forward (as forward_layers,
// without parameter gathering).
struct PairedBackward {
  std::vector<BlockContext>& ctx;
  const Tensor& dy;
  const std::vector<RoutingStats>& stats;
  double aux_grad_scale;
};
struct PairedForward {
  std::vector<BlockContext>& ctx;
  const Tensor& x;
  int64_t batch, seq_len;
  std::vector<RoutingStats>& stats;
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

  // A pass over L blocks: x -> the output of blocks[L-1], ctx and stats one per block (sized by
  // the caller). The default runs forward() block by block; an executor may overlap blocks.
  // block_needed (may be empty) is called once per block, first block first, before anything reads
  // that block's parameters: the hook of the distributed optimizer's overlapped parameter
  // all-gather. The default calls it on this thread before the block's forward(); a streamed
  // executor calls it as a task of its communication stream (the same rules as block_done below).
  virtual Tensor forward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                const Tensor& x, int64_t batch, int64_t seq_len,
                                std::vector<RoutingStats>& stats,
                                const std::function<void(int64_t)>& block_needed = {}) const;
  // dy of the last block's output -> dx of the first block's input; releases every ctx.
  // block_done (may be empty) is called once per block, last block first, as soon as every
  // parameter gradient of that block is final: the default calls it on this thread after the
  // block's backward(); a streamed executor calls it as a task of its communication stream, so it
  // may call communicators (in the same order on every rank) but must not wait for other streams.
  virtual Tensor backward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                 const Tensor& dy, const std::vector<RoutingStats>& stats, double aux_grad_scale,
                                 const std::function<void(int64_t)>& block_done) const;
  // --overlap-moe-expert-parallel-comm: backward_layers(backward) and forward_layers(forward) over the
  // same blocks, returning {dx of the backward, output of the forward}, with the results of running
  // them one after the other (which the default does), bit for bit. A streamed executor runs the two
  // passes' tasks on its streams together (pipeline/paired_tasks.h).
  virtual std::pair<Tensor, Tensor> paired_layers(const std::vector<Block>& blocks, PairedBackward backward,
                                                  PairedForward forward) const;
};

// Blocks standing alone, as the benchmarks and the planner's calibration time them: num_layers
// blocks with their own parameters (names of the model's blocks, "blocks.<l>."), their two halves
// built from the config as the model builds them, and the model's initialisation rule
// (model/initialize.h) as a num_layers-layer model; no embedding or head.
// Not copyable or movable (the halves point into the registry).
class StandaloneBlock {
 public:
  // config.num_layers is ignored: num_layers (>= 1) blocks are built, their parameters on `device`
  // (Device::CUDA on more than one rank is refused, as for GptMoe).
  explicit StandaloneBlock(const ModelConfig& config, const ModelParallel& parallel = {}, int64_t num_layers = 1,
                           Device device = Device::CPU);
  StandaloneBlock(const StandaloneBlock&) = delete;
  StandaloneBlock& operator=(const StandaloneBlock&) = delete;

  // Also fills the bf16 compute copies (--bf16); after any other change of the values, call
  // params().refresh_compute() before the next pass.
  void initialize(uint64_t seed);
  Block block() const { return blocks_[0]; }                    // block 0
  const std::vector<Block>& blocks() const { return blocks_; }  // every block, in order
  int64_t num_layers() const { return config_.num_layers; }
  ParameterRegistry& params() { return params_; }

 private:
  ModelConfig config_;
  ParameterRegistry params_;
  std::vector<AttentionLayer> attention_;
  std::vector<MoeLayer> moe_;
  std::vector<Block> blocks_;
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
