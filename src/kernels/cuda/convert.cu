// CUDA convert (kernels/elementwise.h): a grid-stride loop over the elements, each converted with
// core/bf16.h's rule written out on the bits (round to nearest even, subnormals kept, NaN made quiet
// with its sign and upper payload), so both devices give the same bits.
#include <cstdint>
#include <cstring>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/elementwise.h"
#include "kernels/elementwise_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65536;

__device__ __forceinline__ uint16_t bf16_bits(float value) {
  uint32_t bits = 0;
  memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float widen(uint16_t half) {
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float value = 0;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// to_bf16: float rows -> bf16 rows; otherwise bf16 rows -> float rows. Strides in elements.
__global__ void convert_kernel(const void* src, int64_t src_stride, void* dst, int64_t dst_stride, int64_t rows,
                               int64_t cols, bool to_bf16) {
  const int64_t n = rows * cols;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) {
    const int64_t r = i / cols, j = i - r * cols;
    if (to_bf16) {
      static_cast<uint16_t*>(dst)[r * dst_stride + j] = bf16_bits(static_cast<const float*>(src)[r * src_stride + j]);
    } else {
      static_cast<float*>(dst)[r * dst_stride + j] = widen(static_cast<const uint16_t*>(src)[r * src_stride + j]);
    }
  }
}

}  // namespace

void convert(const Tensor& src, Tensor dst) {
  const auto [rows, cols, src_stride, dst_stride] = detail::check_convert(src, dst);
  if (src.dtype() == dst.dtype()) {
    dst.copy_from(src);
    return;
  }
  if (rows * cols == 0) return;
  const unsigned grid = std::min<unsigned>(blocks_for(rows * cols, kThreads), kMaxBlocks);
  launch("convert_kernel", convert_kernel, grid, kThreads, 0, stream(), static_cast<const void*>(src.device_bytes()),
         src_stride, static_cast<void*>(dst.device_bytes()), dst_stride, rows, cols, dst.dtype() == DType::BF16);
}

}  // namespace ampipe::kernels::gpu
