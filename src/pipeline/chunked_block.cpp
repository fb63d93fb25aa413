#include "pipeline/chunked_block.h"

#include "kernels/elementwise.h"
#include "pipeline/block_rows.h"

namespace ampipe {

using pipeline_detail::chunk_rows;
using pipeline_detail::write_chunk_rows;

ChunkedBlock::ChunkedBlock(const BlockSchedule& schedule) : schedule_(schedule) { schedule_.validate(); }

Tensor ChunkedBlock::forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                             RoutingStats& stats) const {
  if (schedule_.kind == ScheduleKind::Sequential) return sequential_.forward(block, ctx, x, batch, seq_len, stats);
  ctx = BlockContext{};
  ctx.batch = batch;
  ctx.seq_len = seq_len;
  const int64_t T = x.dim(0), d = x.dim(1);
  Tensor y = Tensor::empty({T, d});

  if (schedule_.kind == ScheduleKind::MoePipe) {
    Tensor h = block.attention.forward(ctx.attention, x, batch, seq_len);
    pipeline_detail::set_token_chunks(ctx, T, schedule_.pipe_degree);
    for (size_t c = 0; c < ctx.moe.size(); ++c)
      write_chunk_rows(ctx, c, block.moe.forward(ctx.moe[c], chunk_rows(ctx, c, h), stats), y);
    return y;
  }

  // AMPipe: QKV once; stage-major order: every chunk's attention, then every chunk's MoE layer.
  block.attention.begin_forward(ctx.attention, x, batch, seq_len);
  const std::vector<int64_t> bounds = schedule_.boundaries(seq_len);
  std::vector<Tensor> h(bounds.size() - 1);
  pipeline_detail::size_chunks(ctx, h.size());
  for (size_t c = 0; c + 1 < bounds.size(); ++c) {
    size_t id = 0;
    h[c] = block.attention.chunk_forward(ctx.attention, bounds[c], bounds[c + 1], &id);
    pipeline_detail::set_attention_chunk(ctx, c, id);
  }
  for (size_t c = 0; c < h.size(); ++c) {
    write_chunk_rows(ctx, c, block.moe.forward(ctx.moe[c], h[c], stats), y);
    h[c] = Tensor();
  }
  return y;
}

Tensor ChunkedBlock::backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                              double aux_grad_scale) const {
  if (schedule_.kind == ScheduleKind::Sequential) return sequential_.backward(block, ctx, dy, stats, aux_grad_scale);
  Tensor dx;
  if (schedule_.kind == ScheduleKind::MoePipe) {
    Tensor dh = Tensor::empty(dy.shape());
    for (size_t c = 0; c < ctx.moe.size(); ++c)
      write_chunk_rows(ctx, c, block.moe.backward(ctx.moe[c], chunk_rows(ctx, c, dy), stats, aux_grad_scale), dh);
    dx = block.attention.backward(ctx.attention, dh);
  } else {
    // Per chunk: MoE backward, then the chunk's attention backward (dK, dV accumulate); the
    // chunk's dh is also the residual part of dx. QKV and LN1 backward once at the end.
    dx = Tensor::empty(dy.shape());
    for (size_t c = ctx.moe.size(); c-- > 0;) {
      Tensor dh = block.moe.backward(ctx.moe[c], chunk_rows(ctx, c, dy), stats, aux_grad_scale);
      block.attention.chunk_backward(ctx.attention, ctx.attention_chunk[c], dh);
      write_chunk_rows(ctx, c, dh, dx);
    }
    kernels::add_inplace(dx, block.attention.finish_backward(ctx.attention));
  }
  ctx = BlockContext{};
  return dx;
}

}  // namespace ampipe
