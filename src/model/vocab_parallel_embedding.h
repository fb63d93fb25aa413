// The token embedding of a vocabulary split over the ranks of a tensor-parallel group
// (Megatron-LM's VocabParallelEmbedding): rank t holds rows [begin, begin + Vs) of the [V, d] table
// (the same rows as its shard of the tied LM head, model/vocab_parallel.h), so no rank holds the
// whole table.
//
// forward:  x[r] = sum over the group of (table_shard[tokens[r] - begin] if this rank holds the id,
//           else 0), an all_reduce_sum of [rows, d] float32 over the group; then + position_table[r %
//           seq_len] when a position table is given (replicated, added once after the reduction).
//           Exactly one rank holds each id, so the sum is that rank's row exactly: the result is
//           kernels::embedding_forward's bits on the whole table.
//           With sequence_parallel, x is this rank's rows of that sum ([rows / T, d],
//           model/sequence_parallel.h): a reduce-scatter instead of the all-reduce, then the
//           positions of those rows.
// backward: dtable_shard[id - begin] += dx[r] for every row r whose id this rank holds, in row order
//           (the order kernels::embedding_backward accumulates in, so the same bits), and
//           dposition_table[i] += the sum over sequences of dx rows at position i (every rank the
//           same; dposition_table may be undefined). Local: no collective.
//
// float32 CPU tensors only (ampipe::Error naming the tensor otherwise); tokens [rows] int32 in
// [0, V) (an id outside it is refused on every rank before the collective, as each rank checks all
// ids); every rank of the group passes the same tokens.
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ampipe {

void vocab_parallel_embedding_forward(const Tensor& tokens, const Tensor& table_shard, int64_t shard_begin,
                                      int64_t vocab_size, const Tensor& position_table, int64_t seq_len,
                                      Communicator& group, Tensor x, bool sequence_parallel = false);

void vocab_parallel_embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len,
                                       int64_t shard_begin, Tensor dtable_shard, Tensor dposition_table);

}  // namespace ampipe
