#include "pipeline/streamed_block.h"

#include "kernels/elementwise.h"
#include "kernels/permute.h"

namespace ampipe {

namespace {

// Rows of positions [begin, end) of every sequence in a [B*N, w] buffer: a view when they are
// contiguous (one sequence, or the whole sequence), else a gathered copy.
struct Rows {
  int64_t first = 0, count = 0;
  Tensor index;  // int32 rows, or undefined when contiguous

  Rows(int64_t batch, int64_t seq_len, int64_t begin, int64_t end) : count(batch * (end - begin)) {
    if (batch == 1 || (begin == 0 && end == seq_len)) {
      first = batch == 1 ? begin : 0;
    } else {
      index = chunk_row_index(batch, seq_len, begin, end);
    }
  }
  Tensor read(const Tensor& full) const {
    if (!index.defined()) return full.rows(first, first + count);
    Tensor out = Tensor::empty({count, full.dim(1)});
    kernels::gather_rows(full, index, out);
    return out;
  }
  void write(const Tensor& rows, Tensor full) const {
    if (!index.defined()) {
      Tensor dst = full.rows(first, first + count);
      if (dst.data<float>() != rows.data<float>()) dst.copy_from(rows);
    } else {
      kernels::scatter_rows(rows, index, full);
    }
  }
};

}  // namespace

StreamedBlock::StreamedBlock(const BlockSchedule& schedule, StageOrder order, TraceRecorder* trace, int rank)
    : schedule_(schedule),
      order_(order),
      compute_(std::make_unique<Stream>("compute", trace, rank)),
      comm_(std::make_unique<Stream>("comm", trace, rank)) {
  schedule_.validate();
}

void StreamedBlock::execute(const std::vector<StageTask>& tasks,
                            const std::function<void(const StageTask&)>& run) const {
  std::vector<Event> done(tasks.size());
  std::vector<bool> waited_on(tasks.size(), false);
  for (const StageTask& t : tasks)
    for (int w : t.waits) waited_on[w] = true;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const StageTask& t = tasks[i];
    Stream& s = t.stream() == StreamRole::Compute ? *compute_ : *comm_;
    for (int w : t.waits) s.wait(done[w]);
    const std::string label =
        std::string(stage_name(t.stage)) + (t.chunk >= 0 ? " c" + std::to_string(t.chunk) : std::string());
    s.submit(label, [&run, &t] { run(t); });
    if (waited_on[i]) s.record(done[i]);
  }
  synchronize_all({compute_.get(), comm_.get()});
}

Tensor StreamedBlock::forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch,
                              int64_t seq_len, RoutingStats& stats) const {
  ctx = BlockContext{};
  ctx.batch = batch;
  ctx.seq_len = seq_len;
  plan_ = schedule_.plan(seq_len);
  const ChunkPlan& p = plan_;
  const size_t A = p.attention.size() - 1, M = p.moe.size() - 1;
  ctx.moe.assign(M, MoeContext{});
  ctx.attention_chunk.assign(A, 0);
  std::vector<Rows> moe_rows;
  for (size_t m = 0; m < M; ++m) moe_rows.emplace_back(batch, seq_len, p.moe[m], p.moe[m + 1]);
  Tensor h = Tensor::empty(x.shape());  // the token buffer: the MoE layer's input
  Tensor y = Tensor::empty(x.shape());
  execute(forward_tasks(p, order_), [&](const StageTask& t) {
    const size_t c = static_cast<size_t>(t.chunk);
    switch (t.stage) {
      case Stage::AttnBegin: block.attention.begin_forward(ctx.attention, x, batch, seq_len); break;
      case Stage::AttnChunk: {
        Tensor hc = block.attention.chunk_forward(ctx.attention, p.attention[c], p.attention[c + 1],
                                                  &ctx.attention_chunk[c]);
        Rows(batch, seq_len, p.attention[c], p.attention[c + 1]).write(hc, h);
        break;
      }
      case Stage::Route: block.moe.begin_forward(ctx.moe[c], moe_rows[c].read(h), stats); break;
      case Stage::Dispatch: block.moe.exchange_dispatch(ctx.moe[c]); break;
      case Stage::Experts: block.moe.run_experts(ctx.moe[c]); break;
      case Stage::Combine: block.moe.exchange_combine(ctx.moe[c]); break;
      case Stage::Finish: moe_rows[c].write(block.moe.finish_forward(ctx.moe[c]), y); break;
      default: AMPIPE_CHECK(false) << "stage " << stage_name(t.stage) << " in a forward task list";
    }
  });
  return y;
}

Tensor StreamedBlock::backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                               double aux_grad_scale) const {
  const ChunkPlan& p = plan_;
  AMPIPE_CHECK(ctx.moe.size() + 1 == p.moe.size()) << "StreamedBlock::backward without its forward";
  const int64_t batch = ctx.batch, seq_len = ctx.seq_len;
  std::vector<Rows> moe_rows;
  for (size_t m = 0; m + 1 < p.moe.size(); ++m) moe_rows.emplace_back(batch, seq_len, p.moe[m], p.moe[m + 1]);
  Tensor dh = Tensor::empty(dy.shape());  // gradient of the token buffer (residual path included)
  execute(backward_tasks(p, order_), [&](const StageTask& t) {
    const size_t c = static_cast<size_t>(t.chunk);
    switch (t.stage) {
      case Stage::FinishBwd: block.moe.begin_backward(ctx.moe[c], moe_rows[c].read(dy)); break;
      case Stage::CombineBwd: block.moe.exchange_combine_backward(ctx.moe[c]); break;
      case Stage::ExpertsBwd: block.moe.run_experts_backward(ctx.moe[c]); break;
      case Stage::DispatchBwd: block.moe.exchange_dispatch_backward(ctx.moe[c]); break;
      case Stage::RouteBwd:
        moe_rows[c].write(block.moe.finish_backward(ctx.moe[c], stats, aux_grad_scale), dh);
        break;
      case Stage::AttnChunkBwd:
        block.attention.chunk_backward(
            ctx.attention, ctx.attention_chunk[c],
            Rows(batch, seq_len, p.attention[c], p.attention[c + 1]).read(dh));
        break;
      case Stage::AttnFinishBwd: kernels::add_inplace(dh, block.attention.finish_backward(ctx.attention)); break;
      default: AMPIPE_CHECK(false) << "stage " << stage_name(t.stage) << " in a backward task list";
    }
  });
  ctx = BlockContext{};
  return dh;
}

}  // namespace ampipe
