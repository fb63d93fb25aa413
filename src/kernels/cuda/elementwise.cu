// CUDA element-wise and row-wise kernels (kernels/elementwise.h), same formulas as the CPU
// (kernels/cpu/elementwise.cpp) and the same shape checks (kernels/elementwise_checks.h).
//
// Element-wise kernels: a grid-stride loop over the rows * cols elements (256 threads a block, at
// most 65536 blocks); when every operand is packed (row stride == width) the flat index is the
// offset, else it is split into (row, column) and each operand's row stride applies. Offsets are
// 64-bit. Each element is written by one thread.
// Reductions are deterministic: no atomics; every sum runs in an order fixed by the shape alone
// (per-thread sequential sums, then a fixed shuffle/shared-memory tree, then block partials summed
// in block order by a second kernel), so the same inputs give bit-identical results run to run.
#include <cmath>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/elementwise.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65536;  // grid-stride loops cover the rest
constexpr int kWarp = 32;

// Rows per block of bias_backward's first pass, as on the CPU (same partials, same order).
constexpr int64_t kReduceRows = 64;
// sum_of_squares: at most this many block partials; a block covers >= kSumPerBlock elements.
constexpr int kSumMaxBlocks = 1024;
constexpr int64_t kSumPerBlock = int64_t{kThreads} * 16;
// softmax: rows up to this width get one warp each (8 rows a block), wider ones one block each.
constexpr int64_t kWarpRowMaxCols = 1024;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;
// The exponent cap of the CPU kernels: e^80 is finite and 1 / (1 + e^80) still a normal float.
constexpr float kGeluMaxExponent = 80.0f;

unsigned grid_for(int64_t n) { return std::min<unsigned>(blocks_for(n, kThreads), kMaxBlocks); }

// True when the flat index of a rows x cols job is each operand's offset.
bool packed(const DeviceRows& t) { return t.rows <= 1 || t.stride == t.cols; }

__device__ __forceinline__ float* at(const DeviceRows& t, int64_t r, int64_t j) {
  return t.data + r * t.stride + j;
}

// Calls op(r, j) for every element of a rows x cols job. With `flat`, r is 0 and j the flat index
// (all operands packed); otherwise (r, j) is the element's row and column.
template <class Op>
__global__ void for_each_kernel(int64_t rows, int64_t cols, bool flat, Op op) {
  const int64_t n = rows * cols;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) {
    if (flat) {
      op(0, i);
    } else {
      const int64_t r = i / cols;
      op(r, i - r * cols);
    }
  }
}

// Enqueues op over the job; `name` (the operation) names the launch in errors.
template <class Op>
void enqueue_for_each(const char* name, int64_t rows, int64_t cols, bool flat, const Op& op) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  launch(name, for_each_kernel<Op>, grid_for(n), kThreads, 0, stream(), rows, cols, flat, op);
}

// --- element-wise operations (functors: nvcc needs no extended lambdas) ---

struct AddBiasOp {
  DeviceRows y;
  const float* bias;
  __device__ void operator()(int64_t r, int64_t j) const { *at(y, r, j) += bias[j]; }
};

struct AddOp {
  DeviceRows y, x;
  __device__ void operator()(int64_t r, int64_t j) const { *at(y, r, j) += *at(x, r, j); }
};

struct ScaleOp {
  DeviceRows x;
  float s;
  __device__ void operator()(int64_t r, int64_t j) const { *at(x, r, j) *= s; }
};

// e^{-2u}, u = sqrt(2/pi) (x + 0.044715 x^3), capped as on the CPU: gelu_tanh(x) = x / (1 + e).
__device__ __forceinline__ float gelu_exp(float x) {
  return expf(fminf(kGeluMaxExponent, -2.0f * kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
}

struct GeluOp {
  DeviceRows x, y;
  __device__ void operator()(int64_t r, int64_t j) const {
    const float v = *at(x, r, j);
    *at(y, r, j) = v / (1.0f + gelu_exp(v));
  }
};

// dx = dy * (s + x s (1 - s) 2 du/dx), s = 1 / (1 + e), 1 - s = e s.
struct GeluBackwardOp {
  DeviceRows x, dy, dx;
  __device__ void operator()(int64_t r, int64_t j) const {
    const float v = *at(x, r, j);
    const float e = gelu_exp(v);
    const float two_du = 2.0f * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    const float s = 1.0f / (1.0f + e);
    *at(dx, r, j) = *at(dy, r, j) * (s + v * two_du * (e * s) * s);
  }
};

// SwiGLU through s = sigmoid(z) = 1 / (1 + e), e = e^{-z} capped as on the CPU.
__device__ __forceinline__ float silu_exp(float z) { return expf(fminf(kGeluMaxExponent, -z)); }

struct SwigluOp {
  DeviceRows gate, up, out;
  __device__ void operator()(int64_t r, int64_t j) const {
    const float z = *at(gate, r, j);
    *at(out, r, j) = z / (1.0f + silu_exp(z)) * *at(up, r, j);
  }
};

// dgate = dout * up * s (1 + z e s), dup = dout * z s.
struct SwigluBackwardOp {
  DeviceRows gate, up, dout, dgate, dup;
  __device__ void operator()(int64_t r, int64_t j) const {
    const float z = *at(gate, r, j);
    const float e = silu_exp(z);
    const float s = 1.0f / (1.0f + e);
    const float g = *at(dout, r, j);
    const float u = *at(up, r, j);
    *at(dgate, r, j) = g * u * (s * (1.0f + z * (e * s)));
    *at(dup, r, j) = g * (z * s);
  }
};

// --- reductions: fixed-order warp and block trees ---


// bias_backward, pass 1: partial[blk, j] = sum of dy[r, j] over the kReduceRows rows of block blk,
// in row order, in float (the CPU's partials). Grid: x over columns, y over row blocks.
__global__ void bias_partial_kernel(DeviceRows dy, int64_t blocks, float* partial) {
  const int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (j >= dy.cols) return;
  for (int64_t blk = blockIdx.y; blk < blocks; blk += gridDim.y) {
    const int64_t r_end = min(dy.rows, (blk + 1) * kReduceRows);
    float acc = 0.0f;
    for (int64_t r = blk * kReduceRows; r < r_end; ++r) acc += *at(dy, r, j);
    partial[blk * dy.cols + j] = acc;
  }
}

// bias_backward, pass 2: dbias[j] += the partials of column j summed in block order, in double.
__global__ void bias_total_kernel(const float* partial, int64_t blocks, int64_t cols, float* dbias) {
  const int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double total = 0.0;
  for (int64_t blk = 0; blk < blocks; ++blk) total += partial[blk * cols + j];
  dbias[j] += static_cast<float>(total);
}

// softmax for rows up to kWarpRowMaxCols wide: one warp per row, kThreads / 32 rows a block.
// y may be x: each lane writes only the elements it read, after the row's reductions.
__global__ void softmax_warp_kernel(DeviceRows x, DeviceRows y) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t step = int64_t{gridDim.x} * warps_per_block;
  for (int64_t r = int64_t{blockIdx.x} * warps_per_block + threadIdx.x / kWarp; r < x.rows; r += step) {
    const float* xr = at(x, r, 0);
    float* yr = at(y, r, 0);
    float mx = -INFINITY;
    for (int64_t j = lane; j < x.cols; j += kWarp) mx = fmaxf(mx, xr[j]);
    mx = warp_reduce(mx, MaxOp{});
    float sum = 0.0f;
    for (int64_t j = lane; j < x.cols; j += kWarp) sum += expf(xr[j] - mx);
    sum = warp_reduce(sum, SumOp{});
    const float inv = 1.0f / sum;
    for (int64_t j = lane; j < x.cols; j += kWarp) yr[j] = expf(xr[j] - mx) * inv;
  }
}

// softmax for wider rows: one block (kThreads) per row; max and sum reduced over the block.
__global__ void softmax_block_kernel(DeviceRows x, DeviceRows y) {
  __shared__ float scratch[kWarp];
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const float* xr = at(x, r, 0);
    float* yr = at(y, r, 0);
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x) mx = fmaxf(mx, xr[j]);
    mx = block_reduce(mx, scratch, -INFINITY, MaxOp{});
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x) sum += expf(xr[j] - mx);
    sum = block_reduce(sum, scratch, 0.0f, SumOp{});
    const float inv = 1.0f / sum;
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x) yr[j] = expf(xr[j] - mx) * inv;
  }
}

// softmax backward: dx = y * (dy - sum(dy * y)), the dot accumulated in double as on the CPU (its
// terms have both signs). One warp per row for narrow rows...
__global__ void softmax_backward_warp_kernel(DeviceRows y, DeviceRows dy, DeviceRows dx) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t step = int64_t{gridDim.x} * warps_per_block;
  for (int64_t r = int64_t{blockIdx.x} * warps_per_block + threadIdx.x / kWarp; r < y.rows; r += step) {
    const float* yr = at(y, r, 0);
    const float* gr = at(dy, r, 0);
    float* dr = at(dx, r, 0);
    double dot = 0.0;
    for (int64_t j = lane; j < y.cols; j += kWarp) dot += static_cast<double>(gr[j]) * yr[j];
    const float d = static_cast<float>(warp_reduce(dot, SumOp{}));
    for (int64_t j = lane; j < y.cols; j += kWarp) dr[j] = yr[j] * (gr[j] - d);
  }
}

// ...one block per row for wide ones.
__global__ void softmax_backward_block_kernel(DeviceRows y, DeviceRows dy, DeviceRows dx) {
  __shared__ double scratch[kWarp];
  for (int64_t r = blockIdx.x; r < y.rows; r += gridDim.x) {
    const float* yr = at(y, r, 0);
    const float* gr = at(dy, r, 0);
    float* dr = at(dx, r, 0);
    double dot = 0.0;
    for (int64_t j = threadIdx.x; j < y.cols; j += blockDim.x) dot += static_cast<double>(gr[j]) * yr[j];
    const float d = static_cast<float>(block_reduce(dot, scratch, 0.0, SumOp{}));
    for (int64_t j = threadIdx.x; j < y.cols; j += blockDim.x) dr[j] = yr[j] * (gr[j] - d);
  }
}

// sum_of_squares, pass 1: block b sums x^2 in double over the flat indices b*T + t + k*(grid*T)
// (a grid-stride loop; the grid depends on the element count only), then a block tree.
__global__ void sum_squares_partial_kernel(DeviceRows x, bool flat, double* partial) {
  __shared__ double scratch[kWarp];
  const int64_t n = x.rows * x.cols;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  double acc = 0.0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t offset = i;
    if (!flat) {
      const int64_t r = i / x.cols;
      offset = r * x.stride + (i - r * x.cols);
    }
    const double v = x.data[offset];
    acc += v * v;  // exact: a float squared fits a double
  }
  acc = block_reduce(acc, scratch, 0.0, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// sum_of_squares, pass 2: one block sums the partials (thread t: partials t, t + T, ... in order,
// then the block tree) into *out.
__global__ void sum_squares_total_kernel(const double* partial, int count, double* out) {
  __shared__ double scratch[kWarp];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_reduce(acc, scratch, 0.0, SumOp{});
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

void add_bias(Tensor y, const Tensor& bias) {
  detail::check_add_bias(y, bias);
  const DeviceRows ym = device_rows(y);
  // Not flat: the bias index is the column.
  enqueue_for_each("add_bias", ym.rows, ym.cols, false, AddBiasOp{ym, bias.device_data<float>()});
}

void bias_backward(const Tensor& dy, Tensor dbias) {
  detail::check_bias_backward(dy, dbias);
  const DeviceRows g = device_rows(dy);
  if (g.rows == 0 || g.cols == 0) return;
  // Blocks of kReduceRows rows summed in row order (float), then the block partials in block order
  // (double), added to dbias: the CPU kernel's order, so the result is bit-identical run to run.
  const int64_t blocks = (g.rows + kReduceRows - 1) / kReduceRows;
  Tensor partial = Tensor::empty({blocks, g.cols}, DType::F32, Device::CUDA);
  const dim3 grid(blocks_for(g.cols, kThreads), static_cast<unsigned>(std::min<int64_t>(blocks, 65535)));
  launch("bias_partial_kernel", bias_partial_kernel, grid, kThreads, 0, stream(), g, blocks,
      partial.device_data<float>());
  launch("bias_total_kernel", bias_total_kernel, blocks_for(g.cols, kThreads), kThreads, 0, stream(),
      partial.device_data<float>(), blocks, g.cols, dbias.device_data<float>());
}

void add_inplace(Tensor y, const Tensor& x) {
  detail::check_add_inplace(y, x);
  const DeviceRows ym = device_rows(y);
  const DeviceRows xm = device_rows(x);
  enqueue_for_each("add_inplace", ym.rows, ym.cols, packed(ym) && packed(xm), AddOp{ym, xm});
}

void scale_inplace(Tensor x, float s) {
  const DeviceRows xm = device_rows(x);
  enqueue_for_each("scale_inplace", xm.rows, xm.cols, packed(xm), ScaleOp{xm, s});
}

void gelu_forward(const Tensor& x, Tensor y) {
  detail::check_gelu_forward(x, y);
  const DeviceRows xm = device_rows(x);
  const DeviceRows ym = device_rows(y);
  enqueue_for_each("gelu_forward", xm.rows, xm.cols, packed(xm) && packed(ym), GeluOp{xm, ym});
}

void gelu_backward(const Tensor& x, const Tensor& dy, Tensor dx) {
  detail::check_gelu_backward(x, dy, dx);
  const DeviceRows xm = device_rows(x);
  const DeviceRows gm = device_rows(dy);
  const DeviceRows dm = device_rows(dx);
  enqueue_for_each("gelu_backward", xm.rows, xm.cols, packed(xm) && packed(gm) && packed(dm),
                   GeluBackwardOp{xm, gm, dm});
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor out) {
  detail::check_swiglu_forward(gate, up, out);
  const DeviceRows gm = device_rows(gate);
  const DeviceRows um = device_rows(up);
  const DeviceRows om = device_rows(out);
  enqueue_for_each("swiglu_forward", gm.rows, gm.cols, packed(gm) && packed(um) && packed(om), SwigluOp{gm, um, om});
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor dgate, Tensor dup) {
  detail::check_swiglu_backward(gate, up, dout, dgate, dup);
  const DeviceRows gm = device_rows(gate);
  const DeviceRows um = device_rows(up);
  const DeviceRows om = device_rows(dout);
  const DeviceRows dgm = device_rows(dgate);
  const DeviceRows dum = device_rows(dup);
  const bool flat = packed(gm) && packed(um) && packed(om) && packed(dgm) && packed(dum);
  enqueue_for_each("swiglu_backward", gm.rows, gm.cols, flat, SwigluBackwardOp{gm, um, om, dgm, dum});
}

void softmax_rows(const Tensor& x, Tensor y) {
  detail::check_softmax_rows(x, y);
  const DeviceRows xm = device_rows(x);
  const DeviceRows ym = device_rows(y);
  if (xm.rows == 0 || xm.cols == 0) return;
  if (xm.cols <= kWarpRowMaxCols) {
    launch("softmax_warp_kernel", softmax_warp_kernel, grid_for(xm.rows * kWarp), kThreads, 0, stream(), xm, ym);
  } else {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(xm.rows, kMaxBlocks));
    launch("softmax_block_kernel", softmax_block_kernel, grid, kThreads, 0, stream(), xm, ym);
  }
}

void softmax_rows_backward(const Tensor& y, const Tensor& dy, Tensor dx) {
  detail::check_softmax_rows_backward(y, dy, dx);
  const DeviceRows ym = device_rows(y);
  const DeviceRows gm = device_rows(dy);
  const DeviceRows dm = device_rows(dx);
  if (ym.rows == 0 || ym.cols == 0) return;
  if (ym.cols <= kWarpRowMaxCols) {
    launch("softmax_backward_warp_kernel", softmax_backward_warp_kernel, grid_for(ym.rows * kWarp), kThreads, 0,
        stream(), ym, gm, dm);
  } else {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ym.rows, kMaxBlocks));
    launch("softmax_backward_block_kernel", softmax_backward_block_kernel, grid, kThreads, 0, stream(), ym, gm, dm);
  }
}

// Synchronises: the result is copied to the host (8 bytes) and the calling thread waits for its
// current stream (cudaStreamSynchronize), so every earlier work on that stream has finished too.
double sum_of_squares(const Tensor& x) {
  const DeviceRows xm = device_rows(x);
  const int64_t n = xm.rows * xm.cols;
  if (n == 0) return 0.0;
  const int blocks =
      static_cast<int>(std::min<int64_t>((n + kSumPerBlock - 1) / kSumPerBlock, kSumMaxBlocks));
  // Scratch for the block partials and the result, as doubles (the allocation is 256-byte aligned).
  Tensor scratch = Tensor::empty({2 * (int64_t{blocks} + 1)}, DType::F32, Device::CUDA);
  double* partial = reinterpret_cast<double*>(scratch.device_data<float>());
  double* result = partial + blocks;
  launch("sum_squares_partial_kernel", sum_squares_partial_kernel, blocks, kThreads, 0, stream(), xm, packed(xm),
      partial);
  launch("sum_squares_total_kernel", sum_squares_total_kernel, 1, kThreads, 0, stream(), partial, blocks, result);
  double host = 0.0;
  AMPIPE_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  AMPIPE_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return host;
}

}  // namespace ampipe::kernels::gpu
