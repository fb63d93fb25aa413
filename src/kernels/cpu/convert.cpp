// CPU convert (kernels/elementwise.h): row by row through core/bf16.h's array converters (AVX512-BF16
// where the CPU has it, the same bits either way), rows split across the compute threads.
#include <algorithm>

#include "core/bf16.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::cpu {

void convert(const Tensor& src, Tensor dst) {
  // Plain locals, not a structured binding: clang before 16 cannot capture bindings in a lambda.
  const auto layout = detail::check_convert(src, dst);
  const int64_t rows = layout.rows, cols = layout.cols;
  const int64_t src_stride = layout.src_stride, dst_stride = layout.dst_stride;
  if (src.dtype() == dst.dtype()) {
    dst.copy_from(src);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1));
  if (dst.dtype() == DType::BF16) {
    const float* s = src.data<float>();
    bf16* d = dst.data<bf16>();
    parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) to_bf16(s + r * src_stride, d + r * dst_stride, cols);
    });
  } else {
    const bf16* s = src.data<bf16>();
    float* d = dst.data<float>();
    parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) to_float(s + r * src_stride, d + r * dst_stride, cols);
    });
  }
}

}  // namespace ampipe::kernels::cpu
