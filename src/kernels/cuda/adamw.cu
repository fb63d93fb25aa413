// CUDA AdamW (kernels/adamw.h): one fused element-wise kernel over param, grad, m and v; the same
// checks (kernels/elementwise_checks.h) and formula as the CPU (kernels/cpu/adamw.cpp), with the bias
// corrections computed on the host in double and passed in.
//
// Grid-stride loop, 256 threads a block (at most 65536 blocks); 64-bit offsets; row strides honoured
// (the flat index is the offset when every operand is packed). The arithmetic is written with the
// round-to-nearest intrinsics so that nvcc does not contract it into FMAs: each step is the
// documented operation, rounded once, in the CPU kernel's order.
#include "kernels/adamw.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65536;

struct AdamWScalars {
  float b1, b2, one_minus_b1, one_minus_b2, correction1, correction2, lr, eps, wd;
};

bool packed(const DeviceRows& t) { return t.rows <= 1 || t.stride == t.cols; }

__global__ void adamw_kernel(DeviceRows p, DeviceRows g, DeviceRows m, DeviceRows v, bool flat,
                             AdamWScalars s) {
  const int64_t n = p.rows * p.cols;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t r = 0, j = i;
    if (!flat) {
      r = i / p.cols;
      j = i - r * p.cols;
    }
    float* pp = p.data + r * p.stride + j;
    float* mp = m.data + r * m.stride + j;
    float* vp = v.data + r * v.stride + j;
    const float gj = g.data[r * g.stride + j];
    // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
    const float mj = __fadd_rn(__fmul_rn(s.b1, *mp), __fmul_rn(s.one_minus_b1, gj));
    const float vj = __fadd_rn(__fmul_rn(s.b2, *vp), __fmul_rn(__fmul_rn(s.one_minus_b2, gj), gj));
    *mp = mj;
    *vp = vj;
    // param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param)
    const float mhat = __fdiv_rn(mj, s.correction1);
    const float vhat = __fdiv_rn(vj, s.correction2);
    const float pj = *pp;
    const float update = __fadd_rn(__fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), s.eps)), __fmul_rn(s.wd, pj));
    *pp = __fsub_rn(pj, __fmul_rn(s.lr, update));
  }
}

}  // namespace

void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& hp) {
  detail::check_adamw_update(param, grad, m, v, hp);
  const detail::AdamWCorrections c = detail::adamw_corrections(hp);
  AdamWScalars s{};
  s.b1 = hp.beta1;
  s.b2 = hp.beta2;
  s.one_minus_b1 = 1.0f - hp.beta1;
  s.one_minus_b2 = 1.0f - hp.beta2;
  s.correction1 = c.correction1;
  s.correction2 = c.correction2;
  s.lr = hp.lr;
  s.eps = hp.eps;
  s.wd = hp.weight_decay;
  const DeviceRows pm = device_rows(param);
  const DeviceRows gm = device_rows(grad);
  const DeviceRows mm = device_rows(m);
  const DeviceRows vm = device_rows(v);
  const int64_t n = pm.rows * pm.cols;
  if (n == 0) return;
  const bool flat = packed(pm) && packed(gm) && packed(mm) && packed(vm);
  const unsigned blocks = std::min<unsigned>(blocks_for(n, kThreads), kMaxBlocks);
  launch("adamw_kernel", adamw_kernel, blocks, kThreads, 0, stream(), pm, gm, mm, vm, flat, s);
}

}  // namespace ampipe::kernels::gpu
