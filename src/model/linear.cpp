#include "model/linear.h"

#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace ampipe {

void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y) {
  kernels::gemm(kernels::as_dtype(x, weight.dtype()), false, weight, true, y);
  if (bias.defined()) kernels::add_bias(y, bias);
}

void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor dx, Tensor dweight,
                     Tensor dbias, bool accumulate_dx) {
  const Tensor dy_op = kernels::as_dtype(dy, weight.dtype());
  kernels::gemm(dy_op, true, kernels::as_dtype(x, weight.dtype()), false, dweight, 1.0f, 1.0f);
  if (dbias.defined()) kernels::bias_backward(dy, dbias);
  if (dx.defined()) kernels::gemm(dy_op, false, weight, false, dx, 1.0f, accumulate_dx ? 1.0f : 0.0f);
}

}  // namespace ampipe
