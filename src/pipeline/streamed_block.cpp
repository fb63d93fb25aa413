#include "pipeline/streamed_block.h"

#include "kernels/elementwise.h"
#include "kernels/permute.h"

namespace ampipe {

namespace {

// Rows of positions [begin, end) of every sequence in a [B*N, w] buffer: a view when they are
// contiguous (one sequence, or the whole sequence), else a gathered copy. The index lives on the
// device of the buffers it moves.
struct Rows {
  int64_t first = 0, count = 0;
  Tensor index;  // int32 rows, or undefined when contiguous

  Rows(int64_t batch, int64_t seq_len, int64_t begin, int64_t end, Device device) : count(batch * (end - begin)) {
    if (batch == 1 || (begin == 0 && end == seq_len)) {
      first = batch == 1 ? begin : 0;
    } else {
      index = chunk_row_index(batch, seq_len, begin, end, device);
    }
  }
  Tensor read(const Tensor& full) const {
    if (!index.defined()) return full.rows(first, first + count);
    Tensor out = Tensor::empty({count, full.dim(1)}, DType::F32, full.device());
    kernels::gather_rows(full, index, out);
    return out;
  }
  void write(const Tensor& rows, Tensor full) const {
    if (!index.defined()) {
      full.rows(first, first + count).copy_from(rows);  // nothing to do when rows is that view
    } else {
      kernels::scatter_rows(rows, index, full);
    }
  }
  // full's rows += rows
  void add(const Tensor& rows, Tensor full) const {
    if (!index.defined()) {
      kernels::add_inplace(full.rows(first, first + count), rows);
      return;
    }
    Tensor sum = read(full);
    kernels::add_inplace(sum, rows);
    kernels::scatter_rows(sum, index, full);
  }
};

std::vector<Rows> rows_of_chunks(const std::vector<int64_t>& boundaries, int64_t batch, int64_t seq_len,
                                 Device device) {
  std::vector<Rows> rows;
  for (size_t c = 0; c + 1 < boundaries.size(); ++c)
    rows.emplace_back(batch, seq_len, boundaries[c], boundaries[c + 1], device);
  return rows;
}

}  // namespace

StreamedBlock::StreamedBlock(const BlockSchedule& schedule, StageOrder order, TraceRecorder* trace, int rank,
                             PipelineScope scope, Device device)
    : schedule_(schedule),
      order_(order),
      scope_(scope),
      device_(device),
      compute_(std::make_unique<Stream>("compute", trace, rank, device)),
      comm_(std::make_unique<Stream>("comm", trace, rank, device)) {
  schedule_.validate();
}

void StreamedBlock::execute(const std::vector<StageTask>& tasks, const std::function<void(const StageTask&)>& run,
                            bool label_layers) const {
  // The GPU streams are non-blocking: they do not wait for work the calling thread enqueued on its
  // own stream (the embedding, the gradients zeroed before a backward), so the host waits for it.
  if (device_ == Device::CUDA) cuda_synchronize();
  std::vector<Event> done(tasks.size());
  std::vector<bool> waited_on(tasks.size(), false);
  for (const StageTask& t : tasks)
    for (int w : t.waits) waited_on[w] = true;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const StageTask& t = tasks[i];
    Stream& s = t.stream() == StreamRole::Compute ? *compute_ : *comm_;
    for (int w : t.waits) s.wait(done[w]);
    std::string label = std::string(stage_name(t.stage)) + (t.chunk >= 0 ? " c" + std::to_string(t.chunk) : std::string());
    if (label_layers) label += " L" + std::to_string(t.layer);
    if (!inject_failure_.empty() && label == inject_failure_)
      s.submit(label, [] { AMPIPE_CHECK(false) << "injected failure (AMPIPE_INJECT_TASK_FAILURE)"; });
    else
      s.submit(label, [&run, &t] { run(t); });
    if (waited_on[i]) s.record(done[i]);
  }
  synchronize_all({compute_.get(), comm_.get()});
}

Tensor StreamedBlock::forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch,
                              int64_t seq_len, RoutingStats& stats) const {
  std::vector<BlockContext> contexts(1);
  std::vector<RoutingStats> all_stats{stats};
  Tensor y = forward_layers({block}, contexts, x, batch, seq_len, all_stats);
  ctx = std::move(contexts[0]);
  stats = std::move(all_stats[0]);
  return y;
}

Tensor StreamedBlock::backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                               double aux_grad_scale) const {
  std::vector<BlockContext> contexts(1);
  contexts[0] = std::move(ctx);
  Tensor dx = backward_layers({block}, contexts, dy, {stats}, aux_grad_scale, {});
  ctx = BlockContext{};
  return dx;
}

Tensor StreamedBlock::forward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                     const Tensor& x, int64_t batch, int64_t seq_len,
                                     std::vector<RoutingStats>& stats,
                                     const std::function<void(int64_t)>& block_needed) const {
  const size_t L = blocks.size();
  AMPIPE_CHECK(L >= 1 && ctx.size() == L && stats.size() == L)
      << "forward_layers: " << L << " blocks but " << ctx.size() << " contexts and " << stats.size() << " statistics";
  plan_ = schedule_.plan(seq_len);
  const ChunkPlan& p = plan_;
  const size_t A = p.attention.size() - 1, M = p.moe.size() - 1;
  const std::vector<Rows> attn_rows = rows_of_chunks(p.attention, batch, seq_len, x.device()),
                          moe_rows = rows_of_chunks(p.moe, batch, seq_len, x.device());
  // in[l]: block l's input (in[0] = x, in[l + 1] written by block l's finishes); h[l]: its token buffer.
  std::vector<Tensor> in(L + 1), h(L);
  in[0] = x;
  for (size_t l = 0; l < L; ++l) {
    in[l + 1] = Tensor::empty(x.shape(), DType::F32, x.device());
    h[l] = Tensor::empty(x.shape(), DType::F32, x.device());
    BlockContext& c = ctx[l];
    c = BlockContext{};
    c.batch = batch;
    c.seq_len = seq_len;
    c.moe.assign(M, MoeContext{});
    c.attention_chunk.assign(A, 0);
    c.attention_input.assign(A, 0);
    blocks[l].attention.prepare_forward(c.attention, in[l], batch, seq_len);
  }
  const PassShape pass{static_cast<int64_t>(L), scope_, false, static_cast<bool>(block_needed)};
  execute(forward_tasks(p, order_, pass), [&](const StageTask& t) {
    const size_t c = static_cast<size_t>(t.chunk), l = static_cast<size_t>(t.layer);
    const Block& block = blocks[l];
    BlockContext& bc = ctx[l];
    switch (t.stage) {
      case Stage::AttnBegin: bc.attention_input.assign(A, block.attention.input_forward(bc.attention, 0, seq_len)); break;
      case Stage::QkvChunk:
        bc.attention_input[c] = block.attention.input_forward(bc.attention, p.attention[c], p.attention[c + 1]);
        break;
      case Stage::AttnChunk: {
        Tensor hc = block.attention.chunk_forward(bc.attention, p.attention[c], p.attention[c + 1],
                                                  &bc.attention_chunk[c]);
        attn_rows[c].write(hc, h[l]);
        break;
      }
      case Stage::Route: block.moe.begin_forward(bc.moe[c], moe_rows[c].read(h[l]), stats[l]); break;
      case Stage::Dispatch: block.moe.exchange_dispatch(bc.moe[c]); break;
      case Stage::Experts: block.moe.run_experts(bc.moe[c]); break;
      case Stage::Combine: block.moe.exchange_combine(bc.moe[c]); break;
      case Stage::Finish: moe_rows[c].write(block.moe.finish_forward(bc.moe[c]), in[l + 1]); break;
      case Stage::ParamGather:
        block_needed(static_cast<int64_t>(l));
        break;
      default: AMPIPE_CHECK(false) << "stage " << stage_name(t.stage) << " in a forward task list";
    }
  }, L > 1);
  return in[L];
}

Tensor StreamedBlock::backward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                      const Tensor& dy, const std::vector<RoutingStats>& stats,
                                      double aux_grad_scale, const std::function<void(int64_t)>& block_done) const {
  const ChunkPlan& p = plan_;
  const size_t L = blocks.size();
  AMPIPE_CHECK(L >= 1 && ctx.size() == L && stats.size() == L)
      << "backward_layers: " << L << " blocks but " << ctx.size() << " contexts and " << stats.size() << " statistics";
  for (const BlockContext& c : ctx)
    AMPIPE_CHECK(c.moe.size() + 1 == p.moe.size() && c.attention_input.size() + 1 == p.attention.size())
        << "StreamedBlock::backward_layers without its forward";
  const int64_t batch = ctx[0].batch, seq_len = ctx[0].seq_len;
  const std::vector<Rows> attn_rows = rows_of_chunks(p.attention, batch, seq_len, dy.device()),
                          moe_rows = rows_of_chunks(p.moe, batch, seq_len, dy.device());
  // d[l]: gradient of block l's token buffer (residual path included), which becomes the gradient
  // of its input in place once the attention side's backward is added; d[L] = dy.
  std::vector<Tensor> d(L + 1);
  d[L] = dy;
  for (size_t l = 0; l < L; ++l) d[l] = Tensor::empty(dy.shape(), DType::F32, dy.device());
  // The block's last compute task: its activations and its output gradient are no longer needed.
  auto release = [&](size_t l) {
    ctx[l] = BlockContext{};
    if (l + 1 < L) d[l + 1] = Tensor();
  };
  const PassShape pass{static_cast<int64_t>(L), scope_, static_cast<bool>(block_done)};
  execute(backward_tasks(p, order_, pass), [&](const StageTask& t) {
    const size_t c = static_cast<size_t>(t.chunk), l = static_cast<size_t>(t.layer);
    const Block& block = blocks[l];
    BlockContext& bc = ctx[l];
    switch (t.stage) {
      case Stage::FinishBwd: block.moe.begin_backward(bc.moe[c], moe_rows[c].read(d[l + 1])); break;
      case Stage::CombineBwd: block.moe.exchange_combine_backward(bc.moe[c]); break;
      case Stage::ExpertsBwd: block.moe.run_experts_backward(bc.moe[c]); break;
      case Stage::DispatchBwd: block.moe.exchange_dispatch_backward(bc.moe[c]); break;
      case Stage::RouteBwd:
        moe_rows[c].write(block.moe.finish_backward(bc.moe[c], stats[l], aux_grad_scale), d[l]);
        break;
      case Stage::AttnChunkBwd:
        block.attention.chunk_backward(bc.attention, bc.attention_chunk[c], attn_rows[c].read(d[l]));
        break;
      case Stage::QkvChunkBwd:
        attn_rows[c].add(block.attention.input_backward(bc.attention, bc.attention_input[c]), d[l]);
        if (c == 0) release(l);
        break;
      case Stage::AttnFinishBwd:
        kernels::add_inplace(d[l], block.attention.finish_backward(bc.attention));
        release(l);
        break;
      case Stage::GradReduce: block_done(static_cast<int64_t>(l)); break;
      default: AMPIPE_CHECK(false) << "stage " << stage_name(t.stage) << " in a backward task list";
    }
  }, L > 1);
  for (BlockContext& c : ctx) c = BlockContext{};
  return d[0];
}

}  // namespace ampipe
