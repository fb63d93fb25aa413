// CUDA rotary position embedding (kernels/rope.h), in place, aiming at bit-exactness with
// kernels/cpu/rope.cpp.
//
// The inverse frequencies are computed on the host by the function the CPU backend uses
// (detail::rope_inv_freq) and copied to the device (hd/2 floats). A thread per (row, pair i)
// computes the angle float32(pos) * inv_freq[i] in float32, its cos and sin in double (rounded to
// float, as the CPU), and rotates pair i of every head of the row. Each element is written by one
// thread, so results do not depend on the launch shape.
//
// The rotation reproduces the CPU's arithmetic as GCC compiles it for x86-64-v3 (checked in its
// assembly): u1' = fma(u1, c, -(u2 * s)) and u2' = fma(u2, c, u1 * s), the products u2 * s and
// u1 * s rounded first. The intrinsics below keep nvcc from fusing it any other way.
//
// The one place the two backends may differ: CUDA's double cos / sin are within 2 ulp (of double)
// and glibc's within 1, so after rounding to float they agree except when the exact value lies
// within a few double ulps of a halfway point between two floats (about one entry in 10^8), where
// one cos / sin may differ by one float ulp.
#include <cstdint>
#include <vector>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/rope.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kThreads = 256;

// x rows r = b * n + p hold position pos_begin + p; sign -1 rotates by the opposite angle.
__global__ void rope_kernel(DeviceRows x, int64_t n, int64_t heads, int64_t head_dim, int64_t pos_begin,
                            const float* inv_freq, float sign) {
  const int64_t half = head_dim / 2;
  const int64_t total = x.rows * half;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / half;
    const int64_t i = idx - r * half;
    const float pos = static_cast<float>(pos_begin + r % n);
    const float angle = __fmul_rn(pos, inv_freq[i]);
    double sd = 0;
    double cd = 0;
    sincos(static_cast<double>(angle), &sd, &cd);
    const float c = static_cast<float>(cd);
    const float sn = sign * static_cast<float>(sd);
    float* u1 = x.data + r * x.stride + i;
    for (int64_t h = 0; h < heads; ++h, u1 += head_dim) {
      const float a = u1[0];
      const float b = u1[half];
      u1[0] = __fmaf_rn(a, c, -__fmul_rn(b, sn));
      u1[half] = __fmaf_rn(b, c, __fmul_rn(a, sn));
    }
  }
}

void rope_apply(const char* op, const Tensor& x, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta,
                float sign) {
  const int64_t head_dim = detail::check_rope(op, x, batch, num_heads, pos_begin, theta);
  const int64_t rows = x.dim(0);
  if (rows == 0) return;
  const int64_t half = head_dim / 2;
  const std::vector<float> inv_freq = detail::rope_inv_freq(head_dim, theta);
  Tensor inv_freq_dev = Tensor::empty({half}, DType::F32, Device::CUDA);
  cudaStream_t s = stream();
  // From pageable memory: the call returns once the driver has staged the source, so the vector may
  // go (the driver may wait for the stream first; hd/2 floats, once per call).
  AMPIPE_CUDA_CHECK(cudaMemcpyAsync(inv_freq_dev.device_data<float>(), inv_freq.data(), sizeof(float) * half,
                                    cudaMemcpyHostToDevice, s));
  launch("rope_kernel", rope_kernel, blocks_for(rows * half, kThreads), kThreads, 0, s, device_rows(x), rows / batch,
      num_heads, head_dim, pos_begin, inv_freq_dev.device_data<float>(), sign);
}

}  // namespace

void rope_forward(Tensor x, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) {
  rope_apply("rope_forward", x, batch, num_heads, pos_begin, theta, 1.0f);
}

void rope_backward(Tensor dx, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) {
  rope_apply("rope_backward", dx, batch, num_heads, pos_begin, theta, -1.0f);
}

}  // namespace ampipe::kernels::gpu
