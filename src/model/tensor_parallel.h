// Megatron-LM's tensor-parallel linear layers: y = x W^T + b (model/linear.h's PyTorch layout,
// W [out, in]) with W split over the T ranks of a tensor-parallel group (docs/MODEL.md, "The GPT
// family"). Nothing calls the linear functions outside their tests: the tensor-parallel attention
// (model/attention_layer.h) and experts (model/moe/experts.h) lay out their projections this way but
// call model/linear.h and the group's all_reduce_sum themselves (bf16 operands, GPU buffers and the
// split around the collective that the pipelined executors need); they state their shards with
// TensorParallelShard below, which checkpoints and initialisation use.
//
// Column-parallel: rank t holds rows [t out/T, (t+1) out/T) of W and of b. Row-parallel: rank t
// holds columns [t in/T, (t+1) in/T) of W; b is whole on every rank and added once, after the
// reduction. Paired as in Megatron's MLP, x -> column -> (elementwise) -> row -> y, the column
// layer's output shard is exactly the row layer's input shard and the pair needs one reduction
// each way. Shapes, with N tokens (rows) and S = N / T under sequence parallelism:
//
//   kind    sequence_parallel  x (input)      weight        bias          y (output)
//   column  no                 [N, in]        [out/T, in]   [out/T]       [N, out/T]
//   column  yes                [S, in] rows   [out/T, in]   [out/T]       [N, out/T]
//   row     no                 [N, in/T]      [out, in/T]   [out] whole   [N, out]
//   row     yes                [N, in/T]      [out, in/T]   [out] whole   [S, out] rows
//
// dx, dy, dweight and dbias have the shapes of x, y, weight and bias. Under sequence parallelism
// rank t's row slice is rows [t S, (t+1) S) of the full tensor (all_gather's rank-major order).
//
// Collectives, in this order, on every rank of the group together (each function is collective;
// every rank passes the same shapes, its own shards):
//   column forward:   all_gather of x (sequence parallel only); local x W_t^T + b_t.
//   column backward:  all_gather of x (sequence parallel only: the forward keeps no copy); local
//                     dW_t += dy_t^T x, db_t += colsum(dy_t); local dy_t W_t, then all_reduce_sum
//                     of it into dx (reduce_scatter_sum into dx's rows under sequence parallel).
//   row forward:      local x_t W_t^T, then all_reduce_sum into y (reduce_scatter_sum into y's rows
//                     under sequence parallel); then + b.
//   row backward:     all_gather of dy (sequence parallel only); local dx_t = dy W_t,
//                     dW_t += dy^T x_t, db += colsum(dy) (replicated: every rank adds the same).
// The local math is linear_forward / linear_backward_input / linear_backward_weight, so on one
// rank (SelfCommunicator) each function gives model/linear.h's bits exactly. dweight and dbias
// accumulate (+=) as there; dx and y are written. bias and dbias may be undefined (no bias).
//
// Refused (ampipe::Error, before any collective, naming the numbers): any tensor that is not
// float32 on the CPU (x, dy: any row stride; y, dx: contiguous, as the collectives write them),
// shapes that disagree with the table, and under sequence parallelism N not divisible by T. The
// checks are local: arguments wrong on some ranks only leave the others waiting in the first
// collective until the communicator's deadline (comm/communicator.h, "No hang"), so pass the same
// shapes everywhere. The shard helpers refuse out or in not divisible by T.
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ampipe {

enum class TensorParallelKind { Column, Row };

// Where a parameter's tensor-parallel shard lies in the full (T = 1) tensor, for whoever moves
// parameters between layouts (a checkpoint writer, the tests): for each piece, the shard's
// [local_begin, local_begin + size) along `dim` (0: rows or a bias's elements, 1: columns of a
// matrix; of a 3-D expert tensor [E_local, out, in], 1 or 2) is the full tensor's [full_begin,
// full_begin + size) along the same dim; every other dim is whole. An expert tensor's full shape is
// its local experts' at the full FFN width (expert tensor parallelism, model/moe/experts.h). A
// column-parallel shard is one piece of rows, except the GPT family's fused QKV weight and bias, which hold
// three (this rank's q, k and v rows; model/attention_layer.h); a row-parallel weight is one piece of
// columns. The pieces cover the shard in order.
struct TensorParallelShard {
  struct Piece {
    int64_t local_begin = 0, full_begin = 0, size = 0;
  };
  std::string name;  // the parameter's registry name
  Shape full_shape;
  int dim = 0;
  std::vector<Piece> pieces;
};
// The shard (a contiguous copy) of `full` [full_shape]: its pieces, in order.
Tensor take_tensor_parallel_shard(const Tensor& full, const TensorParallelShard& shard);
// Writes `shard_value` (the shard's shape) into its pieces of `full` [full_shape]; the rest of
// `full` is untouched.
void place_tensor_parallel_shard(const Tensor& shard_value, const TensorParallelShard& shard, Tensor full);

// Rank `rank`'s shard (a contiguous copy) of a full float32 CPU weight [out, in] of a `ranks`-way
// layer of `kind`: rows [rank out/T, ...) for Column, columns [rank in/T, ...) for Row. Refuses
// out % T (Column) or in % T (Row) != 0, and rank outside [0, ranks).
Tensor tensor_parallel_weight_shard(const Tensor& weight, TensorParallelKind kind, int rank, int ranks);
// The bias the rank holds: elements [rank out/T, ...) of a full bias [out] for Column, a copy of
// the whole bias for Row. Undefined in, undefined out.
Tensor tensor_parallel_bias_shard(const Tensor& bias, TensorParallelKind kind, int rank, int ranks);

void column_parallel_forward(const Tensor& x, const Tensor& weight_shard, const Tensor& bias_shard,
                             Communicator& group, bool sequence_parallel, Tensor y_shard);
// x as the forward's (this rank's rows under sequence parallelism, gathered again here).
void column_parallel_backward(const Tensor& x, const Tensor& weight_shard, const Tensor& dy_shard,
                              Communicator& group, bool sequence_parallel, Tensor dx, Tensor dweight_shard,
                              Tensor dbias_shard);

void row_parallel_forward(const Tensor& x_shard, const Tensor& weight_shard, const Tensor& bias,
                          Communicator& group, bool sequence_parallel, Tensor y);
// dy: this rank's rows [S, out] under sequence parallelism, else the whole [N, out].
void row_parallel_backward(const Tensor& x_shard, const Tensor& weight_shard, const Tensor& dy,
                           Communicator& group, bool sequence_parallel, Tensor dx_shard, Tensor dweight_shard,
                           Tensor dbias);

}  // namespace ampipe
