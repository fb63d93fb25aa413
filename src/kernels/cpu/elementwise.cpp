// CPU element-wise and row-wise kernels (kernels/elementwise.h).
//
// Every loop is split by rows (or, when all operands are contiguous, by flat element ranges) with
// parallel_for's static partition, so each output element is written by exactly one thread.
// Reductions (bias_backward, sum_of_squares) sum fixed-size blocks, each by one thread, and combine
// the block partials in block order: the summation order does not depend on the thread count.
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::cpu {
namespace {

using cpu::as_matrix;
using cpu::exp_inplace;
using cpu::kGrainElements;
using cpu::Matrix;
using cpu::row_grain;
using cpu::row_max;
// Rows per block in cross-row reductions (bias_backward): partial sums cost 1/kReduceRows extra traffic.
constexpr int64_t kReduceRows = 64;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// Calls fn(row, col_begin, col_end) over every element of a rows x cols job, in parallel. When all
// operands are contiguous the job is one flat span (row 0, columns past `cols` included), so even a
// single long row is split across threads.
template <class Fn>
void for_each_span(int64_t rows, int64_t cols, bool contiguous, const Fn& fn) {
  if (contiguous) {
    parallel_for(rows * cols, kGrainElements, [&](int64_t begin, int64_t end) { fn(0, begin, end); });
  } else {
    parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) fn(r, 0, cols);
    });
  }
}

// Row sums in double. `omp simd reduction` lets GCC vectorise them (it may not reassociate a plain
// loop); the lane layout is fixed at compile time and GCC does not peel for alignment on AVX2, so
// the result depends only on the data and the row length.
double row_sum(const float* x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

double row_dot(const float* a, const float* b, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += static_cast<double>(a[j]) * b[j];
  return s;
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), is evaluated through the
// identity 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + e^{-2u}): the same function, without the
// cancellation in 1 + tanh(u) where tanh(u) rounds to -1 (negative x), and with a vectorised exp.
// Spans are processed in blocks of kGeluBlock through a stack buffer holding e^{-2u}.
constexpr int64_t kGeluBlock = 256;
// e^80 ~ 5.5e34: finite, and 1 / (1 + e) still a normal float; beyond it gelu(x) and its
// derivative are 0 to float precision anyway.
constexpr float kGeluMaxExponent = 80.0f;

void gelu_span(const float* x, float* y, int64_t n) {
  alignas(32) float e[kGeluBlock];
  for (int64_t b = 0; b < n; b += kGeluBlock) {
    const int64_t m = std::min(kGeluBlock, n - b);
    const float* xb = x + b;
    for (int64_t j = 0; j < m; ++j)
      e[j] = std::min(kGeluMaxExponent, -2.0f * kSqrt2OverPi * (xb[j] + kGeluCubic * xb[j] * xb[j] * xb[j]));
    exp_inplace(e, m);
    for (int64_t j = 0; j < m; ++j) y[b + j] = xb[j] / (1.0f + e[j]);
  }
}

// dx = dy * d/dx [x s(2u)] = dy * (s + x s (1 - s) 2 du/dx), s = 1 / (1 + e), 1 - s = e s.
// The exponent is capped (kGeluMaxExponent) so e stays finite: an infinite e would make e * s = NaN
// for x below about -11, where the true derivative is ~0.
void gelu_backward_span(const float* x, const float* dy, float* dx, int64_t n) {
  alignas(32) float e[kGeluBlock];
  for (int64_t b = 0; b < n; b += kGeluBlock) {
    const int64_t m = std::min(kGeluBlock, n - b);
    const float* xb = x + b;
    for (int64_t j = 0; j < m; ++j)
      e[j] = std::min(kGeluMaxExponent, -2.0f * kSqrt2OverPi * (xb[j] + kGeluCubic * xb[j] * xb[j] * xb[j]));
    exp_inplace(e, m);
    for (int64_t j = 0; j < m; ++j) {
      const float v = xb[j];
      const float two_du = 2.0f * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
      const float s = 1.0f / (1.0f + e[j]);
      dx[b + j] = dy[b + j] * (s + v * two_du * (e[j] * s) * s);
    }
  }
}

// SwiGLU through s = sigmoid(z) = 1 / (1 + e), e = e^{-z} (vectorised exp, blocks of kGeluBlock
// through a stack buffer as for gelu). The exponent is capped at kGeluMaxExponent so e stays
// finite: silu(z) = z s is then ~1e-35 z instead of ~0 for z < -80, and 1 - s = e s never becomes
// inf * 0 = NaN in the backward.
void swiglu_span(const float* gate, const float* up, float* out, int64_t n) {
  alignas(32) float e[kGeluBlock];
  for (int64_t b = 0; b < n; b += kGeluBlock) {
    const int64_t m = std::min(kGeluBlock, n - b);
    for (int64_t j = 0; j < m; ++j) e[j] = std::min(kGeluMaxExponent, -gate[b + j]);
    exp_inplace(e, m);
    for (int64_t j = 0; j < m; ++j) out[b + j] = gate[b + j] / (1.0f + e[j]) * up[b + j];
  }
}

// dgate = dout * up * s (1 + z e s), dup = dout * z s, with 1 - s = e s.
void swiglu_backward_span(const float* gate, const float* up, const float* dout, float* dgate, float* dup,
                          int64_t n) {
  alignas(32) float e[kGeluBlock];
  for (int64_t b = 0; b < n; b += kGeluBlock) {
    const int64_t m = std::min(kGeluBlock, n - b);
    for (int64_t j = 0; j < m; ++j) e[j] = std::min(kGeluMaxExponent, -gate[b + j]);
    exp_inplace(e, m);
    for (int64_t j = 0; j < m; ++j) {
      const float z = gate[b + j];
      const float s = 1.0f / (1.0f + e[j]);
      const float g = dout[b + j];
      dgate[b + j] = g * up[b + j] * (s * (1.0f + z * (e[j] * s)));
      dup[b + j] = g * (z * s);
    }
  }
}

}  // namespace

void add_bias(Tensor y, const Tensor& bias) {
  detail::check_add_bias(y, bias);
  const Matrix ym = as_matrix(y);
  const float* b = bias.data<float>();
  parallel_for(ym.rows, row_grain(ym.cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* yr = ym.row(r);
      for (int64_t j = 0; j < ym.cols; ++j) yr[j] += b[j];
    }
  });
}

void bias_backward(const Tensor& dy, Tensor dbias) {
  detail::check_bias_backward(dy, dbias);
  const Matrix g = as_matrix(dy);
  const int64_t cols = g.cols;
  if (g.rows == 0 || cols == 0) return;
  // Blocks of kReduceRows rows are summed in row order, then the block partials in block order.
  const int64_t blocks = (g.rows + kReduceRows - 1) / kReduceRows;
  std::vector<float> partial(static_cast<size_t>(blocks * cols), 0.0f);
  parallel_for(blocks, std::max<int64_t>(1, kGrainElements / (kReduceRows * cols)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t blk = begin; blk < end; ++blk) {
                   float* acc = partial.data() + blk * cols;
                   const int64_t r_end = std::min(g.rows, (blk + 1) * kReduceRows);
                   for (int64_t r = blk * kReduceRows; r < r_end; ++r) {
                     const float* gr = g.row(r);
                     for (int64_t j = 0; j < cols; ++j) acc[j] += gr[j];
                   }
                 }
               });
  float* db = dbias.data<float>();
  parallel_for(cols, kGrainElements / 4, [&](int64_t begin, int64_t end) {
    std::vector<double> total(static_cast<size_t>(end - begin), 0.0);
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const float* p = partial.data() + blk * cols + begin;
      for (int64_t j = 0; j < end - begin; ++j) total[j] += p[j];
    }
    for (int64_t j = begin; j < end; ++j) db[j] += static_cast<float>(total[j - begin]);
  });
}

void add_inplace(Tensor y, const Tensor& x) {
  detail::check_add_inplace(y, x);
  const Matrix ym = as_matrix(y);
  const Matrix xm = as_matrix(x);
  for_each_span(ym.rows, ym.cols, ym.contiguous && xm.contiguous, [&](int64_t r, int64_t c0, int64_t c1) {
    float* yr = ym.row(r);
    const float* xr = xm.row(r);
    for (int64_t j = c0; j < c1; ++j) yr[j] += xr[j];
  });
}

void scale_inplace(Tensor x, float s) {
  const Matrix xm = as_matrix(x);
  for_each_span(xm.rows, xm.cols, xm.contiguous, [&](int64_t r, int64_t c0, int64_t c1) {
    float* xr = xm.row(r);
    for (int64_t j = c0; j < c1; ++j) xr[j] *= s;
  });
}

void gelu_forward(const Tensor& x, Tensor y) {
  detail::check_gelu_forward(x, y);
  const Matrix xm = as_matrix(x);
  const Matrix ym = as_matrix(y);
  for_each_span(xm.rows, xm.cols, xm.contiguous && ym.contiguous, [&](int64_t r, int64_t c0, int64_t c1) {
    gelu_span(xm.row(r) + c0, ym.row(r) + c0, c1 - c0);
  });
}

void gelu_backward(const Tensor& x, const Tensor& dy, Tensor dx) {
  detail::check_gelu_backward(x, dy, dx);
  const Matrix xm = as_matrix(x);
  const Matrix gm = as_matrix(dy);
  const Matrix dm = as_matrix(dx);
  const bool contiguous = xm.contiguous && gm.contiguous && dm.contiguous;
  for_each_span(xm.rows, xm.cols, contiguous, [&](int64_t r, int64_t c0, int64_t c1) {
    gelu_backward_span(xm.row(r) + c0, gm.row(r) + c0, dm.row(r) + c0, c1 - c0);
  });
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor out) {
  detail::check_swiglu_forward(gate, up, out);
  const Matrix gm = as_matrix(gate);
  const Matrix um = as_matrix(up);
  const Matrix om = as_matrix(out);
  const bool contiguous = gm.contiguous && um.contiguous && om.contiguous;
  for_each_span(gm.rows, gm.cols, contiguous, [&](int64_t r, int64_t c0, int64_t c1) {
    swiglu_span(gm.row(r) + c0, um.row(r) + c0, om.row(r) + c0, c1 - c0);
  });
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor dgate, Tensor dup) {
  detail::check_swiglu_backward(gate, up, dout, dgate, dup);
  const Matrix gm = as_matrix(gate);
  const Matrix um = as_matrix(up);
  const Matrix om = as_matrix(dout);
  const Matrix dgm = as_matrix(dgate);
  const Matrix dum = as_matrix(dup);
  const bool contiguous = gm.contiguous && um.contiguous && om.contiguous && dgm.contiguous && dum.contiguous;
  for_each_span(gm.rows, gm.cols, contiguous, [&](int64_t r, int64_t c0, int64_t c1) {
    swiglu_backward_span(gm.row(r) + c0, um.row(r) + c0, om.row(r) + c0, dgm.row(r) + c0, dum.row(r) + c0,
                         c1 - c0);
  });
}

void softmax_rows(const Tensor& x, Tensor y) {
  detail::check_softmax_rows(x, y);
  const Matrix xm = as_matrix(x);
  const Matrix ym = as_matrix(y);
  parallel_for(xm.rows, row_grain(xm.cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xm.row(r);
      float* yr = ym.row(r);
      const float mx = row_max(xr, xm.cols);
      for (int64_t j = 0; j < xm.cols; ++j) yr[j] = xr[j] - mx;
      exp_inplace(yr, xm.cols);
      const float inv = static_cast<float>(1.0 / row_sum(yr, xm.cols));
      for (int64_t j = 0; j < xm.cols; ++j) yr[j] *= inv;
    }
  });
}

void softmax_rows_backward(const Tensor& y, const Tensor& dy, Tensor dx) {
  detail::check_softmax_rows_backward(y, dy, dx);
  const Matrix ym = as_matrix(y);
  const Matrix gm = as_matrix(dy);
  const Matrix dm = as_matrix(dx);
  parallel_for(ym.rows, row_grain(ym.cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* yr = ym.row(r);
      const float* gr = gm.row(r);
      float* dr = dm.row(r);
      const float dot = static_cast<float>(row_dot(gr, yr, ym.cols));
      for (int64_t j = 0; j < ym.cols; ++j) dr[j] = yr[j] * (gr[j] - dot);
    }
  });
}

double sum_of_squares(const Tensor& x) {
  const Matrix xm = as_matrix(x);
  if (xm.rows == 0 || xm.cols == 0) return 0.0;
  // Fixed spans (flat blocks of a contiguous tensor, else rows), each summed by one thread, then
  // the span partials in order.
  const int64_t span = xm.contiguous ? kGrainElements : xm.cols;
  const int64_t total = xm.rows * xm.cols;
  const int64_t spans = xm.contiguous ? (total + span - 1) / span : xm.rows;
  std::vector<double> partial(static_cast<size_t>(spans), 0.0);
  parallel_for(spans, xm.contiguous ? 1 : row_grain(xm.cols), [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const float* p = xm.contiguous ? xm.data + s * span : xm.row(s);
      const int64_t n = xm.contiguous ? std::min(span, total - s * span) : xm.cols;
      partial[s] = row_dot(p, p, n);
    }
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  return sum;
}

}  // namespace ampipe::kernels::cpu
