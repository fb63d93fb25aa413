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
  linear_backward_weight(x, weight, dy, dweight, dbias);
  linear_backward_input(weight, dy, dx, accumulate_dx);
}

void linear_backward_input(const Tensor& weight, const Tensor& dy, Tensor dx, bool accumulate_dx) {
  if (!dx.defined()) return;
  kernels::gemm(kernels::as_dtype(dy, weight.dtype()), false, weight, false, dx, 1.0f,
                accumulate_dx ? 1.0f : 0.0f);
}

void linear_backward_weight(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor dweight,
                            Tensor dbias) {
  kernels::gemm(kernels::as_dtype(dy, weight.dtype()), true, kernels::as_dtype(x, weight.dtype()), false,
                dweight, 1.0f, 1.0f);
  if (dbias.defined()) kernels::bias_backward(dy, dbias);
}

}  // namespace ampipe
