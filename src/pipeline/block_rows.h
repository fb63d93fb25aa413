// Rows of a block's MoE chunks in the [B*N, d] buffers (internal to pipeline/).
#pragma once

#include "kernels/permute.h"
#include "model/block.h"

namespace ampipe::pipeline_detail {

// Rows of MoE chunk c of a [B*N, w] buffer: a view when contiguous, else a gathered copy.
inline Tensor chunk_rows(const BlockContext& ctx, size_t c, const Tensor& full) {
  if (!ctx.moe_rows[c].defined())
    return full.rows(ctx.moe_first_row[c], ctx.moe_first_row[c] + ctx.moe_row_count[c]);
  Tensor out = Tensor::empty({ctx.moe_row_count[c], full.dim(1)});
  kernels::gather_rows(full, ctx.moe_rows[c], out);
  return out;
}

inline void write_chunk_rows(const BlockContext& ctx, size_t c, const Tensor& rows, Tensor full) {
  if (!ctx.moe_rows[c].defined()) {
    full.rows(ctx.moe_first_row[c], ctx.moe_first_row[c] + ctx.moe_row_count[c]).copy_from(rows);
  } else {
    kernels::scatter_rows(rows, ctx.moe_rows[c], full);
  }
}

// Sizes the per-chunk bookkeeping for P chunks.
inline void size_chunks(BlockContext& ctx, size_t P) {
  ctx.moe.assign(P, MoeContext{});
  ctx.moe_rows.assign(P, Tensor());
  ctx.moe_first_row.assign(P, 0);
  ctx.moe_row_count.assign(P, 0);
  ctx.attention_chunk.assign(P, 0);
}

// moe-pipe: P equal contiguous chunks of the T tokens.
inline void set_token_chunks(BlockContext& ctx, int64_t tokens, int64_t pipe_degree) {
  const int64_t P = std::min<int64_t>(pipe_degree, tokens);
  size_chunks(ctx, static_cast<size_t>(P));
  int64_t first = 0;
  for (int64_t c = 0; c < P; ++c) {
    ctx.moe_first_row[c] = first;
    ctx.moe_row_count[c] = tokens / P + (c < tokens % P ? 1 : 0);
    first += ctx.moe_row_count[c];
  }
}

// ampipe: MoE chunk c is attention chunk `id`'s rows.
inline void set_attention_chunk(BlockContext& ctx, size_t c, size_t id) {
  const AttentionChunk& ac = ctx.attention.chunks[id];
  ctx.moe_rows[c] = ac.rows;
  ctx.moe_first_row[c] = ac.first_row;
  ctx.moe_row_count[c] = ctx.batch * (ac.end - ac.begin);
  ctx.attention_chunk[c] = id;
}

}  // namespace ampipe::pipeline_detail
