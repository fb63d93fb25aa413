// The attention half of a transformer block: x + proj(causal_attention(rope(QKV(norm1(x))))).
//
// Shapes: x [B*N, d], sequence-major; h query heads and g KV heads of hd = d / h columns
// (grouped-query attention when g < h: query head j uses KV head j / (h / g)). The projections
// write one buffer qkv [T, (h + 2g) hd]: q columns [0, h hd), k [h hd, (h + g) hd), v after.
// Parameters (registered under `prefix`, e.g. "blocks.0."): the norm ln1 (model/norm.h); then in the
// GPT family attn.qkv.weight [(h + 2g) hd, d] and attn.proj.weight [d, d] (one GEMM each), in the
// Mixtral family attn.q.weight [h hd, d], attn.k.weight and attn.v.weight [g hd, d] and
// attn.o.weight [d, h hd]; with biases (ModelConfig::add_bias_linear) a .bias beside each weight.
// With rotary positions q and k are rotated once for the whole sequence, at absolute positions,
// before any chunk's attention, and their gradients rotated back once in finish_backward.
//
// The layer runs whole or in sequence chunks (the intra-block pipeline):
//   begin_forward     norm1, the QKV projection (and rope) for the whole sequence;
//   chunk_forward     for positions [begin, end) of every sequence: attention of those queries
//                     against keys [0, end), the projection and the residual -> h rows of the chunk;
//   chunk_backward    the mirror of one chunk; dK and dV accumulate over chunks, dQ of the chunk;
//   finish_backward   the rope, QKV and norm1 backward, once, after every chunk's backward.
// forward()/backward() are the one-chunk case. Every chunk of [0, N) must be run, in any order.
// Across blocks (the model-scope pipeline) the input itself arrives in chunks, so norm1 and the QKV
// projection run per chunk of rows too:
//   prepare_forward   takes the input buffer x (whose rows the caller fills later) and allocates qkv;
//   input_forward     norm1, QKV and rope of positions [begin, end), once x's rows exist; a chunk's
//                     chunk_forward needs the input_forward of every position below its end;
//   input_backward    their backward, once dqkv of those rows is complete: after the chunk_backward
//                     of every chunk that ends past `begin` (its queries, or keys, hold those rows);
//                     returns the rows' dx without the residual.
// begin_forward = prepare_forward + input_forward(0, N); finish_backward = input_backward of that
// one input + release. The input chunks must cover [0, N) without overlap.
// The saved activations live in an AttentionContext owned by the caller.
//
// Tensor parallelism (Megatron-LM's; docs/MODEL.md, "Tensor-parallel
// attention"): with T = parallel.tp_size() > 1, rank t of parallel.tensor_group holds query heads
// [t h/T, (t+1) h/T) and KV groups [t g/T, (t+1) g/T) (refused, naming the numbers, where T does not
// divide h or g). The input projections are column-parallel shards: attn.qkv.weight
// [(h + 2g) hd / T, d] holds this rank's q rows, then its k rows, then its v rows (attn.q/k/v.weight
// [h hd / T, d], [g hd / T, d] in the Mixtral family; their biases likewise), so qkv and every
// buffer above are this rank's [.., (h + 2g) hd / T] columns. The output projection is row-parallel:
// attn.proj/attn.o.weight [d, h hd / T]; its bias whole, added once after the reduction. Norm
// parameters stay whole, replicated: every rank of the group computes the same norm gradients.
// Collectives, blocking, over the tensor group, on float32 buffers (also under --bf16):
//   chunk_forward     all_reduce_sum of the partial projection [B*len, d], before bias and residual;
//   input_backward    all_reduce_sum of the partial gradient of norm1's output [B*len, d], before the
//   (finish_backward) norm backward.
// chunk_backward needs none (row-parallel backward without sequence parallelism is local: every
// rank holds the whole dh). Every rank of the group must call the stages in the same order with the
// same chunks. SequentialBlock runs the stages as they are; the pipelined executors
// (pipeline/streamed_block.h) split chunk_forward and input_backward in two around the collective
// (below), so the all-reduces run on their communication stream. tensor_parallel_shards() states where each
// shard lies in the full tensor (model/tensor_parallel.h).
//
// Sequence parallelism (parallel.sp(); docs/MODEL.md, "Sequence parallelism"): the block's input and
// output are this rank's rows of the residual stream (model/sequence_parallel.h: [B*N/T, d], local
// positions). Every position argument above is then a local one (b, e), standing for the whole
// sequence's [T b, T e), and the layer's own buffers (ctx.x gathered, qkv, the chunks) are the whole
// sequence's. The collectives become:
//   input_gather          an all-gather of the input rows of local [b, e) into ctx.x, before their
//                         input_forward (begin_forward runs it; a pipelined executor runs it as a
//                         task of its communication stream); input_forward then runs norm1 on the
//                         whole rows (each rank alike) and this rank's QKV columns;
//   chunk_forward_reduce  a reduce-scatter of the partial projection: this rank's rows, then bias
//                         and the residual (its local rows);
//   chunk_backward        takes the gradient of the chunk's whole rows: the caller gathers its local
//                         rows first (sequence_gather_rows, an all-gather);
//   input_backward_local  also runs norm1's backward, on this rank's partial sum (it is linear);
//   input_backward_reduce a reduce-scatter of that partial dx: this rank's rows.
// norm1's parameter gradients are then partial (Parameter::sequence_parallel): the trainer sums them
// over the tensor group.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/norm.h"
#include "model/parallel.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"

namespace ampipe {

struct AttentionChunk {
  int64_t begin = 0, end = 0;  // positions within each sequence
  Tensor rows;                 // [B*(end-begin)] int32 rows of the [B*N] buffers, or undefined when
  int64_t first_row = 0;       // they are contiguous (B == 1, or the whole sequence): from first_row
  Tensor q;                    // [B*len, h hd] the chunk's queries (a view when B == 1)
  Tensor o;                    // [B*len, h hd] attention output before projection
  Tensor lse;                  // [B, h, len]
};

// One input_forward: norm1 of positions [begin, end) of every sequence (the whole sequence, or a chunk).
struct AttentionInput {
  int64_t begin = 0, end = 0;
  Tensor rows;           // as AttentionChunk::rows
  int64_t first_row = 0;
  Tensor x;              // [B*len, d] the input rows (a view when contiguous)
  Tensor a;              // [B*len, d] norm1(x); dropped after the QKV projection under selective recompute
  NormStats norm;        // norm1's statistics of these rows
};

struct AttentionContext {
  int64_t batch = 0,
          seq_len = 0;  // seq_len: the whole sequence's (T x the local one under sequence parallelism)
  Tensor x;             // [T, d] block input (residual stream); the gathered whole rows under SP
  Tensor local;         // sequence parallelism: this rank's rows of the input [T / tp, d]
  std::vector<AttentionInput> inputs;
  Tensor qkv;                 // [T, (h + 2g) hd], q and k rotated when rope
  Tensor dqkv;                // [T, (h + 2g) hd] gradient, accumulated by chunk_backward
  std::vector<AttentionChunk> chunks;
};

class AttentionLayer {
 public:
  // parallel.tensor_group (borrowed; may be null) is the tensor-parallel group; the other groups
  // are not used here.
  AttentionLayer(const ModelConfig& config, ParameterRegistry& params, const std::string& prefix,
                 const ModelParallel& parallel = ModelParallel{});

  // T and this rank's t in the tensor group (1 and 0 without one).
  int tp_size() const { return tp_size_; }
  int tp_rank() const { return tp_rank_; }
  bool sequence_parallel() const { return sp_; }
  // Where each sharded parameter of this rank lies in the full (T = 1) tensor: the input projections'
  // weights and biases, and the output projection's weight. Parameters not listed (the norm, the
  // output bias) are whole. Empty at T = 1.
  const std::vector<TensorParallelShard>& tensor_parallel_shards() const { return shards_; }

  void begin_forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const;
  // x [B*N, d] is kept (a handle): its rows may be written after this call, before their input_forward.
  void prepare_forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const;
  // Sequence parallelism: gathers the input rows of local positions [begin, end) over the tensor
  // group into ctx.x (collective; nothing without sequence parallelism). Every rank calls it before
  // input_forward of those positions, once their local rows of x exist. Reads ctx.local, writes
  // those rows of ctx.x only, so it may run while another thread runs input_forward of other rows.
  void input_gather(AttentionContext& ctx, int64_t begin, int64_t end) const;
  // Sequence parallelism: the whole rows [T R, d] of every rank's local rows [R, d] (an all-gather
  // over the tensor group, model/sequence_parallel.h); `local` itself without it.
  Tensor sequence_gather_rows(const Tensor& local) const;
  // Returns the input's index (for input_backward).
  size_t input_forward(AttentionContext& ctx, int64_t begin, int64_t end) const;
  // Returns d(norm1 + QKV)/dx of the input's rows [B*len, d] (without the residual); frees them.
  Tensor input_backward(AttentionContext& ctx, size_t input_index) const;
  // Returns h = x + proj(attn) for the chunk's rows [B*(end-begin), d]; returns the chunk's index.
  Tensor chunk_forward(AttentionContext& ctx, int64_t begin, int64_t end, size_t* chunk_index = nullptr) const;
  // Tensor parallelism in two steps, so that a pipelined executor can run the group's collective as
  // a task of its communication stream (pipeline/streamed_block.h): chunk_forward =
  // chunk_forward_local, which returns this rank's partial projection [B*len, d] (without bias or
  // residual; at T = 1 the whole h), then chunk_forward_reduce (T > 1 only), which all-reduces it in
  // place over the tensor group, adds the bias and `residual` (the chunk's rows of the block input
  // x, [B*len, d]) and returns h. No collective in chunk_forward_local; chunk_forward_reduce reads
  // no context, so it may run while another thread runs the next chunk's chunk_forward_local.
  Tensor chunk_forward_local(AttentionContext& ctx, int64_t begin, int64_t end, size_t* chunk_index) const;
  Tensor chunk_forward_reduce(Tensor partial, const Tensor& residual) const;
  // Likewise input_backward = input_backward_local (the projections' backward: this rank's partial
  // gradient of norm1's output, no collective), then input_backward_reduce (its all-reduce over the
  // group at T > 1, then norm1's backward; returns the rows' dx and frees them). input_backward_reduce
  // touches only its own input's entry of ctx.inputs (which the backward never resizes).
  Tensor input_backward_local(AttentionContext& ctx, size_t input_index) const;
  Tensor input_backward_reduce(AttentionContext& ctx, size_t input_index, Tensor da) const;
  // dh [B*len, d]: gradient of the chunk's h (the caller adds dh to the residual gradient itself);
  // under sequence parallelism the chunk's whole rows (sequence_gather_rows of the local ones).
  void chunk_backward(AttentionContext& ctx, size_t chunk_index, const Tensor& dh) const;
  // Returns the gradient of x through norm1 and QKV ([T, d], without the residual); releases ctx.
  Tensor finish_backward(AttentionContext& ctx) const;

  // Whole-sequence convenience: x + proj(attn(LN1(x))), and its backward (residual included).
  Tensor forward(AttentionContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len) const;
  Tensor backward(AttentionContext& ctx, const Tensor& dy) const;

 private:
  // One input projection: columns [begin, end) of qkv = a @ weight^T (+ bias).
  struct Projection {
    Parameter* weight;
    Parameter* bias;  // nullptr without biases
    int64_t begin, end;
  };
  int64_t hidden_, heads_, kv_heads_, head_dim_;  // heads_ and kv_heads_: this rank's (h/T, g/T)
  Communicator* tensor_group_;                    // null at T = 1
  int tp_size_, tp_rank_;
  bool sp_;  // sequence parallelism
  std::vector<TensorParallelShard> shards_;
  bool rope_;
  bool bf16_;  // --bf16: the normed input is kept in bf16, the projections' operand
  bool selective_;  // --recompute-granularity selective: the normed input is recomputed in backward
  double rope_theta_;
  Norm norm_;
  std::vector<Projection> input_;  // the fused qkv, or q, k and v
  Parameter *out_w_, *out_b_ = nullptr;

  // Rows of local positions [begin, end) of ctx.local (a view when contiguous).
  Tensor local_rows(const AttentionContext& ctx, int64_t begin, int64_t end) const;
  void add_input(ParameterRegistry& params, const std::string& name, int64_t begin, int64_t end, bool bias);

  int64_t q_width() const { return heads_ * head_dim_; }
  int64_t kv_width() const { return kv_heads_ * head_dim_; }
  Tensor q_cols(const Tensor& t) const { return t.cols(0, q_width()); }
  Tensor k_cols(const Tensor& t) const { return t.cols(q_width(), q_width() + kv_width()); }
  Tensor v_cols(const Tensor& t) const { return t.cols(q_width() + kv_width(), q_width() + 2 * kv_width()); }
};

// Where rank `rank` of a `ranks`-way tensor group holds its shards of the attention parameters of the
// block named `prefix` (what tensor_parallel_shards() returns on that rank; the parameters'
// registration order): for a checkpoint writer placing every rank's shards, or an initialiser
// drawing the full tensor. Empty when ranks == 1. Refuses h or g not divisible by `ranks`.
std::vector<TensorParallelShard> attention_tensor_parallel_shards(const ModelConfig& config,
                                                                  const std::string& prefix, int rank,
                                                                  int ranks);

// Rows of positions [begin, end) of each of `batch` sequences of length seq_len in a sequence-major
// [batch*seq_len] buffer, as an int32 index (b-major) on `device`.
Tensor chunk_row_index(int64_t batch, int64_t seq_len, int64_t begin, int64_t end, Device device = Device::CPU);

}  // namespace ampipe
