// CUDA token + position embedding (kernels/embedding.h), the same sums as kernels/cpu/embedding.cpp.
//
// Token ids are checked on the device: a kernel finds the first id outside the vocabulary, and the
// host reads that one index back and throws the CPU's message. This costs one stream
// synchronisation per call (the embedding runs once per step, forward and backward).
//
// Forward: one block per token row, the threads across the width.
//
// Backward, without float atomics and in the CPU's order:
//   dtoken_table: the token ids are sorted with their positions (CUB's radix sort, which is
//   stable: the positions of each id stay ascending). Then a block per run of equal ids (the block
//   at the run's first sorted index; the others return at once), its threads across a tile of
//   columns, adds the dx rows of the run to the table row in position order, as the CPU does.
//   dposition_table: a thread per (position, column) adds dx rows b*N + i for b = 0, 1, ... in order.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/embedding.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxCheckBlocks = 1024;
constexpr unsigned kMaxGridY = 65535;
constexpr unsigned long long kNoBadId = std::numeric_limits<unsigned long long>::max();

// *first = min(*first, t) over the indices t whose id lies outside [0, limit) (an integer atomic:
// the minimum does not depend on the order).
__global__ void first_bad_id_kernel(const int32_t* ids, int64_t n, int64_t limit, unsigned long long* first) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t v = ids[t];
    if (v < 0 || v >= limit) atomicMin(first, static_cast<unsigned long long>(t));
  }
}

}  // namespace

namespace detail {

IdOutOfRange first_id_out_of_range_on_gpu(const Tensor& ids, int64_t limit) {
  const int64_t n = ids.numel();
  if (n == 0) return {-1, 0};
  const int32_t* ip = ids.device_data<int32_t>();
  cudaStream_t s = gpu::stream();
  Tensor scratch = Tensor::empty({2}, DType::I32, Device::CUDA);  // one 64-bit index (256-byte aligned)
  auto* first = reinterpret_cast<unsigned long long*>(scratch.device_data<int32_t>());
  AMPIPE_CUDA_CHECK(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long), s));
  gpu::launch("first_bad_id_kernel", first_bad_id_kernel, std::min(gpu::blocks_for(n, kThreads), kMaxCheckBlocks),
      kThreads, 0, s, ip, n, limit, first);
  unsigned long long host_first = 0;
  AMPIPE_CUDA_CHECK(cudaMemcpyAsync(&host_first, first, sizeof host_first, cudaMemcpyDeviceToHost, s));
  AMPIPE_CUDA_CHECK(cudaStreamSynchronize(s));
  if (host_first == kNoBadId) return {-1, 0};
  // Only on the error path: the bad id itself.
  int32_t id = 0;
  AMPIPE_CUDA_CHECK(cudaMemcpyAsync(&id, ip + host_first, sizeof id, cudaMemcpyDeviceToHost, s));
  AMPIPE_CUDA_CHECK(cudaStreamSynchronize(s));
  return {static_cast<int64_t>(host_first), id};
}

}  // namespace detail

namespace gpu {
namespace {

// Throws the CPU backend's message for the first token id outside [0, vocab).
void check_token_ids(const Tensor& tokens, int64_t vocab, const char* op) {
  const detail::IdOutOfRange bad = detail::first_id_out_of_range_on_gpu(tokens, vocab);
  if (bad.index >= 0) detail::check_token_id(bad.id, bad.index, vocab, op);
}

// A grid of row blocks along x and column tiles along y (both grid-strided past the limits).
dim3 rows_by_column_tiles(int64_t rows, int64_t cols) {
  return dim3(blocks_for(rows, 1),
              static_cast<unsigned>(std::min<int64_t>(blocks_for(cols, kThreads), kMaxGridY)));
}

__global__ void embedding_forward_kernel(const int32_t* tokens, DeviceRows tok, const float* pos, int64_t pos_stride,
                                         int64_t seq_len, DeviceRows x) {
  for (int64_t t = blockIdx.x; t < x.rows; t += gridDim.x) {
    const float* a = tok.data + static_cast<int64_t>(tokens[t]) * tok.stride;
    float* out = x.data + t * x.stride;
    if (pos == nullptr) {
      for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x) out[j] = a[j];
    } else {
      const float* b = pos + (t % seq_len) * pos_stride;
      for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x) out[j] = a[j] + b[j];
    }
  }
}

// order[t] = t.
__global__ void iota_kernel(int64_t* order, int64_t n) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    order[t] = t;
}

// keys: the token ids sorted ascending; order: their positions (ascending within equal ids). The
// block at the first index i of each run of id v adds dx[order[i]], dx[order[i + 1]], ... (the
// whole run, in order) to dtok row v; blockIdx.y tiles the columns.
__global__ void embedding_token_grad_kernel(const uint32_t* keys, const int64_t* order, int64_t n, DeviceRows dx,
                                            float* dtok, int64_t tok_stride) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const uint32_t v = keys[i];
    if (i > 0 && keys[i - 1] == v) continue;  // not the first of its run: that run's head block adds it
    float* out = dtok + static_cast<int64_t>(v) * tok_stride;
    for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < dx.cols;
         j += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      float acc = out[j];
      for (int64_t k = i; k < n && keys[k] == v; ++k) acc += dx.data[order[k] * dx.stride + j];
      out[j] = acc;
    }
  }
}

// dpos[i] += dx[b * seq_len + i] for b = 0 .. batch-1 in order; blockIdx.x the position, blockIdx.y
// a tile of columns.
__global__ void embedding_position_grad_kernel(DeviceRows dx, int64_t seq_len, int64_t batch, float* dpos,
                                               int64_t pos_stride) {
  for (int64_t i = blockIdx.x; i < seq_len; i += gridDim.x) {
    for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < dx.cols;
         j += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      float acc = dpos[i * pos_stride + j];
      for (int64_t b = 0; b < batch; ++b) acc += dx.data[(b * seq_len + i) * dx.stride + j];
      dpos[i * pos_stride + j] = acc;
    }
  }
}

// The number of low bits that hold every id in [0, vocab) (at least 1).
int id_bits(int64_t vocab) {
  int bits = 1;
  while (bits < 63 && (int64_t{1} << bits) < vocab) ++bits;
  return bits;
}

// An int32 device buffer holding `count` 64-bit integers (the allocator aligns to 256 bytes).
Tensor int64_scratch(int64_t count) { return Tensor::empty({2 * std::max<int64_t>(count, 1)}, DType::I32, Device::CUDA); }

}  // namespace

void embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                       int64_t seq_len, Tensor x) {
  detail::check_embedding_forward(tokens, token_table, position_table, seq_len, x);
  check_token_ids(tokens, token_table.dim(0), "embedding_forward");
  const int64_t rows = x.dim(0);
  const int64_t width = x.dim(1);
  if (rows == 0 || width == 0) return;
  const bool positions = position_table.defined();
  const float* pos = positions ? position_table.device_data<float>() : nullptr;
  const int64_t pos_stride = positions ? position_table.stride(0) : 0;
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (width + 31) / 32 * 32));
  launch("embedding_forward_kernel", embedding_forward_kernel, blocks_for(rows, 1), threads, 0, stream(),
      tokens.device_data<int32_t>(), device_rows(token_table), pos, pos_stride, seq_len, device_rows(x));
}

void embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, Tensor dtoken_table,
                        Tensor dposition_table) {
  detail::check_embedding_backward(tokens, dx, seq_len, dtoken_table, dposition_table);
  const int64_t vocab = dtoken_table.dim(0);
  check_token_ids(tokens, vocab, "embedding_backward");
  const int64_t rows = dx.dim(0);
  const int64_t width = dx.dim(1);
  if (rows == 0 || width == 0) return;
  cudaStream_t s = stream();
  const DeviceRows g = device_rows(dx);

  // Sort (id, position) pairs by id; the ids are in [0, vocab), so their int32 bits sort as unsigned.
  const auto* keys_in = reinterpret_cast<const uint32_t*>(tokens.device_data<int32_t>());
  Tensor keys_buf = Tensor::empty({rows}, DType::I32, Device::CUDA);
  auto* keys_out = reinterpret_cast<uint32_t*>(keys_buf.device_data<int32_t>());
  Tensor order_in_buf = int64_scratch(rows);
  Tensor order_out_buf = int64_scratch(rows);
  auto* order_in = reinterpret_cast<int64_t*>(order_in_buf.device_data<int32_t>());
  auto* order_out = reinterpret_cast<int64_t*>(order_out_buf.device_data<int32_t>());
  launch("iota_kernel", iota_kernel, blocks_for(rows, kThreads), kThreads, 0, s, order_in, rows);
  const int end_bit = id_bits(vocab);
  size_t temp_bytes = 0;
  AMPIPE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, order_in, order_out,
                                                    rows, 0, end_bit, s));
  Tensor temp = Tensor::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1) + 3) / 4}, DType::I32,
                              Device::CUDA);
  AMPIPE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.device_data<int32_t>(), temp_bytes, keys_in, keys_out,
                                                    order_in, order_out, rows, 0, end_bit, s));
  launch("embedding_token_grad_kernel", embedding_token_grad_kernel, rows_by_column_tiles(rows, width), kThreads, 0, s,
      keys_out, order_out, rows, g, dtoken_table.device_data<float>(), dtoken_table.stride(0));

  if (!dposition_table.defined()) return;
  launch("embedding_position_grad_kernel", embedding_position_grad_kernel, rows_by_column_tiles(seq_len, width),
      kThreads, 0, s, g, seq_len, rows / seq_len, dposition_table.device_data<float>(), dposition_table.stride(0));
}

}  // namespace gpu
}  // namespace ampipe::kernels
