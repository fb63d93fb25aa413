// Sequence parallelism's row layout and its two collectives (Megatron-LM's --sequence-parallel,
// docs/MODEL.md "Sequence parallelism").
//
// Under sequence parallelism the T ranks of a tensor group split the residual stream between them
// instead of each holding all of it. ampipe splits it by rows, strided: row q of the whole [B*N, d]
// buffer (sequence-major, N divisible by T) is row q / T of rank q % T's local [B*N/T, d] buffer.
// Seen per sequence, rank t holds positions t, t+T, t+2T, ...: local row b*(N/T) + j is position
// j*T + t of sequence b. So a local buffer is itself a sequence-major buffer of B sequences of N/T
// rows, and positions [T a, T c) of the whole sequence are local positions [a, c) on every rank:
// every chunk an intra-block pipeline cuts (at local boundaries) is split evenly over the group,
// whatever the chunk plan, and the same local rows hold the same tokens in every block.
//
// The collectives, over the tensor group, on contiguous float32 CPU matrices:
//   sequence_gather           every rank's local rows [R, d] -> the whole rows [T R, d], strided back
//                             into place (an all_gather, then the interleave);
//   sequence_reduce_scatter   each rank's partial whole rows [T R, d] -> the sum of this rank's rows
//                             [R, d] (the de-interleave, then a reduce_scatter_sum).
// Both hold for any R rows that are a strided set of this layout's whole rows (a chunk's rows, in
// the order the whole buffer has them, when their count is a multiple of T).
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ampipe {

Tensor sequence_gather(Communicator& group, const Tensor& local);
void sequence_reduce_scatter(Communicator& group, const Tensor& whole, Tensor local);

// Rank `rank` of `ranks`'s local rows of a whole [T R, ...] float32 or int32 CPU buffer (a copy):
// whole row q * T + rank is local row q. For tests that compare a rank's rows with whole ones.
Tensor sequence_slice(const Tensor& whole, int rank, int ranks);

}  // namespace ampipe
