// CPU softmax cross-entropy (kernels/cross_entropy.h).
//
// Per row: the maximum is subtracted before exponentiating (no overflow for any finite logits) and
// the sum of exponentials is accumulated in double. Rows are split across threads; each row is
// computed by one thread in a fixed order.
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels::cpu {
namespace {

using cpu::exp_inplace;
using cpu::row_grain;
using cpu::row_max;

// The row maximum and sum_j exp(x[j] - max) (in double): logsumexp = max + log(sum). The
// exponentials go through a stack block; `omp simd reduction` lets GCC vectorise the double sum.
struct RowExpSum {
  float max;
  double sum;
};

constexpr int64_t kExpBlock = 256;

RowExpSum row_exp_sum(const float* x, int64_t n) {
  const float mx = row_max(x, n);
  alignas(32) float e[kExpBlock];
  double s = 0;
  for (int64_t b = 0; b < n; b += kExpBlock) {
    const int64_t m = std::min(kExpBlock, n - b);
    for (int64_t j = 0; j < m; ++j) e[j] = x[b + j] - mx;
    exp_inplace(e, m);
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; ++j) s += e[j];
  }
  return {mx, s};
}

// Checks that every target is a valid class (the shapes are checked by the caller); returns the
// target pointer.
const int32_t* check_target_ids(const Tensor& logits, const Tensor& targets, const char* op) {
  const int32_t* tp = targets.data<int32_t>();
  const int64_t vocab = logits.dim(1);
  for (int64_t t = 0; t < targets.dim(0); ++t) detail::check_target_id(tp[t], t, vocab, op);
  return tp;
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor losses) {
  detail::check_cross_entropy_forward(logits, targets, losses);
  const int32_t* tp = check_target_ids(logits, targets, "cross_entropy_forward");
  const int64_t rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  const float* lp = logits.data<float>();
  const int64_t ls = logits.stride(0);
  float* out = losses.data<float>();
  parallel_for(rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = lp + t * ls;
      const RowExpSum es = row_exp_sum(row, vocab);
      // (max - target logit) first: both are large for large logits, their difference is not.
      out[t] = static_cast<float>((static_cast<double>(es.max) - row[tp[t]]) + std::log(es.sum));
    }
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale, Tensor dlogits) {
  detail::check_cross_entropy_backward(logits, targets, dlogits);
  const int32_t* tp = check_target_ids(logits, targets, "cross_entropy_backward");
  const int64_t rows = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  const float* lp = logits.data<float>();
  const int64_t ls = logits.stride(0);
  float* dp = dlogits.data<float>();
  const int64_t ds = dlogits.stride(0);
  parallel_for(rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = lp + t * ls;
      float* drow = dp + t * ds;
      const RowExpSum es = row_exp_sum(row, vocab);
      const float mx = es.max;
      const float coeff = static_cast<float>(static_cast<double>(scale) / es.sum);
      // Blocks of logits are read before the same block of dlogits is written, so dlogits may
      // alias logits.
      alignas(32) float e[kExpBlock];
      for (int64_t b = 0; b < vocab; b += kExpBlock) {
        const int64_t m = std::min(kExpBlock, vocab - b);
        for (int64_t j = 0; j < m; ++j) e[j] = row[b + j] - mx;
        exp_inplace(e, m);
        for (int64_t j = 0; j < m; ++j) drow[b + j] = coeff * e[j];
      }
      drow[tp[t]] -= scale;
    }
  });
}

}  // namespace ampipe::kernels::cpu
