// CUDA softmax cross-entropy (kernels/cross_entropy.h), the same formulas as
// kernels/cpu/cross_entropy.cpp.
//
// One block per token row (grid-stride over rows), the threads striding over the vocabulary: the row
// maximum (exact in any order), then sum_j exp(x[j] - max) in double through a block reduction of
// fixed shape (butterfly within warps, warp sums in warp order), so results are the same run to
// run. The backward pass then writes each dlogit from its own logit in the same thread, after the
// whole row has been read (the reductions end in barriers), so dlogits may alias logits.
//
// Targets are checked on the device (the first bad one is read back and reported with the CPU's
// message): one stream synchronisation per call.
#include <algorithm>
#include <cstdint>

#include "kernels/cross_entropy.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/row_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kMaxThreads = 512;

int row_threads(int64_t cols) {
  return static_cast<int>(std::min<int64_t>(kMaxThreads, (std::max<int64_t>(cols, 1) + 31) / 32 * 32));
}


struct RowExpSum {
  float max;
  double sum;
};

// The row maximum and sum_j exp(x[j] - max) in double, in every thread of the block.
__device__ RowExpSum row_exp_sum(const float* row, int64_t cols, float* fscratch, double* dscratch) {
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx, fscratch);
  double s = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(expf(row[j] - mx));
  return {mx, block_sum(s, dscratch)};
}

__global__ void cross_entropy_forward_kernel(DeviceRows logits, const int32_t* targets, float* losses) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (int64_t t = blockIdx.x; t < logits.rows; t += gridDim.x) {
    const float* row = logits.data + t * logits.stride;
    const RowExpSum es = row_exp_sum(row, logits.cols, fscratch, dscratch);
    // (max - target logit) first: both are large for large logits, their difference is not.
    if (threadIdx.x == 0)
      losses[t] = static_cast<float>((static_cast<double>(es.max) - row[targets[t]]) + log(es.sum));
  }
}

// dlogits[t, j] = coeff * exp(x[j] - max) with coeff = scale / sum (float), minus scale at the
// target: the product rounded first (__fmul_rn, never fused), then the subtraction, as on the CPU.
__global__ void cross_entropy_backward_kernel(DeviceRows logits, const int32_t* targets, float scale,
                                              DeviceRows dlogits) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (int64_t t = blockIdx.x; t < logits.rows; t += gridDim.x) {
    const float* row = logits.data + t * logits.stride;
    float* drow = dlogits.data + t * dlogits.stride;
    const RowExpSum es = row_exp_sum(row, logits.cols, fscratch, dscratch);
    const float coeff = static_cast<float>(static_cast<double>(scale) / es.sum);
    const int64_t target = targets[t];
    for (int64_t j = threadIdx.x; j < logits.cols; j += blockDim.x) {
      float d = __fmul_rn(coeff, expf(row[j] - es.max));
      if (j == target) d -= scale;
      drow[j] = d;
    }
  }
}

void check_target_ids(const Tensor& logits, const Tensor& targets, const char* op) {
  const int64_t vocab = logits.dim(1);
  const detail::IdOutOfRange bad = detail::first_id_out_of_range_on_gpu(targets, vocab);
  if (bad.index >= 0) detail::check_target_id(bad.id, bad.index, vocab, op);
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor losses) {
  detail::check_cross_entropy_forward(logits, targets, losses);
  check_target_ids(logits, targets, "cross_entropy_forward");
  const int64_t rows = logits.dim(0);
  if (rows == 0) return;
  launch("cross_entropy_forward_kernel", cross_entropy_forward_kernel, blocks_for(rows, 1), row_threads(logits.dim(1)),
      0, stream(), device_rows(logits), targets.device_data<int32_t>(), losses.device_data<float>());
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale, Tensor dlogits) {
  detail::check_cross_entropy_backward(logits, targets, dlogits);
  check_target_ids(logits, targets, "cross_entropy_backward");
  const int64_t rows = logits.dim(0);
  if (rows == 0) return;
  launch("cross_entropy_backward_kernel", cross_entropy_backward_kernel, blocks_for(rows, 1),
      row_threads(logits.dim(1)), 0, stream(), device_rows(logits), targets.device_data<int32_t>(), scale,
      device_rows(dlogits));
}

}  // namespace ampipe::kernels::gpu
