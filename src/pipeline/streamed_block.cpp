#include "pipeline/streamed_block.h"

#include "kernels/elementwise.h"
#include "pipeline/block_rows.h"

namespace ampipe {

using pipeline_detail::chunk_rows;
using pipeline_detail::write_chunk_rows;

const char* stage_order_name(StageOrder order) {
  return order == StageOrder::StageMajor ? "stage-major" : "interleaved";
}

StageOrder parse_stage_order(const std::string& name) {
  if (name == "stage-major" || name == "stage_major") return StageOrder::StageMajor;
  if (name == "interleaved") return StageOrder::Interleaved;
  AMPIPE_CHECK(false) << "--stage-order '" << name << "' is not one of: stage-major, interleaved";
  return StageOrder::StageMajor;
}

StreamedBlock::StreamedBlock(const BlockSchedule& schedule, StageOrder order, TraceRecorder* trace, int rank)
    : schedule_(schedule),
      order_(order),
      compute_(std::make_unique<Stream>("compute", trace, rank)),
      comm_(std::make_unique<Stream>("comm", trace, rank)) {
  schedule_.validate();
  if (schedule_.kind == ScheduleKind::Sequential) {  // one ampipe chunk is the sequential block
    schedule_.kind = ScheduleKind::AmPipe;
    schedule_.pipe_degree = 1;
    schedule_.chunk_boundaries.clear();
  }
}

std::vector<std::pair<int, size_t>> StreamedBlock::stage_sequence(size_t chunks) const {
  std::vector<std::pair<int, size_t>> seq;
  if (order_ == StageOrder::StageMajor) {
    for (int stage = 0; stage < 3; ++stage)
      for (size_t c = 0; c < chunks; ++c) seq.emplace_back(stage, c);
    return seq;
  }
  // Interleaved: at step s, attention of chunk s, experts of s-1, combine of s-2.
  for (size_t s = 0; s < chunks + 2; ++s)
    for (int stage = 0; stage < 3; ++stage)
      if (s >= static_cast<size_t>(stage) && s - stage < chunks) seq.emplace_back(stage, s - stage);
  return seq;
}

Tensor StreamedBlock::forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch,
                              int64_t seq_len, RoutingStats& stats) const {
  ctx = BlockContext{};
  ctx.batch = batch;
  ctx.seq_len = seq_len;
  const int64_t T = x.dim(0);
  Tensor y = Tensor::empty(x.shape());
  Tensor h_full;
  std::vector<int64_t> bounds;
  if (schedule_.kind == ScheduleKind::MoePipe) {
    pipeline_detail::set_token_chunks(ctx, T, schedule_.pipe_degree);
  } else {
    bounds = schedule_.boundaries(seq_len);
    pipeline_detail::size_chunks(ctx, bounds.size() - 1);
  }
  const size_t P = ctx.moe.size();
  std::vector<Tensor> h(P);
  std::vector<Event> routed(P), dispatched(P), computed(P), combined(P);
  Stream& cs = *compute_;
  Stream& ms = *comm_;

  if (schedule_.kind == ScheduleKind::MoePipe) {
    cs.submit("attention", [&] { h_full = block.attention.forward(ctx.attention, x, batch, seq_len); });
  } else {
    cs.submit("ln1+qkv", [&] { block.attention.begin_forward(ctx.attention, x, batch, seq_len); });
  }
  for (auto [stage, c] : stage_sequence(P)) {
    const std::string chunk = " c" + std::to_string(c);
    if (stage == 0) {
      cs.submit((schedule_.kind == ScheduleKind::AmPipe ? "attn+route" : "route") + chunk, [&, c] {
        if (schedule_.kind == ScheduleKind::AmPipe) {
          size_t id = 0;
          h[c] = block.attention.chunk_forward(ctx.attention, bounds[c], bounds[c + 1], &id);
          pipeline_detail::set_attention_chunk(ctx, c, id);
        } else {
          h[c] = chunk_rows(ctx, c, h_full);
        }
        block.moe.begin_forward(ctx.moe[c], h[c], stats);
      });
      cs.record(routed[c]);
      ms.wait(routed[c]);
      ms.submit("a2a dispatch" + chunk, [&, c] { block.moe.exchange_dispatch(ctx.moe[c]); });
      ms.record(dispatched[c]);
    } else if (stage == 1) {
      cs.wait(dispatched[c]);
      cs.submit("experts" + chunk, [&, c] { block.moe.run_experts(ctx.moe[c]); });
      cs.record(computed[c]);
      ms.wait(computed[c]);
      ms.submit("a2a combine" + chunk, [&, c] { block.moe.exchange_combine(ctx.moe[c]); });
      ms.record(combined[c]);
    } else {
      cs.wait(combined[c]);
      cs.submit("combine" + chunk, [&, c] {
        write_chunk_rows(ctx, c, block.moe.finish_forward(ctx.moe[c]), y);
        h[c] = Tensor();
      });
    }
  }
  synchronize_all({&cs, &ms});
  return y;
}

Tensor StreamedBlock::backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                               double aux_grad_scale) const {
  const size_t P = ctx.moe.size();
  const bool ampipe = schedule_.kind == ScheduleKind::AmPipe;
  Tensor dx = Tensor::empty(dy.shape());  // ampipe: residual part per chunk; moe-pipe: dh
  std::vector<Event> begun(P), exchanged(P), computed(P), returned(P);
  Stream& cs = *compute_;
  Stream& ms = *comm_;
  for (auto [stage, c] : stage_sequence(P)) {
    const std::string chunk = " c" + std::to_string(c);
    if (stage == 0) {
      cs.submit("combine bwd" + chunk, [&, c] { block.moe.begin_backward(ctx.moe[c], chunk_rows(ctx, c, dy)); });
      cs.record(begun[c]);
      ms.wait(begun[c]);
      ms.submit("a2a combine bwd" + chunk, [&, c] { block.moe.exchange_combine_backward(ctx.moe[c]); });
      ms.record(exchanged[c]);
    } else if (stage == 1) {
      cs.wait(exchanged[c]);
      cs.submit("experts bwd" + chunk, [&, c] { block.moe.run_experts_backward(ctx.moe[c]); });
      cs.record(computed[c]);
      ms.wait(computed[c]);
      ms.submit("a2a dispatch bwd" + chunk, [&, c] { block.moe.exchange_dispatch_backward(ctx.moe[c]); });
      ms.record(returned[c]);
    } else {
      cs.wait(returned[c]);
      cs.submit((ampipe ? "route+attn bwd" : "route bwd") + chunk, [&, c] {
        Tensor dh = block.moe.finish_backward(ctx.moe[c], stats, aux_grad_scale);
        if (ampipe) block.attention.chunk_backward(ctx.attention, ctx.attention_chunk[c], dh);
        write_chunk_rows(ctx, c, dh, dx);
      });
    }
  }
  cs.submit(ampipe ? "qkv+ln1 bwd" : "attention bwd", [&] {
    if (ampipe) {
      kernels::add_inplace(dx, block.attention.finish_backward(ctx.attention));
    } else {
      dx = block.attention.backward(ctx.attention, dx);
    }
  });
  synchronize_all({&cs, &ms});
  ctx = BlockContext{};
  return dx;
}

}  // namespace ampipe
