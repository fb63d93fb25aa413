#include "model/gpt.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "model/initialize.h"
#include "model/linear.h"
#include "model/sequence_parallel.h"
#include "model/vocab_parallel_embedding.h"

namespace ampipe {

GptMoe::GptMoe(const ModelConfig& config, const ModelParallel& parallel, Device device)
    : config_(config), parallel_(parallel), params_(device) {
  config_.validate();
  require_device_communicators(device, parallel_);
  const int64_t d = config_.hidden_size, V = config_.vocab_size, T = parallel_.tp_size();
  if (T > 1) {
    tensor_group_ = parallel_.tensor_group;
    AMPIPE_CHECK(device == Device::CPU)
        << "tensor parallelism (--tensor-model-parallel-size " << T
        << ") runs on the CPU only for now: its vocabulary-parallel loss is a CPU function";
    AMPIPE_CHECK(V % T == 0) << "the vocabulary-parallel embedding and LM head split the vocabulary (" << V
                             << " ids, padded) over the tensor-parallel size (--tensor-model-parallel-size) "
                             << T << ", which does not divide it (remainder " << V % T
                             << "); pad it with --make-vocab-size-divisible-by";
  }
  vocab_shard_ = V / T;
  token_emb_ = &params_.add("embed.token.weight", {vocab_shard_, d}, true);
  if (!config_.rope()) pos_emb_ = &params_.add("embed.position.weight", {config_.max_seq_len, d}, true);
  attention_.reserve(config_.num_layers);
  moe_.reserve(config_.num_layers);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const std::string prefix = "blocks." + std::to_string(l) + ".";
    attention_.emplace_back(config_, params_, prefix, parallel_);
    moe_.emplace_back(config_, params_, prefix, parallel_);
  }
  final_norm_ = std::make_unique<Norm>(config_, params_, "final_ln");
  lm_head_ = config_.untie_embeddings_and_output_weights
                 ? &params_.add("lm_head.weight", {vocab_shard_, d}, true)
                 : token_emb_;
  lm_head_->matmul = true;  // tied: the token embedding is looked up in float32, multiplied in bf16
  if (T > 1) token_emb_->tensor_parallel = lm_head_->tensor_parallel = true;
  if (parallel_.sp()) final_norm_->mark_sequence_parallel();
  params_.set_compute_dtype(config_.bf16 ? DType::BF16 : DType::F32);
}

std::vector<TensorParallelShard> GptMoe::tensor_parallel_shards(int rank) const {
  const int T = parallel_.tp_size();
  std::vector<TensorParallelShard> out;
  if (T == 1) return out;
  for (int64_t l = 0; l < config_.num_layers; ++l)
    for (TensorParallelShard& s :
         attention_tensor_parallel_shards(config_, "blocks." + std::to_string(l) + ".", rank, T))
      out.push_back(std::move(s));
  const Shape full{config_.vocab_size, config_.hidden_size};
  const std::vector<TensorParallelShard::Piece> rows{{0, rank * vocab_shard_, vocab_shard_}};
  out.push_back({token_emb_->name, full, 0, rows});
  if (lm_head_ != token_emb_) out.push_back({lm_head_->name, full, 0, rows});
  return out;
}

std::vector<TensorParallelShard> GptMoe::expert_tensor_parallel_shards(int rank) const {
  std::vector<TensorParallelShard> out;
  for (const MoeLayer& m : moe_)
    for (TensorParallelShard& s : m.experts().expert_tensor_parallel_shards(rank))
      out.push_back(std::move(s));
  return out;
}

std::vector<TensorParallelShard> GptMoe::all_parallel_shards() const {
  std::vector<TensorParallelShard> out = tensor_parallel_shards();
  for (TensorParallelShard& s : expert_tensor_parallel_shards()) out.push_back(std::move(s));
  return out;
}

void GptMoe::initialize(uint64_t seed) {
  initialize_parameters(params_, config_, seed, all_parallel_shards());
  params_.refresh_compute();
}

std::vector<RecomputeGroup> recompute_groups(const std::string& method, int64_t num_layers, int64_t L) {
  AMPIPE_CHECK(method.empty() || method == "uniform" || method == "block")
      << "--recompute-method '" << method << "' is not one of: uniform, block";
  if (method.empty()) return {RecomputeGroup{0, L, false}};
  AMPIPE_CHECK(num_layers >= 1 && num_layers <= L)
      << "--recompute-num-layers " << num_layers << " is not in [1, " << L << "] (the model's --num-layers)";
  std::vector<RecomputeGroup> groups;
  if (method == "uniform") {
    for (int64_t b = 0; b < L; b += num_layers) groups.push_back({b, std::min(L, b + num_layers), true});
  } else {
    for (int64_t b = 0; b < num_layers; ++b) groups.push_back({b, b + 1, true});
    if (num_layers < L) groups.push_back({num_layers, L, false});
  }
  return groups;
}

void GptMoe::set_recompute(std::vector<RecomputeGroup> groups) {
  int64_t next = 0;
  for (const RecomputeGroup& g : groups) {
    AMPIPE_CHECK(g.begin == next && g.end > g.begin && g.end <= config_.num_layers)
        << "recompute groups must tile the " << config_.num_layers << " blocks in order; got [" << g.begin << ", "
        << g.end << ") after block " << next;
    next = g.end;
  }
  AMPIPE_CHECK(groups.empty() || next == config_.num_layers)
      << "recompute groups end at block " << next << " of " << config_.num_layers;
  recompute_ = std::move(groups);
}

void GptMoe::reset_block_state(ForwardState& state) const {
  state.blocks.assign(config_.num_layers, BlockContext{});
  state.routing.assign(config_.num_layers, RoutingStats{});
  for (RoutingStats& s : state.routing) s.reset(config_.num_experts);
  state.group_inputs.clear();
}

std::vector<RecomputeGroup> GptMoe::groups() const {
  return recompute_.empty() ? std::vector<RecomputeGroup>{{0, config_.num_layers, false}} : recompute_;
}

void GptMoe::run_blocks(ForwardState& state, Tensor& x,
                        const std::function<void(int64_t)>& block_needed) const {
  reset_block_state(state);
  for (const RecomputeGroup& g : groups()) {
    std::vector<BlockContext> ctx(g.end - g.begin);
    std::vector<RoutingStats> stats(state.routing.begin() + g.begin, state.routing.begin() + g.end);
    state.group_inputs.push_back(g.recompute ? x : Tensor());
    std::function<void(int64_t)> hook;
    if (block_needed) hook = [&block_needed, offset = g.begin](int64_t l) { block_needed(offset + l); };
    x = executor_->forward_layers(blocks(g.begin, g.end), ctx, x, state.batch, block_seq_len(state), stats,
                                  hook);
    std::copy(stats.begin(), stats.end(), state.routing.begin() + g.begin);
    if (!g.recompute) std::move(ctx.begin(), ctx.end(), state.blocks.begin() + g.begin);
    // else: the group's activations go now; backward_blocks runs its forward again
  }
}

Tensor GptMoe::backward_blocks(ForwardState& state, const Tensor& dy, double aux_scale,
                               const std::function<void(int64_t)>& block_done) const {
  const std::vector<RecomputeGroup> all = groups();
  Tensor d = dy;
  for (size_t i = all.size(); i-- > 0;) {
    const RecomputeGroup& g = all[i];
    const std::vector<Block> group = blocks(g.begin, g.end);
    std::vector<BlockContext> ctx(g.end - g.begin);
    if (g.recompute) {
      // The same forward again from the kept input: same kernels on the same values, so the same
      // routing and activations; its statistics are discarded (the aux loss used the first pass's).
      std::vector<RoutingStats> scratch(g.end - g.begin);
      for (RoutingStats& s : scratch) s.reset(config_.num_experts);
      executor_->forward_layers(group, ctx, state.group_inputs[i], state.batch, block_seq_len(state),
                                scratch);
      state.group_inputs[i] = Tensor();
    } else {
      std::move(state.blocks.begin() + g.begin, state.blocks.begin() + g.end, ctx.begin());
    }
    const std::vector<RoutingStats> stats(state.routing.begin() + g.begin, state.routing.begin() + g.end);
    std::function<void(int64_t)> hook;
    if (block_done) hook = [&block_done, offset = g.begin](int64_t l) { block_done(offset + l); };
    d = executor_->backward_layers(group, ctx, d, stats, aux_scale, hook);
  }
  return d;
}

std::vector<Block> GptMoe::blocks() const { return blocks(0, config_.num_layers); }

std::vector<Block> GptMoe::blocks(int64_t begin, int64_t end) const {
  std::vector<Block> out;
  for (int64_t l = begin; l < end; ++l) out.push_back(Block{attention_[l], moe_[l]});
  return out;
}

Tensor GptMoe::begin_forward(ForwardState& state, const Tensor& tokens, const Tensor& targets,
                             int64_t batch) const {
  AMPIPE_CHECK(batch >= 1 && tokens.numel() % batch == 0)
      << "token count " << tokens.numel() << " is not a multiple of the batch " << batch;
  const int64_t T = tokens.numel();
  const int64_t N = T / batch;
  AMPIPE_CHECK(N <= config_.max_seq_len)
      << "sequence length " << N << " exceeds the model's max_seq_len " << config_.max_seq_len;
  AMPIPE_CHECK(targets.numel() == T) << "targets " << targets.numel() << " != tokens " << T;
  AMPIPE_CHECK(!parallel_.sp() || N % parallel_.tp_size() == 0)
      << "sequence parallelism (--sequence-parallel) splits each sequence's " << N
      << " positions over the tensor-parallel size " << parallel_.tp_size()
      << ", which does not divide them; use a --seq-length divisible by " << parallel_.tp_size();
  const Device device = params_.device();
  state.batch = batch;
  state.seq_len = N;
  state.tokens = tokens.to(device);
  state.targets = targets.to(device);
  // Under sequence parallelism the blocks' buffers hold this rank's rows (model/sequence_parallel.h).
  Tensor x = Tensor::empty({T / (parallel_.sp() ? parallel_.tp_size() : 1), config_.hidden_size}, DType::F32,
                           device);
  const Tensor positions = pos_emb_ ? pos_emb_->value : Tensor();
  if (tensor_group_) {
    vocab_parallel_embedding_forward(state.tokens, token_emb_->value, vocab_begin(), config_.vocab_size,
                                     positions, N, *tensor_group_, x, parallel_.sp());
  } else {
    kernels::embedding_forward(state.tokens, token_emb_->value, positions, N, x);
  }
  return x;
}

LossParts GptMoe::finish_forward(ForwardState& state, const Tensor& x) const {
  const int64_t T = state.tokens.numel();
  const Device device = params_.device();
  state.x_final = x;
  state.y = Tensor::empty(x.shape(), DType::F32, device);
  final_norm_->forward(x, state.y, state.final_norm);
  if (parallel_.sp()) state.y = sequence_gather(*tensor_group_, state.y);  // the head takes whole rows
  // bf16: y is only the head's operand (the norm's backward reads x_final), kept in bf16 from here.
  state.y = kernels::as_dtype(state.y, lm_head_->operand().dtype());
  state.logits = Tensor::empty({T, vocab_shard_}, DType::F32, device);
  linear_forward(state.y, lm_head_->operand(), Tensor(), state.logits);

  Tensor losses = Tensor::empty({T}, DType::F32, device);
  if (tensor_group_) {
    vocab_parallel_cross_entropy_forward(state.logits, state.targets, vocab_begin(), config_.vocab_size,
                                         *tensor_group_, losses, state.vocab);
  } else {
    kernels::cross_entropy_forward(state.logits, state.targets, losses);
  }
  state.losses = losses;
  LossParts parts;
  double sum = 0;
  // host round trip (GPU): the per-token losses [T] cross to the host for the mean loss (logging).
  const Tensor host_losses = losses.to(Device::CPU);
  const float* lp = host_losses.data<float>();
  for (int64_t t = 0; t < T; ++t) sum += lp[t];
  parts.lm_loss = sum / static_cast<double>(T);
  reduce_routing_stats(state);
  for (int64_t l = 0; l < config_.num_layers; ++l) parts.aux_loss += moe_[l].router().aux_loss(state.routing[l]);
  parts.total = parts.lm_loss + config_.aux_loss_weight * parts.aux_loss;
  return parts;
}

LossParts GptMoe::forward(ForwardState& state, const Tensor& tokens, const Tensor& targets, int64_t batch,
                          const std::function<void(int64_t)>& block_needed) const {
  params_.refresh_compute();  // bf16: the GEMMs' copies of whatever the values are now
  Tensor x = begin_forward(state, tokens, targets, batch);
  run_blocks(state, x, block_needed);
  return finish_forward(state, x);
}

Tensor GptMoe::begin_backward(ForwardState& state, double loss_scale) const {
  const int64_t T = state.tokens.numel();
  const int64_t d = config_.hidden_size;
  const Device device = params_.device();
  Tensor dlogits = state.logits;  // reuse the logits buffer for their gradient
  if (tensor_group_) {
    vocab_parallel_cross_entropy_backward(state.logits, state.targets, state.vocab,
                                          static_cast<float>(loss_scale / T), dlogits);
  } else {
    kernels::cross_entropy_backward(state.logits, state.targets, static_cast<float>(loss_scale / T), dlogits);
  }
  Tensor dy = Tensor::empty({T, d}, DType::F32, device);
  linear_backward(state.y, lm_head_->operand(), dlogits, dy, lm_head_->grad, Tensor());
  // This rank's vocabulary's share of the head's input gradient, summed over the group (this rank's
  // rows of the sum under sequence parallelism).
  if (parallel_.sp()) {
    Tensor mine = Tensor::empty(state.x_final.shape(), DType::F32, device);
    sequence_reduce_scatter(*tensor_group_, dy, mine);
    dy = mine;
  } else if (tensor_group_) {
    tensor_group_->all_reduce_sum(dy);
  }
  state.logits = Tensor();
  Tensor dx = Tensor::empty(state.x_final.shape(), DType::F32, device);
  final_norm_->backward(dy, state.x_final, state.final_norm, dx);
  return dx;
}

void GptMoe::finish_backward(ForwardState& state, const Tensor& local_dx) const {
  // Sequence parallel: the embeddings' gradients from the whole rows, the same on every rank.
  const Tensor dx = parallel_.sp() ? sequence_gather(*tensor_group_, local_dx) : local_dx;
  if (tensor_group_) {
    vocab_parallel_embedding_backward(state.tokens, dx, state.seq_len, vocab_begin(), token_emb_->grad,
                                      pos_emb_ ? pos_emb_->grad : Tensor());
  } else {
    kernels::embedding_backward(state.tokens, dx, state.seq_len, token_emb_->grad,
                                pos_emb_ ? pos_emb_->grad : Tensor());
  }
  state = ForwardState{};
}

double GptMoe::aux_scale(double loss_scale) const {
  return loss_scale * config_.aux_loss_weight * parallel_.data_size();
}

void GptMoe::backward(ForwardState& state, double loss_scale,
                      const std::function<void(int64_t)>& block_done) const {
  Tensor dx = begin_backward(state, loss_scale);
  dx = backward_blocks(state, dx, aux_scale(loss_scale), block_done);
  finish_backward(state, dx);
}

LossParts GptMoe::backward_and_forward(ForwardState& backward_state, double loss_scale,
                                       ForwardState& forward_state, const Tensor& tokens,
                                       const Tensor& targets, int64_t batch) const {
  const std::vector<RecomputeGroup> all = groups();
  AMPIPE_CHECK(all.size() == 1 && !all[0].recompute)
      << "paired micro-batches (--overlap-moe-expert-parallel-comm) do not combine with "
         "--recompute-granularity full";
  AMPIPE_CHECK(backward_state.blocks.size() == static_cast<size_t>(config_.num_layers))
      << "backward_and_forward without a forward to take the backward of";
  params_.refresh_compute();
  Tensor x = begin_forward(forward_state, tokens, targets, batch);
  reset_block_state(forward_state);
  forward_state.group_inputs.assign(1, Tensor());  // the one kept group's (no input kept)
  Tensor dx = begin_backward(backward_state, loss_scale);
  auto [d_input, y] = executor_->paired_layers(
      blocks(), PairedBackward{backward_state.blocks, dx, backward_state.routing, aux_scale(loss_scale)},
      PairedForward{forward_state.blocks, x, forward_state.batch, block_seq_len(forward_state),
                    forward_state.routing});
  finish_backward(backward_state, d_input);
  return finish_forward(forward_state, y);
}

int64_t GptMoe::block_seq_len(const ForwardState& state) const {
  return parallel_.sp() ? state.seq_len / parallel_.tp_size() : state.seq_len;
}

void GptMoe::reduce_routing_stats(ForwardState& state) const {
  if (parallel_.data_size() <= 1 && !parallel_.sp()) return;
  // One host buffer for every layer (the statistics are host values): counts and token totals
  // exactly (int32), probability sums float32.
  const int64_t L = config_.num_layers, E = config_.num_experts;
  Tensor counts = Tensor::empty({L * (E + 1)}, DType::I32);
  Tensor probs = Tensor::empty({L * E});
  int32_t* c = counts.data<int32_t>();
  float* p = probs.data<float>();
  for (int64_t l = 0; l < L; ++l) {
    const RoutingStats& s = state.routing[l];
    for (int64_t e = 0; e < E; ++e) {
      c[l * (E + 1) + e] = static_cast<int32_t>(s.routed_counts[e]);
      p[l * E + e] = static_cast<float>(s.prob_sums[e]);
    }
    c[l * (E + 1) + E] = static_cast<int32_t>(s.tokens);
  }
  if (parallel_.data_size() > 1) {
    parallel_.data_group->all_reduce_sum(counts);
    parallel_.data_group->all_reduce_sum(probs);
  }
  if (parallel_.sp()) {  // each rank of a tensor group routed its own rows
    tensor_group_->all_reduce_sum(counts);
    tensor_group_->all_reduce_sum(probs);
  }
  for (int64_t l = 0; l < L; ++l) {
    RoutingStats& s = state.routing[l];
    for (int64_t e = 0; e < E; ++e) {
      s.routed_counts[e] = c[l * (E + 1) + e];
      s.prob_sums[e] = p[l * E + e];
    }
    s.tokens = c[l * (E + 1) + E];
  }
}

Tensor GptMoe::logits(const Tensor& tokens, int64_t batch) const {
  ForwardState state;
  Tensor targets = Tensor::zeros({tokens.numel()}, DType::I32, params_.device());
  forward(state, tokens, targets, batch);
  if (!tensor_group_) return state.logits;
  // Every rank's [rows, V/T] columns, rank-major, into whole rows.
  const int64_t rows = state.logits.dim(0), T = parallel_.tp_size();
  Tensor parts = Tensor::empty({T * rows, vocab_shard_});
  tensor_group_->all_gather(state.logits, parts);
  Tensor full = Tensor::empty({rows, config_.vocab_size});
  for (int64_t t = 0; t < T; ++t)
    full.cols(t * vocab_shard_, (t + 1) * vocab_shard_).copy_from(parts.rows(t * rows, (t + 1) * rows));
  return full;
}

}  // namespace ampipe
