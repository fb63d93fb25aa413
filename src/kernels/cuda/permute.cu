// CUDA dispatch plan and token permutation (kernels/permute.h): the orderings and sums of
// kernels/cpu/permute.cpp, with no atomics that order results by arrival.
//
// make_dispatch_plan ranks every (token, choice) pair among the pairs of its expert in flattened
// (token, choice) order, the order the CPU visits them in:
//   1. plan_rank_kernel<false>: each block takes a contiguous chunk of pairs, 256 at a time; a
//      pair's rank inside a round is the number of earlier pairs of the round with its expert
//      (counted in shared memory), and the block keeps a running count per expert in its own row
//      of a [blocks, E] table in global memory (no other block touches it). At the end the row
//      holds the chunk's count per expert. Bad expert indices are recorded (lowest pair wins).
//   2. plan_scan_kernel: per expert an exclusive prefix sum of the table's column over the blocks
//      (block order = pair order), the routed and kept counts, and each expert's first slot.
//   3. The counts cross to the host (they size the all-to-all), the host allocates slot_token.
//   4. plan_rank_kernel<true>: the same ranking again, starting each block's running counts at its
//      prefix: rank r of expert e is kept when r < capacity, at slot start[e] + r.
// All of it is integer counting in a fixed order, so the plan is bit-identical to the CPU's.
//
// The row kernels (permute, unpermute, gather, scatter) give each row to 32..256 threads of a
// 256-thread block (more rows per block when rows are narrow) and move float4 when every row start
// is 16-byte aligned. Sums over a token's choices run in choice order in one thread per column;
// unpermute_backward's dot product reduces through a fixed shuffle tree and then the row's warps in
// order, so every result is the same from run to run.
#include <climits>
#include <cstdint>
#include <vector>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/moe_checks.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Dispatch plan

constexpr int kPlanThreads = 256;         // pairs per round of plan_rank_kernel
constexpr int kPlanMinRounds = 8;         // rounds per block at least (2048 pairs)
constexpr int64_t kPlanMaxBlocks = 1024;  // more rounds per block beyond this many blocks
constexpr int kScanThreads = 1024;        // plan_scan_kernel: one block of 32 full warps
constexpr unsigned long long kNoBadPair = ~0ull;

// kAssign = false: count (step 1); true: assign slots (step 4). Every block runs `rounds` rounds of
// kPlanThreads pairs over its chunk; `running` is its row of the [blocks, E] table.
template <bool kAssign>
__global__ void plan_rank_kernel(const int32_t* __restrict__ expert_index, int64_t index_stride,
                                 int64_t pairs, int k, int experts, int rounds, int64_t* running_table,
                                 unsigned long long* first_bad, const int64_t* __restrict__ expert_start,
                                 int64_t capacity, int32_t* __restrict__ token_slot,
                                 int32_t* __restrict__ slot_token) {
  __shared__ int32_t round_expert[kPlanThreads];
  const int tid = static_cast<int>(threadIdx.x);
  int64_t* running = running_table + static_cast<int64_t>(blockIdx.x) * experts;
  if (!kAssign)
    for (int e = tid; e < experts; e += kPlanThreads) running[e] = 0;
  __syncthreads();
  const int64_t chunk_begin = static_cast<int64_t>(blockIdx.x) * rounds * kPlanThreads;
  for (int r = 0; r < rounds; ++r) {
    const int64_t round_begin = chunk_begin + static_cast<int64_t>(r) * kPlanThreads;
    if (round_begin >= pairs) break;  // block-uniform
    const int64_t i = round_begin + tid;
    int expert = -1;  // -1: past the end, or an index outside [0, E)
    int64_t token = 0;
    if (i < pairs) {
      token = i / k;
      const int choice = static_cast<int>(i - token * k);
      const int32_t e = expert_index[token * index_stride + choice];
      if (e >= 0 && e < experts) {
        expert = e;
      } else if (!kAssign) {
        atomicMin(first_bad, static_cast<unsigned long long>(i));  // the minimum: order-independent
      }
    }
    round_expert[tid] = expert;
    __syncthreads();
    int before = 0;    // earlier pairs of this round with the same expert
    bool last = true;  // no later pair of this round has it
    if (expert >= 0) {
      for (int q = 0; q < kPlanThreads; ++q) {
        if (round_expert[q] != expert) continue;
        if (q < tid) {
          ++before;
        } else if (q > tid) {
          last = false;
        }
      }
    }
    const int64_t rank = expert >= 0 ? running[expert] + before : 0;
    __syncthreads();  // every read of `running` precedes its update
    if (expert >= 0 && last) running[expert] = rank + 1;
    if (kAssign && i < pairs) {
      int32_t slot = -1;
      if (expert >= 0 && (capacity < 0 || rank < capacity)) {
        const int64_t s = expert_start[expert] + rank;
        slot = static_cast<int32_t>(s);
        slot_token[s] = static_cast<int32_t>(token);
      }
      token_slot[i] = slot;
    }
    __syncthreads();  // the updates are visible, and round_expert is free, before the next round
  }
}

// Inclusive prefix sum across a warp (integers: exact, any order would do).
__device__ __forceinline__ int64_t warp_inclusive_scan(int64_t v, int lane) {
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int64_t other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

// One block of kScanThreads. host_info receives [0, E): routed pairs per expert; [E]: the lowest
// flattened pair with an expert index outside [0, E), or -1; [E + 1]: that index.
__global__ void plan_scan_kernel(int64_t* running_table, int blocks, int experts, int64_t capacity,
                                 int64_t* expert_start, int64_t* host_info,
                                 const unsigned long long* first_bad,
                                 const int32_t* __restrict__ expert_index, int64_t index_stride, int k) {
  __shared__ int64_t warp_totals[kScanThreads / kWarpSize];
  __shared__ int64_t carry_in;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  constexpr int kWarps = kScanThreads / kWarpSize;

  // Per expert (one warp each), the exclusive prefix of its counts over the blocks, in block order.
  for (int e = warp; e < experts; e += kWarps) {
    int64_t carry = 0;
    for (int b0 = 0; b0 < blocks; b0 += kWarpSize) {
      const int b = b0 + lane;
      int64_t* cell = running_table + static_cast<int64_t>(b) * experts + e;
      const int64_t count = b < blocks ? *cell : 0;
      const int64_t inclusive = warp_inclusive_scan(count, lane);
      if (b < blocks) *cell = carry + inclusive - count;
      carry += __shfl_sync(kFullMask, inclusive, kWarpSize - 1);
    }
    if (lane == 0) host_info[e] = carry;
  }
  if (tid == 0) carry_in = 0;
  __syncthreads();

  // expert_start: exclusive prefix of the kept counts over the experts, kScanThreads at a time.
  for (int e0 = 0; e0 < experts; e0 += kScanThreads) {
    const int e = e0 + tid;
    int64_t kept = 0;
    if (e < experts) kept = capacity < 0 ? host_info[e] : min(host_info[e], capacity);
    const int64_t inclusive = warp_inclusive_scan(kept, lane);
    if (lane == kWarpSize - 1) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) warp_totals[lane] = warp_inclusive_scan(warp_totals[lane], lane);
    __syncthreads();
    const int64_t before_warp = warp == 0 ? 0 : warp_totals[warp - 1];
    if (e < experts) expert_start[e] = carry_in + before_warp + inclusive - kept;
    __syncthreads();  // carry_in read by all before thread 0 advances it
    if (tid == 0) carry_in += warp_totals[kWarps - 1];
    __syncthreads();
  }

  if (tid == 0) {
    const unsigned long long bad = *first_bad;
    if (bad == kNoBadPair) {
      host_info[experts] = -1;
      host_info[experts + 1] = 0;
    } else {
      const int64_t i = static_cast<int64_t>(bad);
      const int64_t token = i / k;
      host_info[experts] = i;
      host_info[experts + 1] = expert_index[token * index_stride + (i - token * k)];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Row kernels

constexpr int kRowThreads = 256;

template <int V>
struct Chunk {
  float v[V];
};

template <int V>
__device__ __forceinline__ Chunk<V> load_chunk(const float* p) {
  Chunk<V> c;
  if constexpr (V == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    c.v[0] = q.x;
    c.v[1] = q.y;
    c.v[2] = q.z;
    c.v[3] = q.w;
  } else {
    c.v[0] = *p;
  }
  return c;
}

template <int V>
__device__ __forceinline__ void store_chunk(float* p, const Chunk<V>& c) {
  if constexpr (V == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(c.v[0], c.v[1], c.v[2], c.v[3]);
  } else {
    *p = c.v[0];
  }
}

// Block shape for rows of `units` vector units: blockDim.x threads along a row (a power of two in
// [32, 256]), blockDim.y = 256 / blockDim.x rows per block. Kernels loop over row groups, so the
// grid may be capped.
struct RowLaunch {
  dim3 grid;
  dim3 block;
};

RowLaunch row_launch(int64_t rows, int64_t units) {
  int x = kWarpSize;
  while (x < kRowThreads && x < units) x *= 2;
  const int y = kRowThreads / x;
  const int64_t groups = (std::max<int64_t>(rows, 1) + y - 1) / y;
  return {dim3(static_cast<unsigned>(std::min<int64_t>(groups, INT_MAX))), dim3(x, y)};
}

bool float4_rows(const float* data, int64_t stride) {
  return stride % 4 == 0 && reinterpret_cast<uintptr_t>(data) % 16 == 0;
}

// dst[i] = src[index[i]] (gather) or dst[index[i]] = src[i] (scatter), `units` units of V elements a
// row: float rows (V = 4 as float4, or 1), or the 16-bit patterns of bfloat16 rows (V = 1), copied
// unchanged.
template <typename Element, int V, bool kGather>
__global__ void move_rows_kernel(const Element* __restrict__ src, int64_t src_stride,
                                 const int32_t* __restrict__ index, int64_t n, int64_t index_limit,
                                 Element* __restrict__ dst, int64_t dst_stride, int64_t units) {
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y; first < n;
       first += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t i = first + threadIdx.y;
    if (i >= n) continue;
    const int64_t other = index[i];
    // The contents of index are not checked on the GPU (see gather_rows): skip a row that would
    // leave the tensor.
    if (other < 0 || other >= index_limit) continue;
    const Element* from = src + (kGather ? other : i) * src_stride;
    Element* to = dst + (kGather ? i : other) * dst_stride;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      if constexpr (V == 1) {
        to[u] = from[u];
      } else {
        store_chunk<V>(to + u * V, load_chunk<V>(from + u * V));
      }
    }
  }
}

// out[t] = sum over kept choices j, in choice order, of gate[t, j] * y[token_slot[t, j]], from 0;
// with no gate (nullptr) every weight is 1: permute_backward's sum. Each term is one fused
// multiply-add, as the CPU's `dst[c] += g * src[c]` compiles (GCC contracts it under
// -march=x86-64-v3); with a weight of 1 that is exactly the CPU's `dst[c] += src[c]`.
template <int V>
__global__ void gathered_sum_kernel(const float* __restrict__ y, int64_t y_stride,
                                    const int32_t* __restrict__ token_slot, int k,
                                    const float* __restrict__ gate, int64_t gate_stride, int64_t tokens,
                                    float* __restrict__ out, int64_t out_stride, int64_t units) {
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y; first < tokens;
       first += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t t = first + threadIdx.y;
    if (t >= tokens) continue;
    const int32_t* slots = token_slot + t * k;
    const float* g = gate == nullptr ? nullptr : gate + t * gate_stride;
    float* to = out + t * out_stride;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      Chunk<V> acc;
#pragma unroll
      for (int q = 0; q < V; ++q) acc.v[q] = 0.0f;
      for (int j = 0; j < k; ++j) {
        const int64_t slot = slots[j];
        if (slot < 0) continue;
        const float w = g == nullptr ? 1.0f : g[j];
        const Chunk<V> c = load_chunk<V>(y + slot * y_stride + u * V);
#pragma unroll
        for (int q = 0; q < V; ++q) acc.v[q] = fmaf(w, c.v[q], acc.v[q]);
      }
      store_chunk<V>(to + u * V, acc);
    }
  }
}

// dy[slot] = gate[t, j] * dout[t]; dgate[t, j] = dot(dout[t], y[slot]) in float64 (0 if dropped).
// Each (t, j) dot: per thread a float64 sum over its columns in order, a fixed shuffle tree per
// warp, then the row's warps summed in order by its first thread.
template <int V>
__global__ void unpermute_backward_kernel(const float* __restrict__ dout, int64_t dout_stride,
                                          const float* __restrict__ y, int64_t y_stride,
                                          const int32_t* __restrict__ token_slot, int k,
                                          const float* __restrict__ gate, int64_t gate_stride, int64_t tokens,
                                          float* __restrict__ dy, int64_t dy_stride,
                                          float* __restrict__ dgate, int64_t dgate_stride, int64_t units) {
  __shared__ double warp_sums[kRowThreads / kWarpSize];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warps_per_row = static_cast<int>(blockDim.x) / kWarpSize;
  const int warp = static_cast<int>(threadIdx.y) * warps_per_row + static_cast<int>(threadIdx.x) / kWarpSize;
  // Block-uniform loops (every thread reaches every __syncthreads); rows past the end idle.
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y; first < tokens;
       first += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t t = first + threadIdx.y;
    const bool active = t < tokens;
    for (int j = 0; j < k; ++j) {
      const int64_t slot = active ? token_slot[t * k + j] : -1;
      double partial = 0;
      if (slot >= 0) {
        const float g = gate[t * gate_stride + j];
        const float* g_out = dout + t * dout_stride;
        const float* y_row = y + slot * y_stride;
        float* dy_row = dy + slot * dy_stride;
        for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
          const Chunk<V> a = load_chunk<V>(g_out + u * V);
          const Chunk<V> b = load_chunk<V>(y_row + u * V);
          Chunk<V> scaled;
#pragma unroll
          for (int q = 0; q < V; ++q) {
            partial += static_cast<double>(a.v[q]) * static_cast<double>(b.v[q]);
            scaled.v[q] = g * a.v[q];
          }
          store_chunk<V>(dy_row + u * V, scaled);
        }
      }
      for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
        partial += __shfl_down_sync(kFullMask, partial, offset);
      if (lane == 0) warp_sums[warp] = partial;
      __syncthreads();
      if (active && threadIdx.x == 0) {
        double dot = 0;
        for (int w = 0; w < warps_per_row; ++w) dot += warp_sums[threadIdx.y * warps_per_row + w];
        dgate[t * dgate_stride + j] = slot < 0 ? 0.0f : static_cast<float>(dot);
      }
      __syncthreads();  // warp_sums is read before the next choice overwrites it
    }
  }
}

template <typename Element, int V>
void launch_move_rows(const Element* src, int64_t src_stride, const int32_t* index, int64_t n,
                      int64_t index_limit, Element* dst, int64_t dst_stride, int64_t units, bool gather) {
  const RowLaunch geometry = row_launch(n, units);
  if (gather) {
    launch("move_rows_kernel (gather_rows)", move_rows_kernel<Element, V, true>, geometry.grid,
           geometry.block, 0, stream(), src, src_stride, index, n, index_limit, dst, dst_stride, units);
  } else {
    launch("move_rows_kernel (scatter_rows)", move_rows_kernel<Element, V, false>, geometry.grid,
           geometry.block, 0, stream(), src, src_stride, index, n, index_limit, dst, dst_stride, units);
  }
}

void move_rows(const Tensor& src, const Tensor& index, Tensor dst, bool gather) {
  const int32_t* ix = index.device_data<int32_t>();
  const int64_t n = index.numel();
  const int64_t width = src.dim(1);
  if (n == 0 || width == 0) return;
  const int64_t index_limit = gather ? src.dim(0) : dst.dim(0);
  if (src.dtype() == DType::BF16) {
    return launch_move_rows<uint16_t, 1>(reinterpret_cast<const uint16_t*>(src.device_bytes()), src.stride(0),
                                         ix, n, index_limit, reinterpret_cast<uint16_t*>(dst.device_bytes()),
                                         dst.stride(0), width, gather);
  }
  const DeviceRows s = device_rows(src);
  const DeviceRows d = device_rows(dst);
  if (width % 4 == 0 && float4_rows(s.data, s.stride) && float4_rows(d.data, d.stride)) {
    return launch_move_rows<float, 4>(s.data, s.stride, ix, n, index_limit, d.data, d.stride, width / 4,
                                      gather);
  }
  launch_move_rows<float, 1>(s.data, s.stride, ix, n, index_limit, d.data, d.stride, width, gather);
}
}  // namespace

DispatchPlan make_dispatch_plan(const Tensor& expert_index, int num_experts, int64_t capacity) {
  detail::check_dispatch_plan_args(expert_index, num_experts);
  const int64_t tokens = expert_index.dim(0);
  const int64_t k = expert_index.dim(1);
  const int32_t* ip = expert_index.device_data<int32_t>();
  const int64_t index_stride = expert_index.stride(0);
  const int64_t pairs = tokens * k;
  const int experts = num_experts;

  DispatchPlan plan;
  plan.num_experts = num_experts;
  plan.routed_counts.assign(static_cast<size_t>(experts), 0);
  plan.expert_counts.assign(static_cast<size_t>(experts), 0);
  plan.token_slot = Tensor::empty({tokens, k}, DType::I32, Device::CUDA);
  if (pairs == 0) {
    plan.slot_token = Tensor::empty({0}, DType::I32, Device::CUDA);
    return plan;
  }

  const int64_t pairs_per_round_block = kPlanThreads * kPlanMaxBlocks;
  const int rounds = static_cast<int>(
      std::max<int64_t>(kPlanMinRounds, (pairs + pairs_per_round_block - 1) / pairs_per_round_block));
  const int64_t chunk = static_cast<int64_t>(rounds) * kPlanThreads;
  const int blocks = static_cast<int>((pairs + chunk - 1) / chunk);

  // Scratch in int64 units: the [blocks, E] table, expert_start [E], host_info [E + 2], first_bad.
  const int64_t table_size = static_cast<int64_t>(blocks) * experts;
  const int64_t scratch_words = table_size + experts + (experts + 2) + 1;
  Tensor scratch = Tensor::empty({2 * scratch_words}, DType::I32, Device::CUDA);  // 256-byte aligned
  int64_t* table = reinterpret_cast<int64_t*>(scratch.device_data<int32_t>());
  int64_t* expert_start = table + table_size;
  int64_t* host_info = expert_start + experts;
  auto* first_bad = reinterpret_cast<unsigned long long*>(host_info + experts + 2);

  AMPIPE_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), stream()));
  launch("plan_rank_kernel (count)", plan_rank_kernel<false>, blocks, kPlanThreads, 0, stream(), ip, index_stride,
      pairs, static_cast<int>(k), experts, rounds, table, first_bad, nullptr, capacity, nullptr, nullptr);
  launch("plan_scan_kernel", plan_scan_kernel, 1, kScanThreads, 0, stream(), table, blocks, experts, capacity,
      expert_start, host_info, first_bad, ip, index_stride, static_cast<int>(k));

  // The one place where a count crosses to the host: the per-expert counts size the all-to-all
  // (and slot_token), so the plan waits for them here; the range check of expert_index rides along.
  std::vector<int64_t> info(static_cast<size_t>(experts) + 2);
  AMPIPE_CUDA_CHECK(cudaMemcpyAsync(info.data(), host_info, info.size() * sizeof(int64_t),
                                    cudaMemcpyDeviceToHost, stream()));
  AMPIPE_CUDA_CHECK(cudaStreamSynchronize(stream()));
  const int64_t bad_pair = info[static_cast<size_t>(experts)];
  if (bad_pair >= 0)
    detail::check_expert_in_range(info[static_cast<size_t>(experts) + 1], bad_pair / k, bad_pair % k, experts,
                                  "make_dispatch_plan");

  int64_t slots = 0;
  for (int e = 0; e < experts; ++e) {
    const int64_t routed = info[static_cast<size_t>(e)];
    plan.routed_counts[static_cast<size_t>(e)] = routed;
    plan.expert_counts[static_cast<size_t>(e)] = capacity < 0 ? routed : std::min(routed, capacity);
    slots += plan.expert_counts[static_cast<size_t>(e)];
  }
  plan.slot_token = Tensor::empty({slots}, DType::I32, Device::CUDA);
  launch("plan_rank_kernel (assign)", plan_rank_kernel<true>, blocks, kPlanThreads, 0, stream(), ip, index_stride,
      pairs, static_cast<int>(k), experts, rounds, table, nullptr, expert_start, capacity,
      plan.token_slot.device_data<int32_t>(), plan.slot_token.device_data<int32_t>());
  return plan;  // scratch is released stream-ordered: the assign kernel still reads it safely
}

void permute_forward(const Tensor& x, const DispatchPlan& plan, Tensor out) {
  detail::check_permute_forward(x, plan, out);
  gather_rows(x, plan.slot_token, out);  // out[p] = x[slot_token[p]]
}

namespace {

// out[t] = the gate-weighted (gate undefined: plain) sum of src's rows token_slot[t, :].
void gathered_sum(const Tensor& src, const DispatchPlan& plan, const Tensor& gate, Tensor out, const char* name) {
  const int64_t tokens = plan.token_slot.dim(0);
  const int k = static_cast<int>(plan.token_slot.dim(1));
  const int64_t width = src.dim(1);
  const DeviceRows sr = device_rows(src);
  const DeviceRows o = device_rows(out);
  const float* gp = gate.defined() ? gate.device_data<float>() : nullptr;
  const int64_t gs = gate.defined() ? gate.stride(0) : 0;
  const int32_t* ts = plan.token_slot.device_data<int32_t>();
  if (tokens == 0 || width == 0) return;
  const bool vec = width % 4 == 0 && float4_rows(sr.data, sr.stride) && float4_rows(o.data, o.stride);
  const int64_t units = vec ? width / 4 : width;
  const RowLaunch geometry = row_launch(tokens, units);
  if (vec) {
    launch(name, gathered_sum_kernel<4>, geometry.grid, geometry.block, 0, stream(), sr.data, sr.stride, ts, k, gp, gs,
        tokens, o.data, o.stride, units);
  } else {
    launch(name, gathered_sum_kernel<1>, geometry.grid, geometry.block, 0, stream(), sr.data, sr.stride, ts, k, gp, gs,
        tokens, o.data, o.stride, units);
  }
}

}  // namespace

void permute_backward(const Tensor& dout, const DispatchPlan& plan, Tensor dx) {
  detail::check_permute_backward(dout, plan, dx);
  gathered_sum(dout, plan, Tensor(), dx, "gathered_sum_kernel (permute_backward)");
}

void unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate, Tensor out) {
  detail::check_unpermute_forward(y, plan, gate, out);
  gathered_sum(y, plan, gate, out, "gathered_sum_kernel (unpermute_forward)");
}

void unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan, const Tensor& gate,
                        Tensor dy, Tensor dgate) {
  detail::check_unpermute_backward(dout, y, plan, gate, dy, dgate);
  const int64_t tokens = plan.token_slot.dim(0);
  const int k = static_cast<int>(plan.token_slot.dim(1));
  const int64_t width = dout.dim(1);
  const DeviceRows g = device_rows(dout);
  const DeviceRows yr = device_rows(y);
  const DeviceRows d = device_rows(dy);
  const float* gp = gate.device_data<float>();
  float* dgp = dgate.device_data<float>();
  const int32_t* ts = plan.token_slot.device_data<int32_t>();
  // Width 0 still runs: dgate is written (all zeros).
  if (tokens == 0 || k == 0) return;
  const bool vec = width % 4 == 0 && float4_rows(g.data, g.stride) && float4_rows(yr.data, yr.stride) &&
                   float4_rows(d.data, d.stride);
  const int64_t units = vec ? width / 4 : width;
  const RowLaunch geometry = row_launch(tokens, units);
  if (vec) {
    launch("unpermute_backward_kernel", unpermute_backward_kernel<4>, geometry.grid, geometry.block, 0, stream(),
        g.data, g.stride, yr.data, yr.stride, ts, k, gp, gate.stride(0), tokens, d.data, d.stride, dgp, dgate.stride(0),
        units);
  } else {
    launch("unpermute_backward_kernel", unpermute_backward_kernel<1>, geometry.grid, geometry.block, 0, stream(),
        g.data, g.stride, yr.data, yr.stride, ts, k, gp, gate.stride(0), tokens, d.data, d.stride, dgp, dgate.stride(0),
        units);
  }
}

// The CPU also checks that every index entry is in range, which reads the contents on the host.
// On the GPU the contents are produced by the engine itself (a dispatch plan, an all-to-all's
// regrouping), so that check is skipped to keep the stream free of host round trips; the shapes
// are checked as on the CPU, and a row whose index is out of range is skipped by the kernel
// rather than read or written out of bounds.
void gather_rows(const Tensor& src, const Tensor& index, Tensor dst) {
  detail::check_gather_rows(src, index, dst);
  move_rows(src, index, dst, /*gather=*/true);
}

void scatter_rows(const Tensor& src, const Tensor& index, Tensor dst) {
  detail::check_scatter_rows(src, index, dst);
  move_rows(src, index, dst, /*gather=*/false);
}

}  // namespace ampipe::kernels::gpu
