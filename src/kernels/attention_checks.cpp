#include "kernels/attention_checks.h"

#include <string>

#include "core/error.h"

namespace ampipe::kernels::detail {

void check_attention_matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols,
                            const AttentionShape& shape) {
  AMPIPE_CHECK(t.defined() && t.dtype() == DType::F32 && t.ndim() == 2 && t.dim(0) == rows &&
               t.dim(1) == cols)
      << "attention: " << name << " must be a float tensor [" << rows << ", " << cols << "] for batch "
      << shape.batch << ", q_begin " << shape.q_begin << ", q_len " << shape.q_len << ", kv_len "
      << shape.kv_len << ", num_heads " << shape.num_heads << ", num_kv_heads " << shape.num_kv_heads
      << ", got " << (t.defined() ? shape_string(t.shape()) : std::string("an undefined tensor"));
}

AttentionDims check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const AttentionShape& shape) {
  AMPIPE_CHECK(shape.batch >= 0 && shape.q_begin >= 0 && shape.q_len >= 0)
      << "attention: batch " << shape.batch << ", q_begin " << shape.q_begin << ", q_len " << shape.q_len
      << " must all be >= 0";
  AMPIPE_CHECK(shape.num_heads >= 1) << "attention: num_heads must be >= 1, got " << shape.num_heads;
  AMPIPE_CHECK(shape.num_kv_heads >= 0)
      << "attention: num_kv_heads must be >= 0 (0 means num_heads), got " << shape.num_kv_heads;
  const int64_t kv_heads = shape.num_kv_heads == 0 ? shape.num_heads : shape.num_kv_heads;
  AMPIPE_CHECK(shape.num_heads % kv_heads == 0)
      << "attention: num_heads " << shape.num_heads << " is not divisible by num_kv_heads " << kv_heads;
  AMPIPE_CHECK(shape.kv_len >= shape.q_begin + shape.q_len)
      << "attention: kv_len " << shape.kv_len << " is shorter than the keys the queries see, q_begin "
      << shape.q_begin << " + q_len " << shape.q_len << " = " << shape.q_begin + shape.q_len;
  AMPIPE_CHECK(q.defined() && q.ndim() == 2)
      << "attention: q must be a 2-D tensor [batch * q_len, d], got "
      << (q.defined() ? shape_string(q.shape()) : std::string("an undefined tensor"));
  const int64_t d = q.dim(1);
  AMPIPE_CHECK(d % shape.num_heads == 0 && d > 0)
      << "attention: hidden size " << d << " is not a positive multiple of num_heads " << shape.num_heads;
  check_attention_matrix(q, "q", shape.batch * shape.q_len, d, shape);
  const int64_t head_dim = d / shape.num_heads;
  check_attention_matrix(k, "k", shape.batch * shape.kv_len, kv_heads * head_dim, shape);
  check_attention_matrix(v, "v", shape.batch * shape.kv_len, kv_heads * head_dim, shape);
  return {shape.batch, shape.num_heads, kv_heads, head_dim, shape.q_begin, shape.q_len, shape.kv_len};
}

void check_attention_lse(const Tensor& lse, const AttentionShape& shape) {
  const Shape expected{shape.batch, shape.num_heads, shape.q_len};
  AMPIPE_CHECK(lse.defined() && lse.dtype() == DType::F32 && lse.shape() == expected && lse.is_contiguous())
      << "attention: lse must be a contiguous float tensor " << shape_string(expected) << ", got "
      << (lse.defined() ? shape_string(lse.shape()) : std::string("an undefined tensor"));
}

AttentionDims check_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const AttentionShape& shape, const Tensor& out, const Tensor& lse) {
  const AttentionDims dims = check_attention_inputs(q, k, v, shape);
  check_attention_matrix(out, "out", shape.batch * shape.q_len, q.dim(1), shape);
  check_attention_lse(lse, shape);
  return dims;
}

AttentionDims check_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                       const Tensor& lse, const Tensor& dout, const AttentionShape& shape,
                                       const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  const AttentionDims dims = check_attention_inputs(q, k, v, shape);
  const int64_t d = q.dim(1), kv_d = dims.kv_heads * dims.head_dim;
  check_attention_matrix(out, "out", shape.batch * shape.q_len, d, shape);
  check_attention_matrix(dout, "dout", shape.batch * shape.q_len, d, shape);
  check_attention_matrix(dq, "dq", shape.batch * shape.q_len, d, shape);
  check_attention_matrix(dk, "dk", shape.batch * shape.kv_len, kv_d, shape);
  check_attention_matrix(dv, "dv", shape.batch * shape.kv_len, kv_d, shape);
  check_attention_lse(lse, shape);
  return dims;
}

}  // namespace ampipe::kernels::detail
