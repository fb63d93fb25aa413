// Moving tokens into expert order and back (the local half of the MoE dispatcher).
//
// A DispatchPlan maps (token, choice) pairs to rows of an expert-major "permuted" buffer: expert
// 0's rows first, then expert 1's, ...; within an expert, earlier tokens first (and for one token,
// earlier choices first). With a capacity, each expert keeps at most `capacity` pairs, the earliest
// tokens first; dropped pairs have slot -1 and contribute zero (docs/MODEL.md, "Capacity").
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ampipe::kernels {

struct DispatchPlan {
  int num_experts = 0;
  std::vector<int64_t> expert_counts;  // [E] kept pairs per expert (host: sizes the all-to-all)
  std::vector<int64_t> routed_counts;  // [E] pairs that selected e before dropping (aux loss)
  Tensor token_slot;                   // [T, k] int32: row in the permuted buffer, or -1 if dropped
  Tensor slot_token;                   // [P] int32: source token of each permuted row
  int64_t num_slots() const;           // P = sum of expert_counts
};

// capacity < 0 means dropless. expert_index [T, k] int32 in [0, E) (checked).
DispatchPlan make_dispatch_plan(const Tensor& expert_index, int num_experts, int64_t capacity);

// out[p, :] = x[slot_token[p], :] (written). x [T, d]; out [P, d].
void permute_forward(const Tensor& x, const DispatchPlan& plan, Tensor out);
// dx[t, :] = sum over kept choices j of dout[token_slot[t, j], :] (written). dout [P, d]; dx [T, d].
void permute_backward(const Tensor& dout, const DispatchPlan& plan, Tensor dx);

// out[t, :] = sum over kept choices j of gate[t, j] * y[token_slot[t, j], :] (written).
// y [P, d]; gate [T, k]; out [T, d].
void unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate, Tensor out);
// dy[slot] = gate[t, j] * dout[t] (written); dgate[t, j] = dot(dout[t], y[slot]), 0 if dropped
// (written). dout [T, d]; y [P, d]; dy [P, d]; dgate [T, k].
void unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan, const Tensor& gate,
                        Tensor dy, Tensor dgate);

// Row moves by an index (regrouping received tokens by expert and back).
// gather_rows: dst[i, :] = src[index[i], :]; scatter_rows: dst[index[i], :] = src[i, :] (both
// written). index [n] int32 with entries in range (checked); rows of width src.dim(1); src and dst
// both float32 or both bfloat16 (bf16 rows are moved bit for bit).
void gather_rows(const Tensor& src, const Tensor& index, Tensor dst);
void scatter_rows(const Tensor& src, const Tensor& index, Tensor dst);

}  // namespace ampipe::kernels
