// Shape checks of the attention kernels (kernels/attention.h), shared by the CPU and CUDA backends
// so that both refuse exactly the same calls with the same messages. Internal to kernels/.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/attention.h"

namespace ampipe::kernels::detail {

// The sizes of one attention call, resolved and checked.
struct AttentionDims {
  int64_t batch, heads, kv_heads, head_dim, q_begin, q_len, kv_len;
  int64_t kv_used() const { return q_begin + q_len; }  // key rows the queries see
  int64_t group() const { return heads / kv_heads; }   // query heads per KV head
};

// t must be a float tensor [rows, cols] (a column-slice view is fine); `name` is its role.
void check_attention_matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols,
                            const AttentionShape& shape);

// The shape's fields and q, k, v; returns the resolved sizes.
AttentionDims check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const AttentionShape& shape);

// lse must be a contiguous float tensor [batch, num_heads, q_len].
void check_attention_lse(const Tensor& lse, const AttentionShape& shape);

// Every check of attention_forward / attention_backward; return the resolved sizes.
AttentionDims check_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const AttentionShape& shape, const Tensor& out, const Tensor& lse);
AttentionDims check_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                       const Tensor& lse, const Tensor& dout, const AttentionShape& shape,
                                       const Tensor& dq, const Tensor& dk, const Tensor& dv);

}  // namespace ampipe::kernels::detail
