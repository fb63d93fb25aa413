#include "model/block.h"

#include <algorithm>

#include "model/initialize.h"

namespace ampipe {

StandaloneBlock::StandaloneBlock(const ModelConfig& config, const ModelParallel& parallel, int64_t num_layers,
                                 Device device)
    : config_(config), params_(device) {
  AMPIPE_CHECK(num_layers >= 1) << "a standalone block needs num_layers >= 1, got " << num_layers;
  require_device_communicators(device, parallel);
  config_.num_layers = num_layers;
  config_.validate();
  attention_.reserve(num_layers);
  moe_.reserve(num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    const std::string prefix = "blocks." + std::to_string(l) + ".";
    attention_.emplace_back(config_, params_, prefix, parallel);
    moe_.emplace_back(config_, params_, prefix, parallel);
  }
  for (int64_t l = 0; l < num_layers; ++l) blocks_.push_back({attention_[l], moe_[l]});
  params_.set_compute_dtype(config_.bf16 ? DType::BF16 : DType::F32);
}

void StandaloneBlock::initialize(uint64_t seed) {
  // The tensor-parallel shards drawn whole and taken, as GptMoe::initialize: the T = 1 weights.
  std::vector<TensorParallelShard> shards;
  for (const Block& b : blocks_)
    for (const std::vector<TensorParallelShard>& layer :
         {b.attention.tensor_parallel_shards(), b.moe.experts().expert_tensor_parallel_shards()})
      shards.insert(shards.end(), layer.begin(), layer.end());
  initialize_parameters(params_, config_, seed, shards);
  params_.refresh_compute();
}

Tensor SequentialBlock::forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch,
                                int64_t seq_len, RoutingStats& stats) const {
  ctx.batch = batch;
  ctx.seq_len = seq_len;
  ctx.moe.assign(1, MoeContext{});
  Tensor h = block.attention.forward(ctx.attention, x, batch, seq_len);
  return block.moe.forward(ctx.moe[0], h, stats);
}

Tensor SequentialBlock::backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                                 double aux_grad_scale) const {
  Tensor dh = block.moe.backward(ctx.moe[0], dy, stats, aux_grad_scale);
  Tensor dx = block.attention.backward(ctx.attention, dh);
  ctx = BlockContext{};
  return dx;
}

Tensor BlockExecutor::forward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                     const Tensor& x, int64_t batch, int64_t seq_len,
                                     std::vector<RoutingStats>& stats,
                                     const std::function<void(int64_t)>& block_needed) const {
  AMPIPE_CHECK(ctx.size() == blocks.size() && stats.size() == blocks.size())
      << "forward_layers: " << blocks.size() << " blocks but " << ctx.size() << " contexts and " << stats.size()
      << " statistics";
  Tensor h = x;
  for (size_t l = 0; l < blocks.size(); ++l) {
    if (block_needed) block_needed(static_cast<int64_t>(l));
    h = forward(blocks[l], ctx[l], h, batch, seq_len, stats[l]);
  }
  return h;
}

Tensor BlockExecutor::backward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                      const Tensor& dy, const std::vector<RoutingStats>& stats,
                                      double aux_grad_scale, const std::function<void(int64_t)>& block_done) const {
  AMPIPE_CHECK(ctx.size() == blocks.size() && stats.size() == blocks.size())
      << "backward_layers: " << blocks.size() << " blocks but " << ctx.size() << " contexts and " << stats.size()
      << " statistics";
  Tensor d = dy;
  for (size_t l = blocks.size(); l-- > 0;) {
    d = backward(blocks[l], ctx[l], d, stats[l], aux_grad_scale);
    if (block_done) block_done(static_cast<int64_t>(l));
  }
  return d;
}

std::pair<Tensor, Tensor> BlockExecutor::paired_layers(const std::vector<Block>& blocks,
                                                       PairedBackward backward, PairedForward forward) const {
  Tensor dx = backward_layers(blocks, backward.ctx, backward.dy, backward.stats, backward.aux_grad_scale, {});
  Tensor y = forward_layers(blocks, forward.ctx, forward.x, forward.batch, forward.seq_len, forward.stats);
  return {dx, y};
}

}  // namespace ampipe
