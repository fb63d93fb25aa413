// CPU LayerNorm and RMSNorm (kernels/layernorm.h).
//
// Row statistics are accumulated in double (LayerNorm: two passes, mean then centred squares;
// RMSNorm: one pass of squares). The backward passes compute dx row by row and reduce the parameter
// gradients over fixed blocks of rows whose partials are combined in block order, so the result
// does not depend on the thread count.
#include "kernels/layernorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels::cpu {
namespace {

constexpr int64_t kGrainElements = 16384;
constexpr int64_t kReduceRows = 64;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1)); }

// Row sums in double. `omp simd reduction` lets GCC vectorise them (it may not reassociate a plain
// loop); the lane layout is fixed at compile time and GCC does not peel for alignment on AVX2, so
// the result depends only on the data and the row length.
double row_sum(const float* x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j];
  return s;
}

double row_centered_squares(const float* x, int64_t n, double mean) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    const double c = x[j] - mean;
    s += c * c;
  }
  return s;
}

// One row of the backward pass: dx written, the block's dweight / dbias partials accumulated.
// dxhat = dy * w; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)). (A function of
// its own so the pointers are locals: GCC does not vectorise an omp simd reduction that reads
// through a lambda's by-reference captures.)
void backward_row(const float* dy, const float* x, const float* w, float mean, float rstd, int64_t cols,
                  float* dx, float* dweight_partial, float* dbias_partial) {
  double sum_g = 0;
  double sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
  for (int64_t j = 0; j < cols; ++j) {
    const float g = dy[j] * w[j];
    const float xh = (x[j] - mean) * rstd;
    sum_g += g;
    sum_gx += static_cast<double>(g) * xh;
  }
  const float mean_g = static_cast<float>(sum_g / static_cast<double>(cols));
  const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(cols));
  // Parameter partials first: they read dy, so dx may even share its storage.
  for (int64_t j = 0; j < cols; ++j) {
    const float xh = (x[j] - mean) * rstd;
    dweight_partial[j] += dy[j] * xh;
    dbias_partial[j] += dy[j];
  }
  for (int64_t j = 0; j < cols; ++j) {
    const float xh = (x[j] - mean) * rstd;
    dx[j] = rstd * (dy[j] * w[j] - mean_g - xh * mean_gx);
  }
}

double row_squares(const float* x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += static_cast<double>(x[j]) * x[j];
  return s;
}

// One row of the RMSNorm backward: dx written, the block's dweight partial accumulated.
// g = dy * w, xhat = x * rstd; dx = rstd * (g - xhat * mean(g * xhat)).
void rms_backward_row(const float* dy, const float* x, const float* w, float rstd, int64_t cols, float* dx,
                      float* dweight_partial) {
  double sum_gx = 0;
#pragma omp simd reduction(+ : sum_gx)
  for (int64_t j = 0; j < cols; ++j) {
    const float g = dy[j] * w[j];
    const float xh = x[j] * rstd;
    sum_gx += static_cast<double>(g) * xh;
  }
  const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(cols));
  // The parameter partial first: it reads dy, so dx may even share its storage.
  for (int64_t j = 0; j < cols; ++j) dweight_partial[j] += dy[j] * (x[j] * rstd);
  for (int64_t j = 0; j < cols; ++j) dx[j] = rstd * (dy[j] * w[j] - (x[j] * rstd) * mean_gx);
}

// out[j] += sum over blk of partial[blk * block_stride + j], j < cols, summed in double in block
// order (so the sum does not depend on how the blocks were spread over threads).
void accumulate_block_partials(const std::vector<float>& partial, int64_t blocks, int64_t block_stride,
                               int64_t offset, int64_t cols, float* out) {
  parallel_for(cols, kGrainElements / 4, [&](int64_t begin, int64_t end) {
    std::vector<double> total(static_cast<size_t>(end - begin), 0.0);
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const float* p = partial.data() + blk * block_stride + offset + begin;
      for (int64_t j = 0; j < end - begin; ++j) total[j] += p[j];
    }
    for (int64_t j = begin; j < end; ++j) out[j] += static_cast<float>(total[j - begin]);
  });
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y, Tensor mean,
                       Tensor rstd, float eps) {
  detail::check_layernorm_forward(x, weight, bias, y, mean, rstd, eps);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
  float* mp = mean.data<float>();
  float* rp = rstd.data<float>();
  const int64_t xs = x.stride(0);
  const int64_t ys = y.stride(0);
  parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * xs;
      float* yr = yp + r * ys;
      const double mu = row_sum(xr, cols) / static_cast<double>(cols);
      const double var = row_centered_squares(xr, cols, mu) / static_cast<double>(cols);
      const float m = static_cast<float>(mu);
      const float rs = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
      mp[r] = m;
      rp[r] = rs;
      for (int64_t j = 0; j < cols; ++j) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
    }
  });
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor dx, Tensor dweight, Tensor dbias) {
  detail::check_layernorm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  if (rows == 0) return;
  const float* gp = dy.data<float>();
  const float* xp = x.data<float>();
  const float* w = weight.data<float>();
  const float* mp = mean.data<float>();
  const float* rp = rstd.data<float>();
  float* dxp = dx.data<float>();
  const int64_t gs = dy.stride(0);
  const int64_t xs = x.stride(0);
  const int64_t dxs = dx.stride(0);

  // Per block of rows: partial dweight at [2*blk], partial dbias at [2*blk + 1].
  const int64_t blocks = (rows + kReduceRows - 1) / kReduceRows;
  std::vector<float> partial(static_cast<size_t>(2 * blocks * cols), 0.0f);
  parallel_for(blocks, std::max<int64_t>(1, kGrainElements / (kReduceRows * cols)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t blk = begin; blk < end; ++blk) {
                   float* pw = partial.data() + 2 * blk * cols;
                   float* pb = pw + cols;
                   const int64_t r_end = std::min(rows, (blk + 1) * kReduceRows);
                   for (int64_t r = blk * kReduceRows; r < r_end; ++r) {
                     backward_row(gp + r * gs, xp + r * xs, w, mp[r], rp[r], cols, dxp + r * dxs, pw, pb);
                   }
                 }
               });

  accumulate_block_partials(partial, blocks, 2 * cols, 0, cols, dweight.data<float>());
  accumulate_block_partials(partial, blocks, 2 * cols, cols, cols, dbias.data<float>());
}

void rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor y, Tensor rstd, float eps) {
  detail::check_rmsnorm_forward(x, weight, y, rstd, eps);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const float* w = weight.data<float>();
  float* rp = rstd.data<float>();
  const int64_t xs = x.stride(0);
  const int64_t ys = y.stride(0);
  parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * xs;
      float* yr = yp + r * ys;
      const double mean_square = row_squares(xr, cols) / static_cast<double>(cols);
      const float rs = static_cast<float>(1.0 / std::sqrt(mean_square + static_cast<double>(eps)));
      rp[r] = rs;
      for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] * rs * w[j];
    }
  });
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor dx,
                      Tensor dweight) {
  detail::check_rmsnorm_backward(dy, x, weight, rstd, dx, dweight);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  if (rows == 0) return;
  const float* gp = dy.data<float>();
  const float* xp = x.data<float>();
  const float* w = weight.data<float>();
  const float* rp = rstd.data<float>();
  float* dxp = dx.data<float>();
  const int64_t gs = dy.stride(0);
  const int64_t xs = x.stride(0);
  const int64_t dxs = dx.stride(0);

  // Per block of kReduceRows rows: a partial dweight, summed in row order.
  const int64_t blocks = (rows + kReduceRows - 1) / kReduceRows;
  std::vector<float> partial(static_cast<size_t>(blocks * cols), 0.0f);
  parallel_for(blocks, std::max<int64_t>(1, kGrainElements / (kReduceRows * cols)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t blk = begin; blk < end; ++blk) {
                   float* pw = partial.data() + blk * cols;
                   const int64_t r_end = std::min(rows, (blk + 1) * kReduceRows);
                   for (int64_t r = blk * kReduceRows; r < r_end; ++r)
                     rms_backward_row(gp + r * gs, xp + r * xs, w, rp[r], cols, dxp + r * dxs, pw);
                 }
               });
  accumulate_block_partials(partial, blocks, cols, 0, cols, dweight.data<float>());
}

}  // namespace ampipe::kernels::cpu
