// CUDA LayerNorm and RMSNorm (kernels/layernorm.h), the same formulas as kernels/cpu/layernorm.cpp.
//
// Forward: one block per row (grid-stride over rows). The row statistics are accumulated in double:
// each thread sums a strided slice of the row, then a block reduction with a fixed shape (butterfly
// shuffles inside each warp, then the warp sums in warp order) combines them, so the result depends
// only on the data and the block size (fixed by the width).
//
// Backward: dweight / dbias are reduced deterministically in two steps, as on the CPU: a partials
// kernel gives each block of kReduceRows rows its own float partial per column (the rows summed in
// row order), written to device scratch; then a kernel sums the partials of each column in block
// order (in double) and adds the total to dweight / dbias. No float atomics anywhere. dx comes from
// a row kernel shaped like the forward one. The partials are computed before dx is written, so dx
// may share its storage with dy (as on the CPU).
//
// The float arithmetic spells out, with intrinsics nvcc does not fuse further, the roundings and
// fused multiply-adds of the CPU code as GCC compiles it (-O3 -march=x86-64-v3, checked in its
// assembly), so both backends give the same floats wherever their double statistics (summed in
// different orders) round to the same float: in practice everywhere, including the degenerate
// width 1 where dx is pure rounding noise scaled by 1/sqrt(eps).
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/layernorm.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kMaxRowThreads = 256;
constexpr int kColumnThreads = 256;
// Rows per partial of the parameter gradients (as kernels/cpu/layernorm.cpp, so the reduction order
// is the CPU's: float partials over 64-row blocks in row order, then the blocks in order in double).
constexpr int64_t kReduceRows = 64;
constexpr unsigned kMaxGridY = 65535;

// Threads for one row of `cols` elements: a multiple of 32, at most kMaxRowThreads.
int row_threads(int64_t cols) {
  return static_cast<int>(std::min<int64_t>(kMaxRowThreads, (std::max<int64_t>(cols, 1) + 31) / 32 * 32));
}

// One block per row, grid-striding when rows exceed the grid limit.
unsigned row_blocks(int64_t rows) { return blocks_for(rows, 1); }


__global__ void layernorm_forward_kernel(DeviceRows x, const float* weight, const float* bias, DeviceRows y,
                                         float* mean, float* rstd, float eps) {
  __shared__ double scratch[32];
  const int64_t cols = x.cols;
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const float* xr = x.data + r * x.stride;
    double s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
    const double mu = block_sum(s, scratch) / static_cast<double>(cols);
    double q = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const double c = xr[j] - mu;
      q += c * c;
    }
    const double var = block_sum(q, scratch) / static_cast<double>(cols);
    const float m = static_cast<float>(mu);
    const float rs = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    if (threadIdx.x == 0) {
      mean[r] = m;
      rstd[r] = rs;
    }
    float* yr = y.data + r * y.stride;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
      yr[j] = __fmaf_rn(__fmul_rn(__fsub_rn(xr[j], m), rs), weight[j], bias[j]);
  }
}

// partial[(2 * blk) * cols + j] = sum over the block's rows (in order) of dy * xhat, and
// partial[(2 * blk + 1) * cols + j] = sum of dy. Grid: x over columns, y over row blocks.
__global__ void layernorm_partials_kernel(DeviceRows dy, DeviceRows x, const float* mean, const float* rstd,
                                          float* partial, int64_t blocks) {
  const int64_t cols = x.cols;
  for (int64_t blk = blockIdx.y; blk < blocks; blk += gridDim.y) {
    const int64_t r_begin = blk * kReduceRows;
    const int64_t r_end = r_begin + kReduceRows < x.rows ? r_begin + kReduceRows : x.rows;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      float pw = 0.0f;
      float pb = 0.0f;
      for (int64_t r = r_begin; r < r_end; ++r) {
        const float g = dy.data[r * dy.stride + j];
        const float xh = __fmul_rn(__fsub_rn(x.data[r * x.stride + j], mean[r]), rstd[r]);
        pw = __fmaf_rn(xh, g, pw);
        pb = __fadd_rn(pb, g);
      }
      partial[(2 * blk) * cols + j] = pw;
      partial[(2 * blk + 1) * cols + j] = pb;
    }
  }
}

// The same for RMSNorm: partial[blk * cols + j] = sum over the block's rows of dy * (x * rstd).
__global__ void rmsnorm_partials_kernel(DeviceRows dy, DeviceRows x, const float* rstd, float* partial,
                                        int64_t blocks) {
  const int64_t cols = x.cols;
  for (int64_t blk = blockIdx.y; blk < blocks; blk += gridDim.y) {
    const int64_t r_begin = blk * kReduceRows;
    const int64_t r_end = r_begin + kReduceRows < x.rows ? r_begin + kReduceRows : x.rows;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      float pw = 0.0f;
      for (int64_t r = r_begin; r < r_end; ++r)
        pw = __fmaf_rn(__fmul_rn(x.data[r * x.stride + j], rstd[r]), dy.data[r * dy.stride + j], pw);
      partial[blk * cols + j] = pw;
    }
  }
}

// out[j] += sum over blk of partial[blk * block_stride + j], j < cols, summed in double in block
// order. One thread per column.
__global__ void accumulate_partials_kernel(const float* partial, int64_t blocks, int64_t block_stride, int64_t cols,
                                           float* out) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double total = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) total += partial[blk * block_stride + j];
    out[j] += static_cast<float>(total);
  }
}

// dxhat = dy * w; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)). The row's dy is
// read in full (the reductions end in barriers) before any of its dx is written, and each element
// of dx is written by the thread that read that element of dy, so dx may alias dy.
__global__ void layernorm_dx_kernel(DeviceRows dy, DeviceRows x, const float* weight, const float* mean,
                                    const float* rstd, DeviceRows dx) {
  __shared__ double scratch[32];
  const int64_t cols = x.cols;
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const float* gr = dy.data + r * dy.stride;
    const float* xr = x.data + r * x.stride;
    const float m = mean[r];
    const float rs = rstd[r];
    double sum_g = 0;
    double sum_gx = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = __fmul_rn(gr[j], weight[j]);
      const float xh = __fmul_rn(__fsub_rn(xr[j], m), rs);
      sum_g += g;
      sum_gx += static_cast<double>(g) * xh;
    }
    sum_g = block_sum(sum_g, scratch);
    sum_gx = block_sum(sum_gx, scratch);
    const float mean_g = static_cast<float>(sum_g / static_cast<double>(cols));
    const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(cols));
    float* dxr = dx.data + r * dx.stride;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xh = __fmul_rn(__fsub_rn(xr[j], m), rs);
      dxr[j] = __fmul_rn(rs, __fmaf_rn(-xh, mean_gx, __fmaf_rn(gr[j], weight[j], -mean_g)));
    }
  }
}

__global__ void rmsnorm_forward_kernel(DeviceRows x, const float* weight, DeviceRows y, float* rstd, float eps) {
  __shared__ double scratch[32];
  const int64_t cols = x.cols;
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const float* xr = x.data + r * x.stride;
    double s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(xr[j]) * xr[j];
    const double mean_square = block_sum(s, scratch) / static_cast<double>(cols);
    const float rs = static_cast<float>(1.0 / sqrt(mean_square + static_cast<double>(eps)));
    if (threadIdx.x == 0) rstd[r] = rs;
    float* yr = y.data + r * y.stride;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = __fmul_rn(__fmul_rn(xr[j], rs), weight[j]);
  }
}

// g = dy * w, xhat = x * rstd; dx = rstd * (g - xhat * mean(g * xhat)). May alias dy, as above.
__global__ void rmsnorm_dx_kernel(DeviceRows dy, DeviceRows x, const float* weight, const float* rstd,
                                  DeviceRows dx) {
  __shared__ double scratch[32];
  const int64_t cols = x.cols;
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const float* gr = dy.data + r * dy.stride;
    const float* xr = x.data + r * x.stride;
    const float rs = rstd[r];
    double sum_gx = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = __fmul_rn(gr[j], weight[j]);
      const float xh = __fmul_rn(xr[j], rs);
      sum_gx += static_cast<double>(g) * xh;
    }
    sum_gx = block_sum(sum_gx, scratch);
    const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(cols));
    float* dxr = dx.data + r * dx.stride;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
      dxr[j] = __fmul_rn(rs, __fmaf_rn(gr[j], weight[j], -__fmul_rn(__fmul_rn(xr[j], rs), mean_gx)));
  }
}

// Grid of the partials kernels: columns along x, row blocks along y (grid-striding past the limit).
dim3 partials_grid(int64_t cols, int64_t blocks) {
  return dim3(blocks_for(cols, kColumnThreads), static_cast<unsigned>(std::min<int64_t>(blocks, kMaxGridY)));
}

// out[j] += the column sums of the partials (block_stride apart), in block order.
void accumulate_partials(const float* partial, int64_t blocks, int64_t block_stride, int64_t cols, float* out) {
  launch("accumulate_partials_kernel", accumulate_partials_kernel, blocks_for(cols, kColumnThreads), kColumnThreads, 0,
      stream(), partial, blocks, block_stride, cols, out);
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y, Tensor mean,
                       Tensor rstd, float eps) {
  detail::check_layernorm_forward(x, weight, bias, y, mean, rstd, eps);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  if (rows == 0) return;
  launch("layernorm_forward_kernel", layernorm_forward_kernel, row_blocks(rows), row_threads(cols), 0, stream(),
      device_rows(x), weight.device_data<float>(), bias.device_data<float>(), device_rows(y), mean.device_data<float>(),
      rstd.device_data<float>(), eps);
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor dx, Tensor dweight, Tensor dbias) {
  detail::check_layernorm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  if (rows == 0) return;
  const DeviceRows dyr = device_rows(dy);
  const DeviceRows xr = device_rows(x);
  const float* mp = mean.device_data<float>();
  const float* rp = rstd.device_data<float>();

  // Partials first: they read dy, which dx may share.
  const int64_t blocks = (rows + kReduceRows - 1) / kReduceRows;
  Tensor partial = Tensor::empty({2 * blocks * cols}, DType::F32, Device::CUDA);
  float* pp = partial.device_data<float>();
  launch("layernorm_partials_kernel", layernorm_partials_kernel, partials_grid(cols, blocks), kColumnThreads, 0,
      stream(), dyr, xr, mp, rp, pp, blocks);

  launch("layernorm_dx_kernel", layernorm_dx_kernel, row_blocks(rows), row_threads(cols), 0, stream(), dyr, xr,
      weight.device_data<float>(), mp, rp, device_rows(dx));

  accumulate_partials(pp, blocks, 2 * cols, cols, dweight.device_data<float>());
  accumulate_partials(pp + cols, blocks, 2 * cols, cols, dbias.device_data<float>());
}

void rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor y, Tensor rstd, float eps) {
  detail::check_rmsnorm_forward(x, weight, y, rstd, eps);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  if (rows == 0) return;
  launch("rmsnorm_forward_kernel", rmsnorm_forward_kernel, row_blocks(rows), row_threads(cols), 0, stream(),
      device_rows(x), weight.device_data<float>(), device_rows(y), rstd.device_data<float>(), eps);
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor dx,
                      Tensor dweight) {
  detail::check_rmsnorm_backward(dy, x, weight, rstd, dx, dweight);
  const int64_t rows = x.dim(0);
  const int64_t cols = x.dim(1);
  if (rows == 0) return;
  const DeviceRows dyr = device_rows(dy);
  const DeviceRows xr = device_rows(x);
  const float* rp = rstd.device_data<float>();

  const int64_t blocks = (rows + kReduceRows - 1) / kReduceRows;
  Tensor partial = Tensor::empty({blocks * cols}, DType::F32, Device::CUDA);
  float* pp = partial.device_data<float>();
  launch("rmsnorm_partials_kernel", rmsnorm_partials_kernel, partials_grid(cols, blocks), kColumnThreads, 0, stream(),
      dyr, xr, rp, pp, blocks);

  launch("rmsnorm_dx_kernel", rmsnorm_dx_kernel, row_blocks(rows), row_threads(cols), 0, stream(), dyr, xr,
      weight.device_data<float>(), rp, device_rows(dx));

  accumulate_partials(pp, blocks, cols, cols, dweight.device_data<float>());
}

}  // namespace ampipe::kernels::gpu
