// Causal multi-head attention, computed in tiles with an online softmax (FlashAttention style):
// memory is O(tokens * d), never O(N^2).
//
// One kernel serves a full sequence and a pipeline chunk: queries are positions
// [q_begin, q_begin + Nq) of each of B sequences and attend to keys [0, q_begin + Nq) of the same
// sequence (position i sees j <= i).
//
// Grouped-query attention: h query heads share g KV heads (g divides h; g == h is ordinary
// multi-head attention, g == 1 multi-query attention); query head j uses KV head j / (h / g).
// K and V are never copied per query head.
//
// Layout (rows sequence-major; head j of a tensor uses its columns j*hd .. (j+1)*hd-1, hd = d / h;
// column-slice views allowed):
//   q    [B*Nq, h*hd]  row b*Nq + i holds query position q_begin + i of sequence b
//   k, v [B*Nk, g*hd]  row b*Nk + j holds key position j; requires Nk >= q_begin + Nq
//   out  [B*Nq, h*hd]  written
//   lse  [B, h, Nq]    written: log-sum-exp of the scaled scores per query row (saved for backward)
// scale is 1/sqrt(hd).
// q, k, v, out, dout, dq, dk, dv may be bfloat16 (elementwise.h, "bfloat16 operands": computed in
// float32, the scores, softmax statistics and every sum in float32); lse is float32.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ampipe::kernels {

struct AttentionShape {
  int64_t batch = 1;      // B sequences
  int64_t num_heads = 1;  // h
  int64_t q_begin = 0;    // position of the first query row in its sequence
  int64_t q_len = 0;      // Nq
  int64_t kv_len = 0;     // Nk rows of k and v per sequence (keys used: [0, q_begin + q_len))
  int64_t num_kv_heads =
      0;  // g KV heads; 0 means num_heads. h % g == 0; query head j uses KV head j / (h / g)
};

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& shape,
                       Tensor out, Tensor lse);

// Backward, recomputing probabilities tile by tile from q, k, v and lse.
// dq [B*Nq, h*hd] written; dk, dv [B*Nk, g*hd] accumulated (only rows < q_begin + Nq are touched),
// so the chunks of a pipelined block add up to the full-sequence gradients. With g < h, dk and dv
// of a KV head sum the contributions of its query heads in head order (deterministic).
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionShape& shape, Tensor dq,
                        Tensor dk, Tensor dv);

}  // namespace ampipe::kernels
