// The MoE language model of docs/MODEL.md, either family: token (and, with learned positions,
// position) embeddings, L blocks (attention half + MoE half), a final norm and an LM head that is
// the token embedding (tied) or its own lm_head.weight [V, d] (untied).
//
// forward() computes the loss and keeps every activation backward() needs in a ForwardState owned
// by the caller; backward() consumes the state and accumulates parameter gradients. The model holds
// parameters only, so one model can run several states (micro-batches, chunks) in any order.
//
// The model lives on one device (its parameters, and every activation and gradient of its passes);
// the communicators of a ModelParallel are host-only, so a model on the GPU runs on one rank.
//
// Tensor parallelism (T = parallel.tp_size() > 1; Megatron-LM's):
// each block's attention is split as model/attention_layer.h says; the token embedding, and the LM
// head (tied or untied), hold rows [t V/T, (t+1) V/T) of the vocabulary on rank t
// (model/vocab_parallel_embedding.h, and model/vocab_parallel.h's loss), so no rank holds the
// whole table or a whole row of logits. V must be divisible by T (the trainer pads the vocabulary
// to a multiple of --make-vocab-size-divisible-by x T, as Megatron-LM does). Everything else (the
// norms, the position table, the MoE layers) is whole on every rank of the group, which computes
// it alike on the same tokens. Collectives over the tensor group, besides the attention's: the
// embedding's all-reduce (forward), the loss's small all-gathers (forward) and the head's input
// gradient all-reduce (backward). CPU only (the vocabulary-parallel loss is a CPU function).
// Sequence parallelism (parallel.sp(), N divisible by T): the blocks, the final norm and the
// routing run on this rank's rows (model/sequence_parallel.h); the embedding reduce-scatters instead
// of all-reducing, the head gathers the final norm's output (whole rows: the loss and the logits are
// as above) and reduce-scatters its input gradient, the embeddings' backward gathers the first
// block's input gradient. The routing statistics are summed over the tensor group too; the norms'
// and routers' gradients are partial (Parameter::sequence_parallel; the trainer sums them).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "model/attention_layer.h"
#include "model/block.h"
#include "model/config.h"
#include "model/moe/moe_layer.h"
#include "model/norm.h"
#include "model/parallel.h"
#include "model/parameters.h"
#include "model/vocab_parallel.h"

namespace ampipe {

// Activation recomputation (Megatron-LM's --recompute-granularity full, --recompute-method,
// --recompute-num-layers): the blocks run in consecutive groups; a recomputed group keeps only its
// input through the forward and runs its forward again, through the same executor (the same chunks,
// the same all-to-alls on the comm stream, the same routing from the same input), just before its
// backward, discarding the routing statistics of that second forward.
struct RecomputeGroup {
  int64_t begin = 0, end = 0;  // blocks [begin, end)
  bool recompute = false;
};
// The groups of a method over L blocks: "" (none): one kept group of every block; "uniform": groups
// of num_layers blocks (the last may be shorter), each recomputed; "block": the first num_layers
// blocks recomputed one by one, the rest one kept group. Throws ampipe::Error naming the flag for
// another method or num_layers outside [1, L].
std::vector<RecomputeGroup> recompute_groups(const std::string& method, int64_t num_layers, int64_t L);

struct LossParts {
  double lm_loss = 0;   // mean cross-entropy per target token
  double aux_loss = 0;  // sum over layers of the load-balancing loss (unweighted)
  double total = 0;     // lm_loss + aux_loss_weight * aux_loss
};

struct ForwardState {
  int64_t batch = 0, seq_len = 0;
  Tensor tokens, targets;
  std::vector<BlockContext> blocks;  // empty contexts for the blocks of recomputed groups
  std::vector<RoutingStats> routing;
  std::vector<Tensor> group_inputs;  // per recompute group: its input (recomputed groups only)
  Tensor x_final, y;  // final norm input / output
  NormStats final_norm;
  Tensor logits;             // [T, V], or this rank's [T, V/T] under tensor parallelism
  Tensor losses;             // [T] float32 per-token cross-entropy (the same on every rank of a tensor group)
  VocabParallelStats vocab;  // tensor parallelism: the vocabulary-parallel loss's row statistics
};

class GptMoe {
 public:
  // `parallel` (borrowed) lays the model out over ranks; the default is one rank holding all.
  // Parameters are allocated on `device`; Device::CUDA with an expert or data group of more than
  // one rank is refused (the communicators are host-only).
  explicit GptMoe(const ModelConfig& config, const ModelParallel& parallel = {}, Device device = Device::CPU);
  // Layers point into the registry and the executor may point at a member: not copyable/movable.
  GptMoe(const GptMoe&) = delete;
  GptMoe& operator=(const GptMoe&) = delete;

  // GPT-2 initialisation from a seed (model/initialize.h): weights N(0, 0.02), residual projections
  // N(0, 0.02 / sqrt(2 L)), biases 0, norm gains 1, a stream per tensor and per expert.
  // Under --bf16 the compute copies are filled too (as at every forward()).
  void initialize(uint64_t seed);

  const ModelConfig& config() const { return config_; }
  Device device() const { return params_.device(); }
  // How every block is run (borrowed; default: SequentialBlock). Any executor computes the same
  // function; pipeline/ provides the chunked schedules.
  void set_block_executor(const BlockExecutor* executor) { executor_ = executor ? executor : &sequential_; }
  // How the blocks are grouped for recomputation (recompute_groups; default: none). Results are the
  // same bits either way; only what is kept between the passes changes.
  void set_recompute(std::vector<RecomputeGroup> groups);
  ParameterRegistry& params() { return params_; }
  const ParameterRegistry& params() const { return params_; }

  // tokens, targets [B*N] int32 (B = batch sequences of N = tokens/B positions, N <= max_seq_len),
  // on any device (moved to the model's when elsewhere; the trainer moves each batch once).
  // Under --bf16 it first refreshes the parameters' compute copies (model/parameters.h).
  // lm_loss is this rank's mean; the aux loss uses routing statistics summed over the data group
  // (one global load-balancing loss). Collective over the expert and data groups.
  // block_needed(l) (optional) is called once per block before anything reads block l's
  // parameters, possibly on the executor's communication stream (BlockExecutor::forward_layers):
  // the hook of the distributed optimizer's overlapped parameter all-gather, which also refreshes
  // that block's bf16 copies. The parameters outside the blocks must be ready before forward().
  // A recomputed forward (in the backward) does not call it.
  LossParts forward(ForwardState& state, const Tensor& tokens, const Tensor& targets, int64_t batch,
                    const std::function<void(int64_t)>& block_needed = {}) const;
  // Accumulates loss_scale * the gradient of (lm_loss + aux_loss_weight * data_size * aux_loss)
  // with respect to this rank's tokens into the gradients, so that the average of the gradients
  // over the data group is the gradient of the global loss (mean of lm_loss + weight * aux).
  // Releases the state. Collective over the expert group.
  // block_done(l) (optional) is called once block l's parameter gradients are final, possibly on the
  // executor's communication stream (BlockExecutor::backward_layers): the hook of overlapped
  // gradient reduction. The gradients outside the blocks are final when backward() returns.
  void backward(ForwardState& state, double loss_scale = 1.0,
                const std::function<void(int64_t)>& block_done = {}) const;
  // --overlap-moe-expert-parallel-comm: backward(backward_state, loss_scale) of one micro-batch and
  // forward(forward_state, tokens, targets, batch) of the next, in one call: the blocks' two passes
  // share the executor's streams (BlockExecutor::paired_layers); the head's and embedding's work of
  // each runs before and after them on this thread. The same results, bit for bit, as the two calls
  // in that order (gradients accumulate in the same order). No hooks: gradient reduction belongs to
  // a step's last backward and parameter gathering to its first forward, which run alone. Refused
  // with recomputed groups (--recompute-granularity full).
  LossParts backward_and_forward(ForwardState& backward_state, double loss_scale, ForwardState& forward_state,
                                 const Tensor& tokens, const Tensor& targets, int64_t batch) const;
  // Logits [B*N, V] on the model's device for the given tokens, without keeping activations
  // (under tensor parallelism gathered over the group: collective, every rank gets them whole).
  Tensor logits(const Tensor& tokens, int64_t batch) const;

  // Tensor parallelism: where each of rank `rank`'s sharded parameters lies in the full (T = 1)
  // tensor (model/tensor_parallel.h), in registration order: every block's attention shards
  // (attention_tensor_parallel_shards), then the token embedding's rows and, untied, the LM head's.
  // Empty at T = 1. tensor_parallel_shards() is this rank's.
  std::vector<TensorParallelShard> tensor_parallel_shards(int rank) const;
  std::vector<TensorParallelShard> tensor_parallel_shards() const {
    return tensor_parallel_shards(parallel_.tp_rank());
  }
  Communicator* tensor_group() const { return tensor_group_; }
  // Expert tensor parallelism: rank `rank`'s shards of every block's experts (model/moe/experts.h),
  // within the local experts' full-width tensors. Empty at ETP = 1.
  std::vector<TensorParallelShard> expert_tensor_parallel_shards(int rank) const;
  std::vector<TensorParallelShard> expert_tensor_parallel_shards() const {
    return expert_tensor_parallel_shards(parallel_.etp_rank());
  }
  Communicator* expert_tensor_group() const {
    return parallel_.etp_size() > 1 ? parallel_.expert_tensor_group : nullptr;
  }
  // Every sharded parameter of this rank: the two lists above.
  std::vector<TensorParallelShard> all_parallel_shards() const;

 private:
  ModelConfig config_;
  ModelParallel parallel_;
  Communicator* tensor_group_ = nullptr;  // T > 1 only: the vocabulary-parallel embedding and head
  int64_t vocab_shard_ = 0;               // V / T, the rows of the vocabulary this rank holds
  int64_t vocab_begin() const { return parallel_.tp_rank() * vocab_shard_; }
  ParameterRegistry params_;
  Parameter *token_emb_, *pos_emb_ = nullptr, *lm_head_;  // lm_head_ == token_emb_ when tied
  std::vector<AttentionLayer> attention_;
  std::vector<MoeLayer> moe_;
  std::unique_ptr<Norm> final_norm_;
  SequentialBlock sequential_;
  const BlockExecutor* executor_ = &sequential_;
  std::vector<RecomputeGroup> recompute_;  // empty: one kept group

  // The steps of forward() around the blocks: checks, embedding -> the first block's input; the final
  // norm, head, loss and routing statistics from the last block's output.
  Tensor begin_forward(ForwardState& state, const Tensor& tokens, const Tensor& targets, int64_t batch) const;
  LossParts finish_forward(ForwardState& state, const Tensor& x) const;
  // The steps of backward() around the blocks: loss, head and final norm -> the last block's output
  // gradient; the embeddings' gradients from the first block's input gradient (releases the state).
  Tensor begin_backward(ForwardState& state, double loss_scale) const;
  void finish_backward(ForwardState& state, const Tensor& dx) const;
  double aux_scale(double loss_scale) const;  // d(loss)/d(aux loss of a layer) for backward's scale
  // Empty contexts and zeroed routing statistics for every block; no group inputs.
  void reset_block_state(ForwardState& state) const;
  void run_blocks(ForwardState& state, Tensor& x, const std::function<void(int64_t)>& block_needed) const;
  Tensor backward_blocks(ForwardState& state, const Tensor& dy, double aux_scale,
                         const std::function<void(int64_t)>& block_done) const;
  std::vector<RecomputeGroup> groups() const;
  std::vector<Block> blocks() const;
  std::vector<Block> blocks(int64_t begin, int64_t end) const;
  // The sequence length the blocks run: N, or this rank's N / T under sequence parallelism.
  int64_t block_seq_len(const ForwardState& state) const;
  // Sums every layer's routing statistics over the data group (the aux loss is global), and under
  // sequence parallelism over the tensor group.
  void reduce_routing_stats(ForwardState& state) const;
};

}  // namespace ampipe
