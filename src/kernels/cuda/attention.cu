// Causal attention on the GPU (kernels/attention.h): FlashAttention-2 style tiles in shared memory
// with an online softmax, float32 FMA math (no tensor cores, no TF32), never an N x N matrix.
//
// Every kernel runs 256 threads as a 16 x 16 grid (ty = threadIdx.x / 16, tx = threadIdx.x % 16) over
// a score tile of (16 * RM) rows x 64 columns: thread (ty, tx) owns rows ty*RM .. ty*RM+RM-1 and
// columns tx*4 .. tx*4+3 of every score tile, and the same rows of its [rows, head_dim]
// accumulator, there columns (g*16 + tx)*VEC + v. A row's max and sum are reduced over the 16
// threads of a half warp by xor shuffles (every lane ends with the same, deterministic value).
// Shared-memory operands of the products are stored reduction-index-major, so a thread reads its
// RM rows and its 4 (or VEC) columns as vectors: rows of "transposed" tiles are padded to 16*RM+4 or
// 68 floats (16-byte aligned), and loaded from global memory in 8-column x 4-row chunks per warp
// (32-byte segments of 4 rows, no bank conflicts on the transposed store).
// Head dims are padded to HDP in {16, 32, 64, 128, 256} with zeros (any head_dim <= 256 works).
//
// Forward: one block per (query tile of 64, head, sequence); key tiles of 64 from 0 to the tile's
//   last query (tiles wholly above the diagonal are skipped); S = Q K^T, masked, online softmax, the
//   output accumulator rescaled, O += P V. lse in natural log.
// Backward: D_i = dO_i . O_i first (one warp per row and head). dQ: one block per (query tile, head,
//   sequence), key tiles in order; P is recomputed from lse, dS = P (dP - D), dQ += dS K (written,
//   times scale). dK, dV: one block per (key tile, KV head, sequence) that loops over the query heads
//   of its group in head order and over the query tiles that see the key tile, in order; the
//   accumulators stay in registers and are added to dk, dv once at the end (only rows below
//   q_begin + q_len). Every output element is owned by one thread that sums in a fixed order: no
//   atomics, bit-identical run to run.
#include "kernels/attention.h"

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/attention_checks.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/gpu_kernels.h"

namespace ampipe::kernels::gpu {
namespace {

constexpr int kThreads = 256;     // 16 x 16 threads per block
constexpr int kTile = 64;         // columns of a score tile: keys (forward, dQ) or queries (dK/dV)
constexpr int kLdTile = kTile + 4;  // row stride of a transposed tile of kTile rows
constexpr int kMaxHeadDim = 256;
constexpr int kDotWarps = 8;  // warps per block of the D = rowsum(dO * O) kernel

// Everything a kernel needs (one struct for all of them; unused fields are null).
struct AttentionArgs {
  const float* q;
  const float* k;
  const float* v;
  const float* out;
  const float* dout;
  const float* lse;    // [B, h, Nq], natural log (backward)
  const float* delta;  // [B, h, Nq]: D = rowsum(dO * O) (backward)
  float* out_w;        // forward: out
  float* lse_w;        // forward: lse
  float* dq;
  float* dk;
  float* dv;
  int64_t ldq, ldk, ldv, ldo, lddo, lddq, lddk, lddv;  // row strides
  int64_t q_begin, q_len, kv_len;
  int batch, heads, kv_heads, group, head_dim;
  int tiles;  // tiles along the blocks' row dimension (query tiles, or key tiles for dK/dV)
  float scale, scale_log2e;
};

// ---------------------------------------------------------------------------------------------
// Device code

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

template <int N>
__device__ __forceinline__ void load_vec(const float* p, float (&x)[N]) {
  if constexpr (N == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    x[0] = t.x;
    x[1] = t.y;
    x[2] = t.z;
    x[3] = t.w;
  } else if constexpr (N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    x[0] = t.x;
    x[1] = t.y;
  } else {
    static_assert(N == 1, "vectors of 1, 2 or 4 floats");
    x[0] = p[0];
  }
}

template <int N>
__device__ __forceinline__ void store_vec(float* p, const float (&x)[N]) {
  if constexpr (N == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(x[0], x[1]);
  } else {
    static_assert(N == 1, "vectors of 1, 2 or 4 floats");
    p[0] = x[0];
  }
}

// Columns of the [rows, HDP] accumulators a thread owns: CPT of them, in NG groups of VEC adjacent
// ones; its j-th is column (j / VEC) * 16 * VEC + tx * VEC + j % VEC.
template <int HDP>
struct Cols {
  static constexpr int kPerThread = HDP / 16;
  static constexpr int kVec = kPerThread < 4 ? kPerThread : 4;
  static constexpr int kGroups = kPerThread / kVec;
  static __device__ __forceinline__ int col(int j, int tx) {
    return (j / kVec) * 16 * kVec + tx * kVec + j % kVec;
  }
};

// Rows [0, R) x columns [0, HDP) of a tile, transposed: dst[c * (R + 4) + r] = src[r * ld + c] for
// r < valid_rows and c < hd, else 0. Each warp reads 8 columns of 4 rows per step.
template <int R, int HDP>
__device__ __forceinline__ void load_transposed(float* dst, const float* src, int64_t ld, int valid_rows,
                                                int hd) {
  static_assert(R % 4 == 0 && HDP % 8 == 0, "tile shape");
  constexpr int kColBlocks = HDP / 8;
  for (int idx = threadIdx.x; idx < R * HDP; idx += kThreads) {
    const int lane = idx & 31, chunk = idx >> 5;
    const int r = (chunk / kColBlocks) * 4 + (lane >> 3);
    const int c = (chunk % kColBlocks) * 8 + (lane & 7);
    float x = 0.0f;
    if (r < valid_rows && c < hd) x = src[static_cast<int64_t>(r) * ld + c];
    dst[c * (R + 4) + r] = x;
  }
}

// Rows [0, R) x columns [0, HDP) of a tile as they are: dst[r * HDP + c], zeros outside.
template <int R, int HDP>
__device__ __forceinline__ void load_rows(float* dst, const float* src, int64_t ld, int valid_rows, int hd) {
  for (int idx = threadIdx.x; idx < R * HDP; idx += kThreads) {
    const int r = idx / HDP, c = idx % HDP;
    float x = 0.0f;
    if (r < valid_rows && c < hd) x = src[static_cast<int64_t>(r) * ld + c];
    dst[idx] = x;
  }
}

// acc[i][j] += sum_t at[t][ty*RM + i] * bt[t][tx*4 + j] over t < HDP: a score tile (rows x 64) from
// two transposed tiles, at with rows of 16*RM + 4 floats, bt with rows of kLdTile.
template <int HDP, int RM>
__device__ __forceinline__ void scores_product(float (&acc)[RM][4], const float* at, const float* bt, int ty,
                                               int tx) {
  constexpr int lda = 16 * RM + 4;
  const float* a = at + ty * RM;
  const float* b = bt + tx * 4;
#pragma unroll 8
  for (int t = 0; t < HDP; ++t) {
    float x[RM], y[4];
    load_vec<RM>(a + t * lda, x);
    load_vec<4>(b + t * kLdTile, y);
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
  }
}

// acc[i][j] += sum_t at[t][ty*RM + i] * b[t][col(j)] over t < kTile: a [rows, HDP] accumulator from
// a transposed probability tile (rows of 16*RM + 4 floats) and a [kTile, HDP] tile as it is.
template <int HDP, int RM>
__device__ __forceinline__ void values_product(float (&acc)[RM][Cols<HDP>::kPerThread], const float* at,
                                               const float* b, int ty, int tx) {
  using C = Cols<HDP>;
  constexpr int lda = 16 * RM + 4;
  const float* a = at + ty * RM;
  const float* bb = b + tx * C::kVec;
#pragma unroll 4
  for (int t = 0; t < kTile; ++t) {
    float x[RM];
    load_vec<RM>(a + t * lda, x);
#pragma unroll
    for (int g = 0; g < C::kGroups; ++g) {
      float y[C::kVec];
      load_vec<C::kVec>(bb + t * HDP + g * 16 * C::kVec, y);
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int v = 0; v < C::kVec; ++v)
          acc[i][g * C::kVec + v] = fmaf(x[i], y[v], acc[i][g * C::kVec + v]);
    }
  }
}

// Stores a thread's score-tile values transposed: dst[(tx*4 + j) * (16*RM + 4) + ty*RM + i] = x[i][j].
template <int RM>
__device__ __forceinline__ void store_transposed(float* dst, const float (&x)[RM][4], int ty, int tx) {
  constexpr int ld = 16 * RM + 4;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float col[RM];
#pragma unroll
    for (int i = 0; i < RM; ++i) col[i] = x[i][j];
    store_vec<RM>(dst + (tx * 4 + j) * ld + ty * RM, col);
  }
}

// Max / sum over the 16 lanes of a half warp (the threads sharing ty); every lane gets the result.
__device__ __forceinline__ float half_warp_max(float x) {
#pragma unroll
  for (int offset = 8; offset >= 1; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ __forceinline__ float half_warp_sum(float x) {
#pragma unroll
  for (int offset = 8; offset >= 1; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Blocks are numbered with the (sequence, head) fastest; `heaviest_first` numbers the tiles from the
// last one (the causal work grows with the query tile).
struct BlockPos {
  int tile, b, h;
};
__device__ __forceinline__ BlockPos block_pos(int heads_per_seq, int batch, int tiles, bool heaviest_first) {
  const int bh_count = heads_per_seq * batch;
  const int bh = static_cast<int>(blockIdx.x % static_cast<unsigned>(bh_count));
  const int t = static_cast<int>(blockIdx.x / static_cast<unsigned>(bh_count));
  return {heaviest_first ? tiles - 1 - t : t, bh / heads_per_seq, bh % heads_per_seq};
}

// Shared memory: qt [HDP][kLdTile] (Q^T), kv [HDP][kLdTile] (K^T, then V as [kTile][HDP]),
// pt [kTile][kLdTile] (P^T).
template <int HDP>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(const AttentionArgs a) {
  constexpr int RM = 4, kRows = 16 * RM;
  using C = Cols<HDP>;
  AMPIPE_DYNAMIC_SHARED(float4, attention_smem);
  float* qt = reinterpret_cast<float*>(attention_smem);
  float* kv = qt + HDP * kLdTile;
  float* pt = kv + HDP * kLdTile;

  const BlockPos pos = block_pos(a.heads, a.batch, a.tiles, true);
  const int kvh = pos.h / a.group, hd = a.head_dim;
  const int tx = static_cast<int>(threadIdx.x) & 15, ty = static_cast<int>(threadIdx.x) >> 4;
  const int64_t row0 = static_cast<int64_t>(pos.tile) * kRows;  // first query row of the tile
  const int rows = static_cast<int>(a.q_len - row0 < kRows ? a.q_len - row0 : kRows);
  const int64_t q_row = static_cast<int64_t>(pos.b) * a.q_len + row0;  // its row in q / out
  const float* kp = a.k + static_cast<int64_t>(pos.b) * a.kv_len * a.ldk + kvh * hd;
  const float* vp = a.v + static_cast<int64_t>(pos.b) * a.kv_len * a.ldv + kvh * hd;

  load_transposed<kRows, HDP>(qt, a.q + q_row * a.ldq + pos.h * hd, a.ldq, rows, hd);

  // The last key each row sees; rows past q_len act as the last query (they are not written).
  int64_t last_key[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty * RM + i;
    last_key[i] = a.q_begin + row0 + (r < rows ? r : rows - 1);
  }
  float m[RM], l[RM], o[RM][C::kPerThread];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < C::kPerThread; ++j) o[i][j] = 0.0f;
  }

  const int64_t keys_end = a.q_begin + row0 + rows;  // the tile's last query sees keys < keys_end
  for (int64_t kb = 0; kb < keys_end; kb += kTile) {
    const int nk = static_cast<int>(keys_end - kb < kTile ? keys_end - kb : kTile);
    __syncthreads();  // the previous tile's P V is done with kv and pt
    load_transposed<kTile, HDP>(kv, kp + kb * a.ldk, a.ldk, nk, hd);
    __syncthreads();
    float s[RM][4];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
    scores_product<HDP, RM>(s, qt, kv, ty, tx);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t key = kb + tx * 4 + j;
        s[i][j] = key <= last_key[i] ? s[i][j] * a.scale_log2e : -INFINITY;  // base-2 scores
        tile_max = fmaxf(tile_max, s[i][j]);
      }
      // Finite from the first tile on: key 0 is seen by every row.
      const float new_max = fmaxf(m[i], half_warp_max(tile_max));
      const float rescale = exp2f(m[i] - new_max);  // 0 on the first tile (m = -inf)
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = exp2f(s[i][j] - new_max);  // masked: exp2(-inf) = 0
        sum += s[i][j];
      }
      l[i] = l[i] * rescale + half_warp_sum(sum);
      m[i] = new_max;
#pragma unroll
      for (int j = 0; j < C::kPerThread; ++j) o[i][j] *= rescale;
    }
    __syncthreads();  // every thread is done with K^T in kv
    store_transposed<RM>(pt, s, ty, tx);
    load_rows<kTile, HDP>(kv, vp + kb * a.ldv, a.ldv, nk, hd);
    __syncthreads();
    values_product<HDP, RM>(o, pt, kv, ty, tx);
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty * RM + i;
    if (r >= rows) continue;
    const float inv = 1.0f / l[i];
    float* orow = a.out_w + (q_row + r) * a.ldo + pos.h * hd;
#pragma unroll
    for (int j = 0; j < C::kPerThread; ++j) {
      const int c = C::col(j, tx);
      if (c < hd) orow[c] = o[i][j] * inv;
    }
    if (tx == 0)
      a.lse_w[(static_cast<int64_t>(pos.b) * a.heads + pos.h) * a.q_len + row0 + r] = (m[i] + log2f(l[i])) * kLn2;
  }
}

// D = rowsum(dO * O) per (sequence, head, query row), one warp each, into delta [B, h, Nq].
__global__ void __launch_bounds__(kDotWarps * 32) attention_delta_kernel(const AttentionArgs a, float* delta) {
  const int64_t total = static_cast<int64_t>(a.batch) * a.heads * a.q_len;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kDotWarps + (threadIdx.x >> 5);
  if (idx >= total) return;  // whole warps
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t per_seq = static_cast<int64_t>(a.heads) * a.q_len;
  const int64_t b = idx / per_seq, rem = idx % per_seq;
  const int64_t h = rem / a.q_len, i = rem % a.q_len;
  const int64_t row = b * a.q_len + i;
  const float* dorow = a.dout + row * a.lddo + h * a.head_dim;
  const float* orow = a.out + row * a.ldo + h * a.head_dim;
  float sum = 0.0f;
  for (int c = lane; c < a.head_dim; c += 32) sum = fmaf(dorow[c], orow[c], sum);
#pragma unroll
  for (int offset = 16; offset >= 1; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) delta[idx] = sum;
}

// dQ. Shared memory: qt, dot [HDP][16*RM+4] (Q^T, dO^T), kt [HDP][kLdTile] (K^T, then K as
// [kTile][HDP]), vt [HDP][kLdTile] (V^T), dst [kTile][16*RM+4] (dS^T).
template <int HDP, int RM>
__global__ void __launch_bounds__(kThreads, 1) attention_dq_kernel(const AttentionArgs a) {
  constexpr int kRows = 16 * RM, kLdRows = kRows + 4;
  using C = Cols<HDP>;
  AMPIPE_DYNAMIC_SHARED(float4, attention_smem);
  float* qt = reinterpret_cast<float*>(attention_smem);
  float* dot = qt + HDP * kLdRows;
  float* kt = dot + HDP * kLdRows;
  float* vt = kt + HDP * kLdTile;
  float* dst = vt + HDP * kLdTile;

  const BlockPos pos = block_pos(a.heads, a.batch, a.tiles, true);
  const int kvh = pos.h / a.group, hd = a.head_dim;
  const int tx = static_cast<int>(threadIdx.x) & 15, ty = static_cast<int>(threadIdx.x) >> 4;
  const int64_t row0 = static_cast<int64_t>(pos.tile) * kRows;
  const int rows = static_cast<int>(a.q_len - row0 < kRows ? a.q_len - row0 : kRows);
  const int64_t q_row = static_cast<int64_t>(pos.b) * a.q_len + row0;
  const int64_t stat_row = (static_cast<int64_t>(pos.b) * a.heads + pos.h) * a.q_len + row0;  // lse, delta
  const float* kp = a.k + static_cast<int64_t>(pos.b) * a.kv_len * a.ldk + kvh * hd;
  const float* vp = a.v + static_cast<int64_t>(pos.b) * a.kv_len * a.ldv + kvh * hd;

  load_transposed<kRows, HDP>(qt, a.q + q_row * a.ldq + pos.h * hd, a.ldq, rows, hd);
  load_transposed<kRows, HDP>(dot, a.dout + q_row * a.lddo + pos.h * hd, a.lddo, rows, hd);

  // Per row: the last key it sees (-1 for rows past q_len: they see nothing), lse in base 2, D.
  int64_t last_key[RM];
  float lse2[RM], delta[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty * RM + i;
    const bool valid = r < rows;
    last_key[i] = valid ? a.q_begin + row0 + r : -1;
    lse2[i] = valid ? a.lse[stat_row + r] * kLog2e : 0.0f;
    delta[i] = valid ? a.delta[stat_row + r] : 0.0f;
  }
  float acc[RM][C::kPerThread];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < C::kPerThread; ++j) acc[i][j] = 0.0f;

  const int64_t keys_end = a.q_begin + row0 + rows;
  for (int64_t kb = 0; kb < keys_end; kb += kTile) {
    const int nk = static_cast<int>(keys_end - kb < kTile ? keys_end - kb : kTile);
    __syncthreads();  // the previous tile's dS K is done with kt and dst
    load_transposed<kTile, HDP>(kt, kp + kb * a.ldk, a.ldk, nk, hd);
    load_transposed<kTile, HDP>(vt, vp + kb * a.ldv, a.ldv, nk, hd);
    __syncthreads();
    float s[RM][4], dp[RM][4];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = dp[i][j] = 0.0f;
    scores_product<HDP, RM>(s, qt, kt, ty, tx);
    scores_product<HDP, RM>(dp, dot, vt, ty, tx);
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t key = kb + tx * 4 + j;
        const float p = key <= last_key[i] ? exp2f(s[i][j] * a.scale_log2e - lse2[i]) : 0.0f;
        s[i][j] = p * (dp[i][j] - delta[i]);  // dS (without the scale)
      }
    __syncthreads();  // every thread is done with K^T in kt
    store_transposed<RM>(dst, s, ty, tx);
    load_rows<kTile, HDP>(kt, kp + kb * a.ldk, a.ldk, nk, hd);
    __syncthreads();
    values_product<HDP, RM>(acc, dst, kt, ty, tx);
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty * RM + i;
    if (r >= rows) continue;
    float* row = a.dq + (q_row + r) * a.lddq + pos.h * hd;
#pragma unroll
    for (int j = 0; j < C::kPerThread; ++j) {
      const int c = C::col(j, tx);
      if (c < hd) row[c] = acc[i][j] * a.scale;
    }
  }
}

// dK, dV. Shared memory: kt, vt [HDP][16*RM+4] (K^T, V^T of the key tile), qa, qb [HDP][kLdTile]
// (Q^T and dO^T of a query tile, then dO and Q as [kTile][HDP]), pq, dsq [kTile][16*RM+4] (P and dS
// of the tile, query-major).
template <int HDP, int RM>
__global__ void __launch_bounds__(kThreads, 1) attention_dkdv_kernel(const AttentionArgs a) {
  constexpr int kKeys = 16 * RM, kLdKeys = kKeys + 4;
  using C = Cols<HDP>;
  AMPIPE_DYNAMIC_SHARED(float4, attention_smem);
  float* kt = reinterpret_cast<float*>(attention_smem);
  float* vt = kt + HDP * kLdKeys;
  float* qa = vt + HDP * kLdKeys;
  float* qb = qa + HDP * kLdTile;
  float* pq = qb + HDP * kLdTile;
  float* dsq = pq + kTile * kLdKeys;

  // Key tile 0 sees the most queries: tiles in ascending order are heaviest first.
  const BlockPos pos = block_pos(a.kv_heads, a.batch, a.tiles, false);
  const int kvh = pos.h, hd = a.head_dim;
  const int tx = static_cast<int>(threadIdx.x) & 15, ty = static_cast<int>(threadIdx.x) >> 4;
  const int64_t kv_used = a.q_begin + a.q_len;
  const int64_t key0 = static_cast<int64_t>(pos.tile) * kKeys;
  const int nk = static_cast<int>(kv_used - key0 < kKeys ? kv_used - key0 : kKeys);
  const int64_t k_row = static_cast<int64_t>(pos.b) * a.kv_len + key0;  // its row in k, v, dk, dv

  load_transposed<kKeys, HDP>(kt, a.k + k_row * a.ldk + kvh * hd, a.ldk, nk, hd);
  load_transposed<kKeys, HDP>(vt, a.v + k_row * a.ldv + kvh * hd, a.ldv, nk, hd);

  int64_t key[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) key[i] = key0 + ty * RM + i;  // keys past kv_used are never seen
  float dk[RM][C::kPerThread], dv[RM][C::kPerThread];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < C::kPerThread; ++j) dk[i][j] = dv[i][j] = 0.0f;

  // The first query that sees key0 is at position key0, local row key0 - q_begin.
  const int64_t first_row = key0 > a.q_begin ? key0 - a.q_begin : 0;
  const int64_t first_tile_row = first_row / kTile * kTile;
  for (int hh = 0; hh < a.group; ++hh) {
    const int h = kvh * a.group + hh;
    const int64_t stat_base = (static_cast<int64_t>(pos.b) * a.heads + h) * a.q_len;
    for (int64_t row0 = first_tile_row; row0 < a.q_len; row0 += kTile) {
      const int nq = static_cast<int>(a.q_len - row0 < kTile ? a.q_len - row0 : kTile);
      const int64_t q_row = static_cast<int64_t>(pos.b) * a.q_len + row0;
      const float* qp = a.q + q_row * a.ldq + h * hd;
      const float* dop = a.dout + q_row * a.lddo + h * hd;
      __syncthreads();  // the previous tile's products are done with qa, qb, pq, dsq
      load_transposed<kTile, HDP>(qa, qp, a.ldq, nq, hd);
      load_transposed<kTile, HDP>(qb, dop, a.lddo, nq, hd);
      // Per query column: its position (-1 past q_len: sees no key), lse in base 2, D.
      int64_t qpos[4];
      float lse2[4], delta[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = tx * 4 + j;
        const bool valid = c < nq;
        qpos[j] = valid ? a.q_begin + row0 + c : -1;
        lse2[j] = valid ? a.lse[stat_base + row0 + c] * kLog2e : 0.0f;
        delta[j] = valid ? a.delta[stat_base + row0 + c] : 0.0f;
      }
      __syncthreads();
      float p[RM][4], ds[RM][4];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) p[i][j] = ds[i][j] = 0.0f;
      scores_product<HDP, RM>(p, kt, qa, ty, tx);   // S^T = K Q^T
      scores_product<HDP, RM>(ds, vt, qb, ty, tx);  // dP^T = V dO^T
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          p[i][j] = key[i] <= qpos[j] ? exp2f(p[i][j] * a.scale_log2e - lse2[j]) : 0.0f;
          ds[i][j] = p[i][j] * (ds[i][j] - delta[j]);
        }
      __syncthreads();  // every thread is done with Q^T, dO^T
      store_transposed<RM>(pq, p, ty, tx);
      store_transposed<RM>(dsq, ds, ty, tx);
      load_rows<kTile, HDP>(qa, dop, a.lddo, nq, hd);
      load_rows<kTile, HDP>(qb, qp, a.ldq, nq, hd);
      __syncthreads();
      values_product<HDP, RM>(dv, pq, qa, ty, tx);   // dV += P^T dO
      values_product<HDP, RM>(dk, dsq, qb, ty, tx);  // dK += dS^T Q (scaled at the end)
    }
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty * RM + i;
    if (r >= nk) continue;
    float* dkrow = a.dk + (k_row + r) * a.lddk + kvh * hd;
    float* dvrow = a.dv + (k_row + r) * a.lddv + kvh * hd;
#pragma unroll
    for (int j = 0; j < C::kPerThread; ++j) {
      const int c = C::col(j, tx);
      if (c < hd) {
        dkrow[c] += dk[i][j] * a.scale;
        dvrow[c] += dv[i][j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host code

using kernels::detail::AttentionDims;

// The head dim rounded up to a kernel instantiation: 16, 32, 64, 128 or 256.
int padded_head_dim(int64_t hd) {
  AMPIPE_CHECK(hd >= 1 && hd <= kMaxHeadDim)
      << "attention (CUDA): head dim " << hd << " (hidden size / num_heads) is not supported; the CUDA "
      << "kernels take head dims 1 to " << kMaxHeadDim;
  int padded = 16;
  while (padded < hd) padded *= 2;
  return padded;
}

// Rows per thread of the backward kernels: 4 (tiles of 64), 2 for head dim 256 (tiles of 32), so
// that the shared memory fits the 227 KiB a block may use.
constexpr int backward_rows_per_thread(int hdp) { return hdp > 128 ? 2 : 4; }

constexpr size_t forward_smem_bytes(int hdp) {
  return sizeof(float) * static_cast<size_t>(2 * hdp * kLdTile + kTile * kLdTile);
}
constexpr size_t dq_smem_bytes(int hdp, int rm) {
  return sizeof(float) * static_cast<size_t>(2 * hdp * (16 * rm + 4) + 2 * hdp * kLdTile + kTile * (16 * rm + 4));
}
constexpr size_t dkdv_smem_bytes(int hdp, int rm) {
  return sizeof(float) *
         static_cast<size_t>(2 * hdp * (16 * rm + 4) + 2 * hdp * kLdTile + 2 * kTile * (16 * rm + 4));
}
static_assert(dkdv_smem_bytes(256, backward_rows_per_thread(256)) <= 232448, "dK/dV tile fits sm_90");
static_assert(dq_smem_bytes(256, backward_rows_per_thread(256)) <= 232448, "dQ tile fits sm_90");
static_assert(forward_smem_bytes(256) <= 232448, "forward tile fits sm_90");

// Allows `kernel` `bytes` of dynamic shared memory (above the default 48 KiB), or says why not.
template <class Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, int64_t hd) {
  int device = 0, limit = 0;
  AMPIPE_CUDA_CHECK(cudaGetDevice(&device));
  AMPIPE_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  AMPIPE_CHECK(bytes <= static_cast<size_t>(limit))
      << "attention (CUDA): head dim " << hd << " needs " << bytes
      << " bytes of shared memory per block; this device allows " << limit;
  AMPIPE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Blocks for `tiles` tiles of every (sequence, head); checked against the grid limit.
unsigned grid_blocks(int64_t tiles, int64_t heads, int64_t batch) {
  const int64_t blocks = tiles * heads * batch;
  AMPIPE_CHECK(blocks <= 2147483647)
      << "attention (CUDA): " << blocks << " blocks (" << tiles << " tiles x " << heads << " heads x "
      << batch << " sequences) exceed the grid limit 2^31 - 1";
  return static_cast<unsigned>(blocks);
}

AttentionArgs make_args(const AttentionDims& dims, const Tensor& q, const Tensor& k, const Tensor& v) {
  AttentionArgs a{};
  a.q = q.device_data<float>();
  a.k = k.device_data<float>();
  a.v = v.device_data<float>();
  a.ldq = q.stride(0);
  a.ldk = k.stride(0);
  a.ldv = v.stride(0);
  a.q_begin = dims.q_begin;
  a.q_len = dims.q_len;
  a.kv_len = dims.kv_len;
  a.batch = static_cast<int>(dims.batch);
  a.heads = static_cast<int>(dims.heads);
  a.kv_heads = static_cast<int>(dims.kv_heads);
  a.group = static_cast<int>(dims.group());
  a.head_dim = static_cast<int>(dims.head_dim);
  a.scale = 1.0f / std::sqrt(static_cast<float>(dims.head_dim));
  a.scale_log2e = a.scale * kLog2e;
  return a;
}

template <int HDP>
void launch_forward(AttentionArgs a, const AttentionDims& dims) {
  constexpr int kRows = 16 * 4;
  a.tiles = static_cast<int>((dims.q_len + kRows - 1) / kRows);
  const unsigned blocks = grid_blocks(a.tiles, dims.heads, dims.batch);
  const size_t smem = forward_smem_bytes(HDP);
  allow_shared_memory(attention_forward_kernel<HDP>, smem, dims.head_dim);
  launch("attention_forward_kernel", attention_forward_kernel<HDP>, blocks, kThreads, smem, stream(), a);
}

template <int HDP>
void launch_backward(AttentionArgs a, const AttentionDims& dims) {
  constexpr int RM = backward_rows_per_thread(HDP), kRows = 16 * RM;
  a.tiles = static_cast<int>((dims.q_len + kRows - 1) / kRows);
  const unsigned dq_blocks = grid_blocks(a.tiles, dims.heads, dims.batch);
  const size_t dq_smem = dq_smem_bytes(HDP, RM);
  allow_shared_memory(attention_dq_kernel<HDP, RM>, dq_smem, dims.head_dim);
  launch("attention_dq_kernel", attention_dq_kernel<HDP, RM>, dq_blocks, kThreads, dq_smem, stream(), a);

  a.tiles = static_cast<int>((dims.kv_used() + kRows - 1) / kRows);
  const unsigned dkdv_blocks = grid_blocks(a.tiles, dims.kv_heads, dims.batch);
  const size_t dkdv_smem = dkdv_smem_bytes(HDP, RM);
  allow_shared_memory(attention_dkdv_kernel<HDP, RM>, dkdv_smem, dims.head_dim);
  launch("attention_dkdv_kernel", attention_dkdv_kernel<HDP, RM>, dkdv_blocks, kThreads, dkdv_smem, stream(), a);
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& shape,
                       Tensor out, Tensor lse) {
  const AttentionDims dims = kernels::detail::check_attention_forward(q, k, v, shape, out, lse);
  const int hdp = padded_head_dim(dims.head_dim);
  if (dims.batch == 0 || dims.q_len == 0) return;
  AttentionArgs a = make_args(dims, q, k, v);
  a.out_w = out.device_data<float>();
  a.ldo = out.stride(0);
  a.lse_w = lse.device_data<float>();
  switch (hdp) {
    case 16: return launch_forward<16>(a, dims);
    case 32: return launch_forward<32>(a, dims);
    case 64: return launch_forward<64>(a, dims);
    case 128: return launch_forward<128>(a, dims);
    default: return launch_forward<256>(a, dims);
  }
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionShape& shape, Tensor dq,
                        Tensor dk, Tensor dv) {
  const AttentionDims dims =
      kernels::detail::check_attention_backward(q, k, v, out, lse, dout, shape, dq, dk, dv);
  const int hdp = padded_head_dim(dims.head_dim);
  if (dims.batch == 0 || dims.q_len == 0) return;
  AttentionArgs a = make_args(dims, q, k, v);
  a.out = out.device_data<float>();
  a.ldo = out.stride(0);
  a.dout = dout.device_data<float>();
  a.lddo = dout.stride(0);
  a.lse = lse.device_data<float>();
  a.dq = dq.device_data<float>();
  a.lddq = dq.stride(0);
  a.dk = dk.device_data<float>();
  a.lddk = dk.stride(0);
  a.dv = dv.device_data<float>();
  a.lddv = dv.stride(0);

  // D = rowsum(dO * O), shared by the dQ and the dK/dV kernels.
  Tensor delta = Tensor::empty({dims.batch, dims.heads, dims.q_len}, DType::F32, Device::CUDA);
  a.delta = delta.device_data<float>();
  const int64_t delta_rows = dims.batch * dims.heads * dims.q_len;
  launch("attention_delta_kernel", attention_delta_kernel, blocks_for(delta_rows, kDotWarps), kDotWarps * 32, 0,
      stream(), a, delta.device_data<float>());

  switch (hdp) {
    case 16: return launch_backward<16>(a, dims);
    case 32: return launch_backward<32>(a, dims);
    case 64: return launch_backward<64>(a, dims);
    case 128: return launch_backward<128>(a, dims);
    default: return launch_backward<256>(a, dims);
  }
}

}  // namespace ampipe::kernels::gpu
