// The softmax cross-entropy of an LM head whose vocabulary is split over the ranks of a
// tensor-parallel group (Megatron-LM's vocab_parallel_cross_entropy): no rank holds a full row of
// logits. GptMoe's loss under tensor parallelism (model/gpt.h; docs/MODEL.md, "Vocabulary-parallel
// embedding and LM head").
//
// Layout: rank r of the group (size R) holds the logits of vocabulary ids [begin_r, begin_r + Vs_r).
// The shards tile [0, V) in rank order: begin_0 = 0, begin_{r+1} = begin_r + Vs_r, the sizes sum to
// V. Sizes may differ between ranks (each >= 1). Every rank passes the same targets and V.
//
// Per token t, with M = the maximum of the whole row z and S = sum over all V ids of exp(z_j - M):
//   losses[t]        = (M - z[targets[t]]) + log(S)                          (the same on every rank)
//   dlogits[t, j]    = scale * (exp(z_j - M) / S - [begin + j == targets[t]])  (this rank's columns)
// kernels/cross_entropy.h's forward and backward on the full [T, V] logits, computed in pieces.
//
// Numerics follow that kernel's CPU implementation: the maximum is subtracted before
// exponentiating (no overflow for any finite logits), exponentials are float32, S is accumulated
// in double (each rank's partial sum in double, the partials added in rank order in double), the
// loss is formed in double as (M - z[target]) + log(S) and rounded once. M and z[target] are exact
// (a maximum and a copy). The one difference is the exponential itself: this uses std::exp, the
// CPU kernel its own vectorised fast_exp (both within 1 ulp), so even on one rank the results are
// not the kernel's bits (most are). S differs by under 1.6e-7 relative, so the loss by under
// 1.6e-7 plus a float32 rounding on either side, and each dlogits element by under 7e-7 |scale|;
// splitting the sums by shard adds ~1e-16 relative, as they stay in double. The tests hold it to
// 4e-7 + 4e-7 |loss| and 1.5e-6 |scale| (tests/model/vocab_parallel_check.h says why).
//
// Collectives (forward only; every rank of the group calls forward together; backward calls none).
// Communicator has no element-wise maximum of a tensor and sums float32 only, so the forward
// gathers each rank's small per-row values with all_gather and reduces them itself, in rank order:
// the sums stay in double and every rank computes the same bits, whatever the backend's order.
//   1. all_gather of a header per rank (48 bytes): whether its own arguments passed the local
//      checks, V, begin, Vs, T and a hash of its targets. Every rank then checks that no rank
//      refused, that V, T and the targets agree and that the shards tile [0, V). A refusal is thrown
//      on every rank after this one collective, so the group stays in step: a rank's own bad
//      argument is named on that rank (the others name the rank), a disagreement on all of them.
//   2. all_gather of each row's local maximum and the target's logit (its owner's value): 8 T bytes.
//   3. all_gather of each row's partial sum of exp(z_j - M) in double: 8 T bytes.
// Each rank receives R (48 + 16 T) bytes (with T = 0, only the headers): small beside the logits.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ampipe {

// What the forward keeps for the backward (no copy of the logits: the backward reads them again).
struct VocabParallelStats {
  std::vector<float> row_max;   // [T] M, the maximum of each whole row
  std::vector<double> row_sum;  // [T] S, sum over the whole vocabulary of exp(z - M)
  int64_t shard_begin = 0;      // this rank's first vocabulary id
  int64_t shard_size = 0;       // Vs
  int64_t vocab_size = 0;       // V
};

// logits_shard [T, Vs] float32 on the CPU (row-strided views allowed, e.g. columns of a [T, V]
// matrix); targets [T] int32 global ids in [0, vocab_size); shard_begin this rank's first id;
// losses [T] float32 on the CPU, written; stats filled. Refused (ampipe::Error, on every rank of
// the group): a bad dtype, shape or device, a target outside [0, V), V outside [1, 2^31], shards
// that do not tile [0, V) in rank order, and V, T or targets that differ between ranks.
void vocab_parallel_cross_entropy_forward(const Tensor& logits_shard, const Tensor& targets,
                                          int64_t shard_begin, int64_t vocab_size, Communicator& group,
                                          Tensor losses, VocabParallelStats& stats);

// dlogits_shard [T, Vs] float32 = scale * (softmax - onehot) on this rank's columns (written; may
// alias logits_shard). logits_shard and targets must be the forward's; stats its output (their
// shapes are checked, their values are not). `scale` as kernels::cross_entropy_backward takes it
// (e.g. 1 / tokens for a mean loss). Local: no collective.
void vocab_parallel_cross_entropy_backward(const Tensor& logits_shard, const Tensor& targets,
                                           const VocabParallelStats& stats, float scale,
                                           Tensor dlogits_shard);

}  // namespace ampipe
