#include "pipeline/chunked_block.h"

#include "kernels/elementwise.h"
#include "kernels/permute.h"

namespace ampipe {

namespace {

// Rows of MoE chunk c of a [B*N, w] buffer: a view when contiguous, else a gathered copy.
Tensor chunk_rows(const BlockContext& ctx, size_t c, const Tensor& full) {
  if (!ctx.moe_rows[c].defined()) return full.rows(ctx.moe_first_row[c], ctx.moe_first_row[c] + ctx.moe_row_count[c]);
  Tensor out = Tensor::empty({ctx.moe_row_count[c], full.dim(1)});
  kernels::gather_rows(full, ctx.moe_rows[c], out);
  return out;
}

void write_chunk_rows(const BlockContext& ctx, size_t c, const Tensor& rows, Tensor full) {
  if (!ctx.moe_rows[c].defined()) {
    full.rows(ctx.moe_first_row[c], ctx.moe_first_row[c] + ctx.moe_row_count[c]).copy_from(rows);
  } else {
    kernels::scatter_rows(rows, ctx.moe_rows[c], full);
  }
}

void add_chunk(BlockContext& ctx, Tensor rows, int64_t first_row, int64_t count, size_t attention_chunk) {
  ctx.moe_rows.push_back(rows);
  ctx.moe_first_row.push_back(first_row);
  ctx.moe_row_count.push_back(count);
  ctx.attention_chunk.push_back(attention_chunk);
}

}  // namespace

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
    const int64_t P = std::min<int64_t>(schedule_.pipe_degree, T);
    int64_t first = 0;
    for (int64_t c = 0; c < P; ++c) {
      const int64_t count = T / P + (c < T % P ? 1 : 0);
      add_chunk(ctx, Tensor(), first, count, 0);
      first += count;
    }
    ctx.moe.assign(ctx.moe_row_count.size(), MoeContext{});
    for (size_t c = 0; c < ctx.moe.size(); ++c)
      write_chunk_rows(ctx, c, block.moe.forward(ctx.moe[c], chunk_rows(ctx, c, h), stats), y);
    return y;
  }

  // AMPipe: QKV once; stage-major order: every chunk's attention, then every chunk's MoE layer.
  block.attention.begin_forward(ctx.attention, x, batch, seq_len);
  const std::vector<int64_t> bounds = schedule_.boundaries(seq_len);
  std::vector<Tensor> h(bounds.size() - 1);
  for (size_t c = 0; c + 1 < bounds.size(); ++c) {
    size_t id = 0;
    h[c] = block.attention.chunk_forward(ctx.attention, bounds[c], bounds[c + 1], &id);
    const AttentionChunk& ac = ctx.attention.chunks[id];
    add_chunk(ctx, ac.rows, ac.first_row, h[c].dim(0), id);
  }
  ctx.moe.assign(h.size(), MoeContext{});
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
