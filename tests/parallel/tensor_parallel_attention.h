// What the tensor-parallel attention and block tests share (tests/parallel/mpi_test_tensor_parallel.cpp,
// mpi_test_tensor_parallel_blocks.cpp): the attention half's config, the sequence, the tolerance
// of a tensor-parallel result against one rank, and named results.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "grad_check.h"
#include "model/config.h"

namespace ampipe::testing {

// float32 tolerance: kAttentionTolerance, ten times tighter than kTolerance's worst-case bound. The
// results differ only in summation order: the output projection adds T partials of h hd / T terms
// where one rank adds h hd in one GEMM, the input projections' dx likewise over the q, k, v shards,
// and narrower GEMMs block differently. Every such dot product has K <= 64 terms (d = h hd = 64) of
// O(1) inputs (|sum a_k b_k| <= ~8), and reassociating it moves the result by about sqrt(K) u 8 =
// 4e-6 (u = 2^-24; the worst case 2 K u 8 = 6e-5 is above). Measured: at most 1.5e-6 on values up to
// 8, at 2 and 4 ranks, in every case. atol = 2e-5 (and rtol 2e-5 for the large values) leaves 10x
// room over what is measured; floor = 1e-4 > 2 atol keeps a zero or negated element failing, and the
// aggregate demands cosine > 1 - 1e-8 and relative L2 < 1e-5.
constexpr GradientTolerance kAttentionTolerance{1e-4, 2e-5, 2e-5, 1 - 1e-8, 1e-5};

constexpr int64_t kBatch = 2, kSeq = 12;

inline ModelConfig attention_config(bool mixtral, bool bf16) {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 8;
  c.max_seq_len = kSeq;
  if (mixtral) {
    c.set_family("mixtral");  // RMSNorm, rope, no biases
    c.num_query_groups = 4;   // grouped-query attention, the groups split over T <= 4 too
  }
  c.bf16 = bf16;
  return c;
}

// Named results, full layout: "y", "dx", then every parameter's gradient by name.
using Named = std::vector<std::pair<std::string, Tensor>>;

}  // namespace ampipe::testing
