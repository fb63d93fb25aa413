#include "pipeline/streamed_block.h"

#include "kernels/elementwise.h"
#include "kernels/permute.h"
#include "pipeline/paired_tasks.h"

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

// A size every block of a pass must share (its tensor-parallel size, its experts'), refused otherwise.
int64_t common_size(const std::vector<Block>& blocks, int (*size_of)(const Block&), const char* what) {
  const int size = blocks.empty() ? 1 : size_of(blocks[0]);
  for (const Block& b : blocks)
    AMPIPE_CHECK(size_of(b) == size) << "blocks of " << what << " sizes " << size << " and " << size_of(b)
                                     << " in one pass";
  return size;
}
int64_t tensor_parallel_size(const std::vector<Block>& blocks) {
  return common_size(
      blocks, [](const Block& b) { return b.attention.tp_size(); }, "tensor-parallel");
}
int64_t expert_tensor_parallel_size(const std::vector<Block>& blocks) {
  return common_size(
      blocks, [](const Block& b) { return b.moe.experts().etp_size(); }, "expert-tensor-parallel");
}

bool sequence_parallel(const std::vector<Block>& blocks) {
  return common_size(
             blocks, [](const Block& b) { return b.attention.sequence_parallel() ? 1 : 0; },
             "sequence-parallel (1: on, 0: off)") == 1;
}

// The chunks of a pass over seq_len positions (this rank's N / T under sequence parallelism): equal
// and balanced chunks are cut at that length; explicit --chunk-boundaries are whole-sequence
// positions, so under sequence parallelism each must be a multiple of T and is divided by it.
ChunkPlan pass_plan(const BlockSchedule& schedule, const std::vector<Block>& blocks, int64_t seq_len) {
  if (schedule.chunk_boundaries.empty() || !sequence_parallel(blocks)) return schedule.plan(seq_len);
  const int64_t T = tensor_parallel_size(blocks);
  BlockSchedule local = schedule;
  for (int64_t& b : local.chunk_boundaries) {
    AMPIPE_CHECK(b % T == 0) << "--chunk-boundaries " << b
                             << " is not a multiple of the tensor-parallel size " << T
                             << ": under --sequence-parallel every chunk is split evenly over the group";
    b /= T;
  }
  return local.plan(seq_len);
}

// The plan of the whole sequence that a pass's plan stands for: itself, or under sequence
// parallelism its local boundaries times T (each local chunk [a, c) is whole positions [Ta, Tc)).
ChunkPlan whole_sequence_plan(ChunkPlan plan, const std::vector<Block>& blocks) {
  if (!sequence_parallel(blocks)) return plan;
  const int64_t T = tensor_parallel_size(blocks);
  for (std::vector<int64_t>* side : {&plan.attention, &plan.moe})
    for (int64_t& b : *side) b *= T;
  return plan;
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

namespace {

// One forward pass over the blocks as stage tasks: what each forward task does (forward_layers, and
// the forward half of paired_layers).
class ForwardRun {
 public:
  ForwardRun(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx, const Tensor& x, int64_t batch,
             int64_t seq_len, std::vector<RoutingStats>& stats, const ChunkPlan& plan,
             const std::function<void(int64_t)>& block_needed)
      : blocks_(blocks),
        ctx_(ctx),
        stats_(stats),
        block_needed_(block_needed),
        p_(plan),
        partial_(blocks.size(), std::vector<Tensor>(plan.attention.size() - 1)),
        seq_len_(seq_len),
        attn_rows_(rows_of_chunks(plan.attention, batch, seq_len, x.device())),
        moe_rows_(rows_of_chunks(plan.moe, batch, seq_len, x.device())) {
    const size_t L = blocks.size(), A = plan.attention.size() - 1, M = plan.moe.size() - 1;
    AMPIPE_CHECK(L >= 1 && ctx.size() == L && stats.size() == L)
        << "forward_layers: " << L << " blocks but " << ctx.size() << " contexts and " << stats.size()
        << " statistics";
    // in[l]: block l's input (in[0] = x, in[l + 1] written by block l's finishes); h[l]: its token buffer.
    in_.resize(L + 1);
    h_.resize(L);
    in_[0] = x;
    for (size_t l = 0; l < L; ++l) {
      in_[l + 1] = Tensor::empty(x.shape(), DType::F32, x.device());
      h_[l] = Tensor::empty(x.shape(), DType::F32, x.device());
      BlockContext& c = ctx[l];
      c = BlockContext{};
      c.batch = batch;
      c.seq_len = seq_len;
      c.moe.assign(M, MoeContext{});
      c.attention_chunk.assign(A, 0);
      c.attention_input.assign(A, 0);
      blocks[l].attention.prepare_forward(c.attention, in_[l], batch, seq_len);
    }
  }

  void run(const StageTask& t) {
    const size_t c = static_cast<size_t>(t.chunk), l = static_cast<size_t>(t.layer);
    const Block& block = blocks_[l];
    BlockContext& bc = ctx_[l];
    switch (t.stage) {
      case Stage::TpAttnGather:  // comm stream, sequence parallel: the input rows of the QKV's chunk
        if (t.chunk < 0)
          block.attention.input_gather(bc.attention, 0, seq_len_);
        else
          block.attention.input_gather(bc.attention, p_.attention[c], p_.attention[c + 1]);
        break;
      case Stage::AttnBegin:
        bc.attention_input.assign(p_.attention.size() - 1,
                                  block.attention.input_forward(bc.attention, 0, seq_len_));
        break;
      case Stage::QkvChunk:
        bc.attention_input[c] =
            block.attention.input_forward(bc.attention, p_.attention[c], p_.attention[c + 1]);
        break;
      case Stage::AttnChunk: {
        Tensor hc = block.attention.chunk_forward_local(bc.attention, p_.attention[c], p_.attention[c + 1],
                                                        &bc.attention_chunk[c]);
        if (block.attention.tp_size() > 1)
          partial_[l][c] = hc;  // summed over the group by the chunk's TpAttnReduce
        else
          attn_rows_[c].write(hc, h_[l]);
        break;
      }
      case Stage::TpAttnReduce:  // comm stream: the all-reduce, then bias and residual
        // The chunk's residual rows are read here, not from the context, whose chunk list the
        // compute stream may be growing meanwhile (the next chunk's chunk_forward_local).
        attn_rows_[c].write(
            block.attention.chunk_forward_reduce(std::move(partial_[l][c]), attn_rows_[c].read(in_[l])),
            h_[l]);
        partial_[l][c] = Tensor();
        break;
      case Stage::Route:
        block.moe.begin_forward(bc.moe[c], moe_rows_[c].read(h_[l]), stats_[l]);
        break;
      case Stage::Dispatch: block.moe.exchange_dispatch(bc.moe[c]); break;
      case Stage::TpExpertsGather:
        block.moe.gather_experts(bc.moe[c]);
        break;  // comm stream
      case Stage::Experts: block.moe.run_experts(bc.moe[c]); break;
      case Stage::TpExpertsReduce:
        block.moe.reduce_experts(bc.moe[c]);
        break;  // comm stream
      case Stage::Combine: block.moe.exchange_combine(bc.moe[c]); break;
      case Stage::Finish:
        moe_rows_[c].write(block.moe.finish_forward(bc.moe[c]), in_[l + 1]);
        break;
      case Stage::ParamGather:
        block_needed_(static_cast<int64_t>(l));
        break;
      default: AMPIPE_CHECK(false) << "stage " << stage_name(t.stage) << " in a forward task list";
    }
  }
  Tensor output() const { return in_.back(); }

 private:
  const std::vector<Block>& blocks_;
  std::vector<BlockContext>& ctx_;
  std::vector<RoutingStats>& stats_;
  const std::function<void(int64_t)>& block_needed_;
  const ChunkPlan& p_;
  std::vector<std::vector<Tensor>> partial_;  // [block][attention chunk]: projections awaiting TpAttnReduce
  int64_t seq_len_;
  std::vector<Rows> attn_rows_, moe_rows_;
  std::vector<Tensor> in_, h_;
};

// One backward pass over the blocks as stage tasks (backward_layers, and the backward half of
// paired_layers).
class BackwardRun {
 public:
  BackwardRun(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx, const Tensor& dy,
              const std::vector<RoutingStats>& stats, double aux_grad_scale, const ChunkPlan& plan,
              bool delay_wgrad, const std::function<void(int64_t)>& block_done)
      : blocks_(blocks),
        ctx_(ctx),
        stats_(stats),
        aux_grad_scale_(aux_grad_scale),
        delay_wgrad_(delay_wgrad),
        block_done_(block_done) {
    const size_t L = blocks.size();
    AMPIPE_CHECK(L >= 1 && ctx.size() == L && stats.size() == L)
        << "backward_layers: " << L << " blocks but " << ctx.size() << " contexts and " << stats.size()
        << " statistics";
    for (const BlockContext& c : ctx)
      AMPIPE_CHECK(c.moe.size() + 1 == plan.moe.size() &&
                   c.attention_input.size() + 1 == plan.attention.size())
          << "StreamedBlock::backward_layers without its forward";
    const int64_t batch = ctx[0].batch, seq_len = ctx[0].seq_len;
    attn_rows_ = rows_of_chunks(plan.attention, batch, seq_len, dy.device());
    moe_rows_ = rows_of_chunks(plan.moe, batch, seq_len, dy.device());
    partial_.assign(L, std::vector<Tensor>(plan.attention.size()));
    gathered_.assign(L, std::vector<Tensor>(plan.attention.size() - 1));
    // d[l]: gradient of block l's token buffer (residual path included), which becomes the gradient
    // of its input in place once the attention side's backward is added; d[L] = dy.
    d_.resize(L + 1);
    d_[L] = dy;
    for (size_t l = 0; l < L; ++l) d_[l] = Tensor::empty(dy.shape(), DType::F32, dy.device());
  }

  void run(const StageTask& t) {
    const size_t c = static_cast<size_t>(t.chunk), l = static_cast<size_t>(t.layer);
    const Block& block = blocks_[l];
    BlockContext& bc = ctx_[l];
    switch (t.stage) {
      case Stage::FinishBwd:
        block.moe.begin_backward(bc.moe[c], moe_rows_[c].read(d_[l + 1]));
        break;
      case Stage::CombineBwd: block.moe.exchange_combine_backward(bc.moe[c]); break;
      case Stage::TpExpertsGatherBwd:
        block.moe.gather_experts_backward(bc.moe[c]);
        break;  // comm stream
      case Stage::ExpertsBwd:
        block.moe.run_experts_backward(bc.moe[c], delay_wgrad_);
        break;
      case Stage::TpExpertsReduceBwd:
        block.moe.reduce_experts_backward(bc.moe[c]);
        break;  // comm stream
      case Stage::DispatchBwd: block.moe.exchange_dispatch_backward(bc.moe[c]); break;
      case Stage::ExpertsWgrad:
        block.moe.run_experts_wgrad(bc.moe[c]);
        break;
      case Stage::RouteBwd:
        moe_rows_[c].write(block.moe.finish_backward(bc.moe[c], stats_[l], aux_grad_scale_), d_[l]);
        break;
      case Stage::TpAttnGatherBwd:  // comm stream, sequence parallel: the chunk's whole rows of dh
        gathered_[l][c] = block.attention.sequence_gather_rows(attn_rows_[c].read(d_[l]));
        break;
      case Stage::AttnChunkBwd:
        if (block.attention.sequence_parallel()) {
          block.attention.chunk_backward(bc.attention, bc.attention_chunk[c], gathered_[l][c]);
          gathered_[l][c] = Tensor();
        } else {
          block.attention.chunk_backward(bc.attention, bc.attention_chunk[c], attn_rows_[c].read(d_[l]));
        }
        break;
      case Stage::QkvChunkBwd:
        if (block.attention.tp_size() > 1) {  // the chunk's TpAttnReduceBwd finishes it
          partial_[l][c + 1] = block.attention.input_backward_local(bc.attention, bc.attention_input[c]);
          break;
        }
        attn_rows_[c].add(block.attention.input_backward(bc.attention, bc.attention_input[c]), d_[l]);
        if (c == 0) release(l);
        break;
      case Stage::AttnFinishBwd:
        if (block.attention.tp_size() > 1) {  // the block's TpAttnReduceBwd finishes it
          partial_[l][0] = block.attention.input_backward_local(bc.attention, 0);
          break;
        }
        kernels::add_inplace(d_[l], block.attention.finish_backward(bc.attention));
        release(l);
        break;
      case Stage::TpAttnReduceBwd: {  // comm stream: the all-reduce, norm1's backward, the input gradient
        Tensor da = std::move(partial_[l][static_cast<size_t>(t.chunk + 1)]);
        partial_[l][static_cast<size_t>(t.chunk + 1)] = Tensor();
        if (t.chunk < 0) {
          kernels::add_inplace(d_[l], block.attention.input_backward_reduce(bc.attention, 0, std::move(da)));
          release(l);
        } else {
          attn_rows_[c].add(
              block.attention.input_backward_reduce(bc.attention, bc.attention_input[c], std::move(da)),
              d_[l]);
          if (c == 0) release(l);
        }
        break;
      }
      case Stage::GradReduce:
        block_done_(static_cast<int64_t>(l));
        break;
      default: AMPIPE_CHECK(false) << "stage " << stage_name(t.stage) << " in a backward task list";
    }
  }
  // The gradient of the first block's input; every context released.
  Tensor finish() {
    for (BlockContext& c : ctx_) c = BlockContext{};
    return d_[0];
  }

 private:
  const std::vector<Block>& blocks_;
  std::vector<BlockContext>& ctx_;
  const std::vector<RoutingStats>& stats_;
  double aux_grad_scale_;
  bool delay_wgrad_;
  const std::function<void(int64_t)>& block_done_;
  std::vector<Rows> attn_rows_, moe_rows_;
  std::vector<Tensor> d_;
  // Tensor parallelism: each QKV backward's partial input gradient, [block][attention chunk + 1]
  // (slot 0: the whole sequence's), until its TpAttnReduceBwd. Sized before any task: the compute
  // stream writes a slot, the comm stream takes it after waiting for that task.
  std::vector<std::vector<Tensor>> partial_;
  // Sequence parallelism: each attention chunk's gathered dh, [block][attention chunk], from its
  // TpAttnGatherBwd (comm stream) to its AttnChunkBwd (compute stream, which waits for it).
  std::vector<std::vector<Tensor>> gathered_;

  // The block's last compute task: its activations and its output gradient are no longer needed.
  void release(size_t l) {
    ctx_[l] = BlockContext{};
    if (l + 1 < ctx_.size()) d_[l + 1] = Tensor();
  }
};

}  // namespace

Tensor StreamedBlock::forward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                     const Tensor& x, int64_t batch, int64_t seq_len,
                                     std::vector<RoutingStats>& stats,
                                     const std::function<void(int64_t)>& block_needed) const {
  plan_ = pass_plan(schedule_, blocks, seq_len);
  ForwardRun run(blocks, ctx, x, batch, seq_len, stats, plan_, block_needed);
  const PassShape pass = forward_shape(blocks, static_cast<bool>(block_needed));
  execute(
      forward_tasks(plan_, order_, pass), [&run](const StageTask& t) { run.run(t); }, blocks.size() > 1);
  return run.output();
}

Tensor StreamedBlock::backward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx,
                                      const Tensor& dy, const std::vector<RoutingStats>& stats,
                                      double aux_grad_scale,
                                      const std::function<void(int64_t)>& block_done) const {
  BackwardRun run(blocks, ctx, dy, stats, aux_grad_scale, plan_, delay_wgrad_, block_done);
  const PassShape pass = backward_shape(blocks, static_cast<bool>(block_done));
  execute(
      backward_tasks(plan_, order_, pass), [&run](const StageTask& t) { run.run(t); }, blocks.size() > 1);
  return run.finish();
}

std::pair<Tensor, Tensor> StreamedBlock::paired_layers(const std::vector<Block>& blocks,
                                                       PairedBackward backward, PairedForward forward) const {
  const ChunkPlan backward_plan = plan_;  // of the forward whose backward this is
  const ChunkPlan forward_plan = pass_plan(schedule_, blocks, forward.seq_len);
  const std::function<void(int64_t)> none;
  BackwardRun bwd(blocks, backward.ctx, backward.dy, backward.stats, backward.aux_grad_scale, backward_plan,
                  delay_wgrad_, none);
  ForwardRun fwd(blocks, forward.ctx, forward.x, forward.batch, forward.seq_len, forward.stats, forward_plan,
                 none);
  const std::vector<StageTask> bwd_tasks =
      backward_tasks(backward_plan, order_, backward_shape(blocks, false));
  const std::vector<StageTask> fwd_tasks = forward_tasks(forward_plan, order_, forward_shape(blocks, false));
  // The pricer reads whole-sequence plans (sequence parallelism: the local boundaries times T).
  const ChunkPlan priced_backward = whole_sequence_plan(backward_plan, blocks),
                  priced_forward = whole_sequence_plan(forward_plan, blocks);
  std::vector<double> bwd_seconds, fwd_seconds;
  for (const StageTask& t : bwd_tasks)
    bwd_seconds.push_back(task_seconds_ ? task_seconds_(t, priced_backward) : 1.0);
  for (const StageTask& t : fwd_tasks)
    fwd_seconds.push_back(task_seconds_ ? task_seconds_(t, priced_forward) : 1.0);
  execute(
      paired_tasks(bwd_tasks, bwd_seconds, fwd_tasks, fwd_seconds),
      [&](const StageTask& t) {
        if (is_backward_stage(t.stage))
          bwd.run(t);
        else
          fwd.run(t);
      },
      blocks.size() > 1);
  plan_ = forward_plan;  // for the forward's backward
  Tensor dx = bwd.finish();
  return {dx, fwd.output()};
}

PassShape StreamedBlock::forward_shape(const std::vector<Block>& blocks, bool gather_params) const {
  PassShape pass{static_cast<int64_t>(blocks.size()), scope_};
  pass.gather_params = gather_params;
  pass.tensor_parallel = tensor_parallel_size(blocks);
  pass.sequence_parallel = sequence_parallel(blocks);
  pass.expert_tensor_parallel = expert_tensor_parallel_size(blocks);
  return pass;
}

PassShape StreamedBlock::backward_shape(const std::vector<Block>& blocks, bool reduce_gradients) const {
  PassShape pass{static_cast<int64_t>(blocks.size()), scope_};
  pass.reduce_gradients = reduce_gradients;
  pass.delay_wgrad = delay_wgrad_;
  pass.tensor_parallel = tensor_parallel_size(blocks);
  pass.sequence_parallel = sequence_parallel(blocks);
  pass.expert_tensor_parallel = expert_tensor_parallel_size(blocks);
  return pass;
}

}  // namespace ampipe
