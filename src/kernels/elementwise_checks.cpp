#include "kernels/elementwise_checks.h"

#include <cmath>

namespace ampipe::kernels::detail {
namespace {

void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* a_name,
                      const char* b_name) {
  AMPIPE_CHECK(a.shape() == b.shape())
      << op << ": " << a_name << " " << shape_string(a.shape()) << " and " << b_name << " "
      << shape_string(b.shape()) << " must have the same shape";
}

void check_2d(const Tensor& t, const char* op, const char* name) {
  AMPIPE_CHECK(t.ndim() == 2) << op << ": " << name << " must be 2-D [rows, cols], got "
                              << shape_string(t.shape());
}

void check_like_param(const Tensor& param, const Tensor& other, const char* name) {
  AMPIPE_CHECK(other.shape() == param.shape())
      << "adamw_update: " << name << " " << shape_string(other.shape()) << " must match param "
      << shape_string(param.shape());
}

}  // namespace

GemmDims check_gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& c) {
  AMPIPE_CHECK(a.dtype() == b.dtype() && (a.dtype() == DType::F32 || a.dtype() == DType::BF16) &&
               c.dtype() == DType::F32)
      << "gemm takes a and b both float32 or both bfloat16, and c float32; got " << dtype_name(a.dtype())
      << ", " << dtype_name(b.dtype()) << ", " << dtype_name(c.dtype());
  AMPIPE_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2)
      << "gemm takes 2-D tensors, got " << shape_string(a.shape()) << ", " << shape_string(b.shape()) << ", "
      << shape_string(c.shape());
  const int64_t m = transpose_a ? a.dim(1) : a.dim(0);
  const int64_t ka = transpose_a ? a.dim(0) : a.dim(1);
  const int64_t kb = transpose_b ? b.dim(1) : b.dim(0);
  const int64_t n = transpose_b ? b.dim(0) : b.dim(1);
  AMPIPE_CHECK(ka == kb && c.dim(0) == m && c.dim(1) == n)
      << "gemm shape mismatch: op(a) [" << m << ", " << ka << "] @ op(b) [" << kb << ", " << n << "] -> c "
      << shape_string(c.shape());
  return {m, n, ka};
}

void check_add_bias(const Tensor& y, const Tensor& bias) {
  check_2d(y, "add_bias", "y");
  AMPIPE_CHECK(bias.ndim() == 1 && bias.dim(0) == y.dim(1))
      << "add_bias: bias " << shape_string(bias.shape()) << " must be [" << y.dim(1) << "] for y "
      << shape_string(y.shape());
}

void check_bias_backward(const Tensor& dy, const Tensor& dbias) {
  check_2d(dy, "bias_backward", "dy");
  AMPIPE_CHECK(dbias.ndim() == 1 && dbias.dim(0) == dy.dim(1))
      << "bias_backward: dbias " << shape_string(dbias.shape()) << " must be [" << dy.dim(1) << "] for dy "
      << shape_string(dy.shape());
}

ConvertLayout check_convert(const Tensor& src, const Tensor& dst) {
  const auto floating = [](DType d) { return d == DType::F32 || d == DType::BF16; };
  AMPIPE_CHECK(floating(src.dtype()) && floating(dst.dtype()))
      << "convert: float32 and bfloat16 only, got " << dtype_name(src.dtype()) << " -> "
      << dtype_name(dst.dtype());
  AMPIPE_CHECK(src.shape() == dst.shape() && src.ndim() >= 1 && src.ndim() <= 2)
      << "convert: src " << shape_string(src.shape()) << " and dst " << shape_string(dst.shape())
      << " must have one shape, 1-D or 2-D";
  const int64_t cols = src.shape().back();
  return {src.ndim() == 2 ? src.dim(0) : 1, cols, src.ndim() == 2 ? src.stride(0) : cols,
          dst.ndim() == 2 ? dst.stride(0) : cols};
}

void check_add_inplace(const Tensor& y, const Tensor& x) { check_same_shape(y, x, "add_inplace", "y", "x"); }

void check_gelu_forward(const Tensor& x, const Tensor& y) {
  check_same_shape(x, y, "gelu_forward", "x", "y");
}

void check_gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  check_same_shape(x, dy, "gelu_backward", "x", "dy");
  check_same_shape(x, dx, "gelu_backward", "x", "dx");
}

void check_swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  check_2d(gate, "swiglu_forward", "gate");
  check_same_shape(gate, up, "swiglu_forward", "gate", "up");
  check_same_shape(gate, out, "swiglu_forward", "gate", "out");
}

void check_swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, const Tensor& dgate,
                           const Tensor& dup) {
  check_2d(gate, "swiglu_backward", "gate");
  check_same_shape(gate, up, "swiglu_backward", "gate", "up");
  check_same_shape(gate, dout, "swiglu_backward", "gate", "dout");
  check_same_shape(gate, dgate, "swiglu_backward", "gate", "dgate");
  check_same_shape(gate, dup, "swiglu_backward", "gate", "dup");
}

void check_softmax_rows(const Tensor& x, const Tensor& y) {
  check_2d(x, "softmax_rows", "x");
  check_same_shape(x, y, "softmax_rows", "x", "y");
}

void check_softmax_rows_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  check_2d(y, "softmax_rows_backward", "y");
  check_same_shape(y, dy, "softmax_rows_backward", "y", "dy");
  check_same_shape(y, dx, "softmax_rows_backward", "y", "dx");
}

void check_adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                        const AdamWStep& hp) {
  check_like_param(param, grad, "grad");
  check_like_param(param, m, "m");
  check_like_param(param, v, "v");
  AMPIPE_CHECK(hp.step >= 1) << "adamw_update: step " << hp.step << " must be >= 1 (it is 1-based)";
  AMPIPE_CHECK(hp.beta1 >= 0.0f && hp.beta1 < 1.0f)
      << "adamw_update: beta1 " << hp.beta1 << " must be in [0, 1)";
  AMPIPE_CHECK(hp.beta2 >= 0.0f && hp.beta2 < 1.0f)
      << "adamw_update: beta2 " << hp.beta2 << " must be in [0, 1)";
  AMPIPE_CHECK(hp.eps >= 0.0f) << "adamw_update: eps " << hp.eps << " must be >= 0";
}

AdamWCorrections adamw_corrections(const AdamWStep& hp) {
  const double t = static_cast<double>(hp.step);
  return {static_cast<float>(1.0 - std::pow(static_cast<double>(hp.beta1), t)),
          static_cast<float>(1.0 - std::pow(static_cast<double>(hp.beta2), t))};
}

}  // namespace ampipe::kernels::detail
