// Shape and argument checks of the row kernels, shared by both backends (kernels/row_checks.h).
#include "kernels/row_checks.h"

#include <cmath>
#include <string>

namespace ampipe::kernels::detail {
namespace {

void check_matrix(const Tensor& t, int64_t rows, int64_t cols, const char* op, const char* name) {
  AMPIPE_CHECK(t.ndim() == 2 && t.dim(0) == rows && t.dim(1) == cols)
      << op << ": " << name << " " << shape_string(t.shape()) << " must be [" << rows << ", " << cols << "]";
}

void check_vector(const Tensor& t, int64_t n, const char* op, const char* name) {
  AMPIPE_CHECK(t.ndim() == 1 && t.dim(0) == n)
      << op << ": " << name << " " << shape_string(t.shape()) << " must be [" << n << "]";
}

void check_norm_input(const Tensor& x, const char* op) {
  AMPIPE_CHECK(x.ndim() == 2 && x.dim(1) >= 1)
      << op << ": x must be 2-D [rows, cols >= 1], got " << shape_string(x.shape());
}

void check_table(const Tensor& table, int64_t min_rows, int64_t width, const char* op, const char* name) {
  AMPIPE_CHECK(table.ndim() == 2 && table.dim(0) >= min_rows && table.dim(1) == width)
      << op << ": " << name << " " << shape_string(table.shape()) << " must be [>= " << min_rows << ", "
      << width << "]";
}

// The token ids' dtype and count against the sequence length.
void check_tokens_shape(const Tensor& tokens, int64_t num_rows, int64_t seq_len, const char* op) {
  AMPIPE_CHECK(tokens.dtype() == DType::I32 && tokens.ndim() == 1 && tokens.dim(0) == num_rows)
      << op << ": tokens must be int32 [" << num_rows << "], got " << dtype_name(tokens.dtype()) << " "
      << shape_string(tokens.shape());
  AMPIPE_CHECK(seq_len >= 1 && num_rows % seq_len == 0)
      << op << ": " << num_rows << " tokens are not a whole number of sequences of length " << seq_len;
}

void check_targets_shape(const Tensor& logits, const Tensor& targets, const char* op) {
  AMPIPE_CHECK(logits.ndim() == 2 && logits.dim(1) >= 1)
      << op << ": logits must be 2-D [tokens, vocab >= 1], got " << shape_string(logits.shape());
  AMPIPE_CHECK(targets.dtype() == DType::I32 && targets.ndim() == 1 && targets.dim(0) == logits.dim(0))
      << op << ": targets must be int32 [" << logits.dim(0) << "], got " << dtype_name(targets.dtype()) << " "
      << shape_string(targets.shape());
}

}  // namespace

void check_layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& y,
                             const Tensor& mean, const Tensor& rstd, float eps) {
  AMPIPE_CHECK(eps >= 0.0f) << "layernorm_forward: eps must be >= 0, got " << eps;
  check_norm_input(x, "layernorm_forward");
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  check_matrix(y, rows, cols, "layernorm_forward", "y");
  check_vector(weight, cols, "layernorm_forward", "weight");
  check_vector(bias, cols, "layernorm_forward", "bias");
  check_vector(mean, rows, "layernorm_forward", "mean");
  check_vector(rstd, rows, "layernorm_forward", "rstd");
}

void check_layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                              const Tensor& rstd, const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
  check_norm_input(x, "layernorm_backward");
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  check_matrix(dy, rows, cols, "layernorm_backward", "dy");
  check_matrix(dx, rows, cols, "layernorm_backward", "dx");
  check_vector(weight, cols, "layernorm_backward", "weight");
  check_vector(mean, rows, "layernorm_backward", "mean");
  check_vector(rstd, rows, "layernorm_backward", "rstd");
  check_vector(dweight, cols, "layernorm_backward", "dweight");
  check_vector(dbias, cols, "layernorm_backward", "dbias");
}

void check_rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps) {
  AMPIPE_CHECK(eps >= 0.0f) << "rmsnorm_forward: eps must be >= 0, got " << eps;
  check_norm_input(x, "rmsnorm_forward");
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  check_matrix(y, rows, cols, "rmsnorm_forward", "y");
  check_vector(weight, cols, "rmsnorm_forward", "weight");
  check_vector(rstd, rows, "rmsnorm_forward", "rstd");
}

void check_rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                            const Tensor& dx, const Tensor& dweight) {
  check_norm_input(x, "rmsnorm_backward");
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  check_matrix(dy, rows, cols, "rmsnorm_backward", "dy");
  check_matrix(dx, rows, cols, "rmsnorm_backward", "dx");
  check_vector(weight, cols, "rmsnorm_backward", "weight");
  check_vector(rstd, rows, "rmsnorm_backward", "rstd");
  check_vector(dweight, cols, "rmsnorm_backward", "dweight");
}

void check_embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                             int64_t seq_len, const Tensor& x) {
  AMPIPE_CHECK(x.ndim() == 2) << "embedding_forward: x must be 2-D [tokens, d], got " << shape_string(x.shape());
  const int64_t width = x.dim(1);
  check_table(token_table, 0, width, "embedding_forward", "token_table");
  if (position_table.defined()) check_table(position_table, seq_len, width, "embedding_forward", "position_table");
  check_tokens_shape(tokens, x.dim(0), seq_len, "embedding_forward");
}

void check_embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, const Tensor& dtoken_table,
                              const Tensor& dposition_table) {
  AMPIPE_CHECK(dx.ndim() == 2) << "embedding_backward: dx must be 2-D [tokens, d], got "
                               << shape_string(dx.shape());
  const int64_t width = dx.dim(1);
  check_table(dtoken_table, 0, width, "embedding_backward", "dtoken_table");
  if (dposition_table.defined())
    check_table(dposition_table, seq_len, width, "embedding_backward", "dposition_table");
  check_tokens_shape(tokens, dx.dim(0), seq_len, "embedding_backward");
}

void check_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses) {
  check_targets_shape(logits, targets, "cross_entropy_forward");
  const int64_t rows = logits.dim(0);
  AMPIPE_CHECK(losses.ndim() == 1 && losses.dim(0) == rows)
      << "cross_entropy_forward: losses " << shape_string(losses.shape()) << " must be [" << rows << "]";
}

void check_cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& dlogits) {
  check_targets_shape(logits, targets, "cross_entropy_backward");
  AMPIPE_CHECK(dlogits.shape() == logits.shape())
      << "cross_entropy_backward: dlogits " << shape_string(dlogits.shape()) << " must match logits "
      << shape_string(logits.shape());
}

int64_t check_rope(const char* op, const Tensor& x, int64_t batch, int64_t num_heads, int64_t pos_begin,
                   double theta) {
  AMPIPE_CHECK(x.defined() && x.dtype() == DType::F32 && x.ndim() == 2)
      << op << ": x must be a 2-D float tensor [batch * n, heads * head_dim], got "
      << (x.defined() ? shape_string(x.shape()) : std::string("an undefined tensor"));
  AMPIPE_CHECK(batch >= 1) << op << ": batch must be >= 1, got " << batch;
  AMPIPE_CHECK(num_heads >= 1) << op << ": num_heads must be >= 1, got " << num_heads;
  AMPIPE_CHECK(pos_begin >= 0) << op << ": pos_begin must be >= 0, got " << pos_begin;
  AMPIPE_CHECK(theta > 0.0 && std::isfinite(theta)) << op << ": theta must be finite and > 0, got " << theta;
  const int64_t rows = x.dim(0), width = x.dim(1);
  AMPIPE_CHECK(rows % batch == 0) << op << ": rows " << rows << " of x " << shape_string(x.shape())
                                  << " are not divisible by batch " << batch;
  AMPIPE_CHECK(width % num_heads == 0)
      << op << ": width " << width << " of x is not divisible by num_heads " << num_heads;
  const int64_t head_dim = width / num_heads;
  AMPIPE_CHECK(head_dim % 2 == 0 && head_dim > 0) << op << ": head_dim " << head_dim << " (width " << width
                                                  << " / num_heads " << num_heads << ") must be even and > 0";
  return head_dim;
}

std::vector<float> rope_inv_freq(int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  const float base = static_cast<float>(theta);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(exponent)));
    inv_freq[i] = 1.0f / power;
  }
  return inv_freq;
}

}  // namespace ampipe::kernels::detail
