// CPU AdamW (kernels/adamw.h): one fused element-wise pass over param, grad, m and v.
#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "core/parallel.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::cpu {

void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& hp) {
  detail::check_adamw_update(param, grad, m, v, hp);

  const float b1 = hp.beta1;
  const float b2 = hp.beta2;
  const float one_minus_b1 = 1.0f - b1;
  const float one_minus_b2 = 1.0f - b2;
  // Bias corrections computed in double, rounded to float once (detail::adamw_corrections).
  const detail::AdamWCorrections corrections = detail::adamw_corrections(hp);
  const float correction1 = corrections.correction1;
  const float correction2 = corrections.correction2;
  const float lr = hp.lr;
  const float eps = hp.eps;
  const float wd = hp.weight_decay;

  const Matrix pm = as_matrix(param);
  const Matrix gm = as_matrix(grad);
  const Matrix mm = as_matrix(m);
  const Matrix vm = as_matrix(v);
  // GCC does not vectorise std::sqrt under the default -fmath-errno, hence the AVX2 body; both
  // paths evaluate the documented formula operation by operation.
  auto update = [&](float* p, const float* g, float* mp, float* vp, int64_t n) {
    int64_t j = 0;
#ifdef __AVX2__
    const __m256 b1v = _mm256_set1_ps(b1), b2v = _mm256_set1_ps(b2);
    const __m256 one_minus_b1v = _mm256_set1_ps(one_minus_b1), one_minus_b2v = _mm256_set1_ps(one_minus_b2);
    const __m256 c1v = _mm256_set1_ps(correction1), c2v = _mm256_set1_ps(correction2);
    const __m256 lrv = _mm256_set1_ps(lr), epsv = _mm256_set1_ps(eps), wdv = _mm256_set1_ps(wd);
    for (; j + 8 <= n; j += 8) {
      const __m256 gj = _mm256_loadu_ps(g + j);
      const __m256 mj =
          _mm256_add_ps(_mm256_mul_ps(b1v, _mm256_loadu_ps(mp + j)), _mm256_mul_ps(one_minus_b1v, gj));
      const __m256 vj = _mm256_add_ps(_mm256_mul_ps(b2v, _mm256_loadu_ps(vp + j)),
                                      _mm256_mul_ps(_mm256_mul_ps(one_minus_b2v, gj), gj));
      _mm256_storeu_ps(mp + j, mj);
      _mm256_storeu_ps(vp + j, vj);
      const __m256 mhat = _mm256_div_ps(mj, c1v);
      const __m256 vhat = _mm256_div_ps(vj, c2v);
      const __m256 pj = _mm256_loadu_ps(p + j);
      const __m256 step = _mm256_add_ps(_mm256_div_ps(mhat, _mm256_add_ps(_mm256_sqrt_ps(vhat), epsv)),
                                        _mm256_mul_ps(wdv, pj));
      _mm256_storeu_ps(p + j, _mm256_sub_ps(pj, _mm256_mul_ps(lrv, step)));
    }
#endif
    for (; j < n; ++j) {
      const float gj = g[j];
      const float mj = b1 * mp[j] + one_minus_b1 * gj;
      const float vj = b2 * vp[j] + one_minus_b2 * gj * gj;
      mp[j] = mj;
      vp[j] = vj;
      const float mhat = mj / correction1;
      const float vhat = vj / correction2;
      p[j] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[j]);
    }
  };
  if (pm.contiguous && gm.contiguous && mm.contiguous && vm.contiguous) {
    parallel_for(pm.rows * pm.cols, kGrainElements, [&](int64_t begin, int64_t end) {
      update(pm.data + begin, gm.data + begin, mm.data + begin, vm.data + begin, end - begin);
    });
  } else {
    parallel_for(pm.rows, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(pm.cols, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t r = begin; r < end; ++r)
                     update(pm.row(r), gm.row(r), mm.row(r), vm.row(r), pm.cols);
                 });
  }
}

}  // namespace ampipe::kernels::cpu
