// Helpers shared by the CPU kernels (internal to kernels/cpu): a float tensor seen as rows, the
// parallel grain, and vectorised row maximum / in-place exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/tensor.h"
#include "kernels/cpu/fast_math.h"

namespace ampipe::kernels::cpu {

// A parallel part gets at least this many elements: starting a part costs about a microsecond.
constexpr int64_t kGrainElements = 16384;

inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1));
}

// A float tensor seen as rows of its last dimension (only 2-D tensors can have a row stride).
struct Matrix {
  float* data;
  int64_t rows;
  int64_t cols;
  int64_t stride;
  bool contiguous;
  float* row(int64_t r) const { return data + r * stride; }
};

inline Matrix as_matrix(const Tensor& t) {
  if (t.ndim() == 2) return {t.data<float>(), t.dim(0), t.dim(1), t.stride(0), t.is_contiguous()};
  const int64_t cols = t.ndim() == 0 ? 1 : t.dim(t.ndim() - 1);
  const int64_t rows = cols == 0 ? 0 : t.numel() / cols;
  return {t.data<float>(), rows, cols, cols, true};
}

// GCC does not vectorise std::max on floats or the clamps in fast_exp under the default
// -ftrapping-math, hence the AVX2 intrinsics (with a portable scalar fallback).
inline float row_max(const float* x, int64_t n) {
  int64_t j = 0;
  float m = -INFINITY;
#if AMPIPE_HAVE_AVX2_FMA
  __m256 lanes = _mm256_set1_ps(-INFINITY);
  for (; j + 8 <= n; j += 8) lanes = _mm256_max_ps(lanes, _mm256_loadu_ps(x + j));
  alignas(32) float lane[8];
  _mm256_store_ps(lane, lanes);
  for (int l = 0; l < 8; ++l) m = std::max(m, lane[l]);
#endif
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// v[j] = e^{v[j]} for j < n (fast_math::fast_exp, ~1-2 ulp). The tail runs through the same
// 8-lane code on a padded copy, so an element's result does not depend on its position.
inline void exp_inplace(float* v, int64_t n) {
#if AMPIPE_HAVE_AVX2_FMA
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(v + j, fast_math::fast_exp_avx2(_mm256_loadu_ps(v + j)));
  if (j < n) {
    alignas(32) float tail[8] = {};
    std::copy(v + j, v + n, tail);
    _mm256_store_ps(tail, fast_math::fast_exp_avx2(_mm256_load_ps(tail)));
    std::copy(tail, tail + (n - j), v + j);
  }
#else
  for (int64_t j = 0; j < n; ++j) v[j] = fast_math::fast_exp(v[j]);
#endif
}

}  // namespace ampipe::kernels::cpu
