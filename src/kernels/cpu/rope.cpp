// CPU rotary position embedding (kernels/rope.h).
//
// A call builds cos / sin tables [n, hd/2] for its n positions (in parallel over positions), then
// rotates the rows in parallel. Every element is written by exactly one thread with the same
// arithmetic, so results do not depend on the thread count.
#include "kernels/rope.h"

#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels::cpu {
namespace {

using cpu::as_matrix;
using cpu::Matrix;
using cpu::row_grain;

struct RopeTables {
  int64_t half;
  std::vector<float> cos, sin;  // [n, half]
};

// HF's arithmetic: the inverse frequencies of detail::rope_inv_freq (shared with the CUDA backend),
// the angle float32(pos) * inv_freq rounded to float32. cos / sin of the float angle are evaluated
// in double and rounded.
RopeTables rope_tables(int64_t n, int64_t head_dim, int64_t pos_begin, double theta) {
  const int64_t half = head_dim / 2;
  const std::vector<float> inv_freq = detail::rope_inv_freq(head_dim, theta);
  RopeTables t{half, std::vector<float>(static_cast<size_t>(n * half)),
               std::vector<float>(static_cast<size_t>(n * half))};
  parallel_for(n, row_grain(8 * half), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float pos = static_cast<float>(pos_begin + p);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos * inv_freq[i]);
        t.cos[p * half + i] = static_cast<float>(std::cos(angle));
        t.sin[p * half + i] = static_cast<float>(std::sin(angle));
      }
    }
  });
  return t;
}

// u1' = u1 c - u2 s, u2' = u2 c + u1 s with s = sign * sin (sign -1: the inverse rotation).
void rotate_row(float* row, int64_t heads, int64_t head_dim, const float* c, const float* s, float sign) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* u1 = row + h * head_dim;
    float* u2 = u1 + half;
    for (int64_t i = 0; i < half; ++i) {
      const float a = u1[i], b = u2[i], sn = sign * s[i];
      u1[i] = a * c[i] - b * sn;
      u2[i] = b * c[i] + a * sn;
    }
  }
}

void rope_apply(const char* op, const Tensor& x, int64_t batch, int64_t num_heads, int64_t pos_begin,
                double theta, float sign) {
  const int64_t head_dim = detail::check_rope(op, x, batch, num_heads, pos_begin, theta);
  const int64_t rows = x.dim(0), width = x.dim(1);
  if (rows == 0) return;
  const int64_t n = rows / batch;
  const RopeTables t = rope_tables(n, head_dim, pos_begin, theta);
  const Matrix m = as_matrix(x);
  parallel_for(rows, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r % n;
      rotate_row(m.row(r), num_heads, head_dim, t.cos.data() + p * t.half, t.sin.data() + p * t.half, sign);
    }
  });
}

}  // namespace

void rope_forward(Tensor x, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) {
  rope_apply("rope_forward", x, batch, num_heads, pos_begin, theta, 1.0f);
}

void rope_backward(Tensor dx, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) {
  rope_apply("rope_backward", dx, batch, num_heads, pos_begin, theta, -1.0f);
}

}  // namespace ampipe::kernels::cpu
