// Causal attention on the CPU: FlashAttention-2 style tiles with an online softmax.
//
// Forward: for each (sequence, head, query tile) the key tiles are swept left to right; a tile's
// scores S = Q K^T come from one small sgemm, the running row max / row sum are updated and the
// output accumulator is rescaled, then O += P V (second sgemm). Scores are kept in base 2
// (the sgemm's alpha is scale * log2(e)), so the softmax needs only exp2.
// Backward: per (sequence, KV head), the query heads of its group in order, each with key tiles
// outside and query tiles inside; P is recomputed from the saved log-sum-exp, and dV, dK accumulate
// straight into the caller's tensors.
//
// Grouped-query attention: query head j reads KV head j / (h / g). K is packed once per
// (sequence, KV head) and shared by the group's query heads; a backward task owns one
// (sequence, KV head), so it alone writes those dk / dv columns, summing its query heads in order.
//
// Only tiles that cross the causal diagonal are masked; tiles wholly above it are never computed,
// and diagonal tiles are cut into row blocks whose key range stops at the block's last query, so
// little of the masked triangle is computed. Scratch is per task and O(tile), never O(N^2).
// Every task owns disjoint output elements and sums in a fixed order, so results do not depend on
// the thread count or the partition.
#include "kernels/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>

#include "core/parallel.h"
#include "kernels/attention_checks.h"
#include "kernels/cpu/fast_math.h"

namespace ampipe::kernels::cpu {
namespace {

using fast_math::kLn2;
using fast_math::kLog2e;

// Tile sizes (rows of queries x rows of keys per sgemm). Chosen by bench/bench_attention on the
// reference machine: big enough for the sgemms to run near their peak, small enough that S, P and
// the Q/K/V tiles stay in L2.
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 128;
// Rows per block where a query tile crosses the causal diagonal (smaller blocks compute less of
// the masked triangle).
constexpr int64_t kDiagonalRows = 16;
// Backward: query rows per block of the outer loop (a multiple of kQueryTile).
constexpr int64_t kBackwardQueryBlock = 512;

// ---------------------------------------------------------------------------------------------
// Scratch

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

// Uninitialised 64-byte aligned floats.
std::unique_ptr<float[], FreeDeleter> aligned_floats(int64_t count) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  AMPIPE_CHECK(p != nullptr) << "attention: out of memory allocating " << bytes << " bytes of scratch";
  return std::unique_ptr<float[], FreeDeleter>(p);
}

// Row-major sgemm on raw pointers: c = alpha * op(a) @ op(b) + beta * c, op(a) [m, k], op(b) [k, n].
inline void sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// ---------------------------------------------------------------------------------------------
// Row kernels (AVX2 with a scalar fallback). Each sums in a fixed order.

#if AMPIPE_HAVE_AVX2_FMA
// Lanes [0, count) set, for 0 <= count <= 8.
inline __m256i lane_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float horizontal_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// max of x[0..n), n >= 1.
inline float row_max(const float* x, int64_t n) {
#if AMPIPE_HAVE_AVX2_FMA
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
    m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
    m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
  if (i < n) {
    const __m256i mask = lane_mask(n - i);
    const __m256 tail = _mm256_maskload_ps(x + i, mask);
    m1 = _mm256_max_ps(m1, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), tail, _mm256_castsi256_ps(mask)));
  }
  return horizontal_max(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
#else
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  return m;
#endif
}

// x[i] = 2^(x[i] - shift) for i < n; returns the sum of the new values.
inline float exp2_shift_sum(float* x, int64_t n, float shift) {
#if AMPIPE_HAVE_AVX2_FMA
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = fast_math::fast_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    const __m256 e1 = fast_math::fast_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
    _mm256_storeu_ps(x + i, e0);
    _mm256_storeu_ps(x + i + 8, e1);
    acc0 = _mm256_add_ps(acc0, e0);
    acc1 = _mm256_add_ps(acc1, e1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 e = fast_math::fast_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc0 = _mm256_add_ps(acc0, e);
  }
  if (i < n) {
    const __m256i mask = lane_mask(n - i);
    const __m256 e =
        _mm256_and_ps(fast_math::fast_exp2_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), s)),
                      _mm256_castsi256_ps(mask));
    _mm256_maskstore_ps(x + i, mask, e);
    acc1 = _mm256_add_ps(acc1, e);
  }
  return horizontal_sum(_mm256_add_ps(acc0, acc1));
#else
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = fast_math::fast_exp2(x[i] - shift);
    sum += x[i];
  }
  return sum;
#endif
}

// x[i] = 2^(x[i] - shift) for i < n.
inline void exp2_shift(float* x, int64_t n, float shift) {
#if AMPIPE_HAVE_AVX2_FMA
  const __m256 s = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, fast_math::fast_exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
  if (i < n) {
    const __m256i mask = lane_mask(n - i);
    _mm256_maskstore_ps(x + i, mask,
                        fast_math::fast_exp2_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), s)));
  }
#else
  for (int64_t i = 0; i < n; ++i) x[i] = fast_math::fast_exp2(x[i] - shift);
#endif
}

// dp[i] = p[i] * (dp[i] - d) for i < n: the softmax backward for one row.
inline void softmax_backward_row(const float* p, float* dp, int64_t n, float d) {
#if AMPIPE_HAVE_AVX2_FMA
  const __m256 dv = _mm256_set1_ps(d);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dp + i,
                     _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_sub_ps(_mm256_loadu_ps(dp + i), dv)));
  for (; i < n; ++i) dp[i] = p[i] * (dp[i] - d);
#else
  for (int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - d);
#endif
}

inline void scale_row(float* x, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

inline float dot(const float* a, const float* b, int64_t n) {
#if AMPIPE_HAVE_AVX2_FMA
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float sum = horizontal_sum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
#else
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
#endif
}

#if AMPIPE_HAVE_AVX2_FMA
// dst[c * ld_dst + j] = src[j * ld_src + c] for an 8 x 8 block.
inline void transpose_8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// Key-major rows -> feature-major tiles: for key j in tile t = j / kKeyTile and feature c < cols,
// dst[t * cols * kKeyTile + c * kKeyTile + j % kKeyTile] = src[j * ld_src + c]. With K (or V) packed
// this way, S = Q K^T is a plain (not transposed) sgemm on one contiguous block per key tile,
// which OpenBLAS runs through its small-matrix path without packing.
void pack_key_tiles(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst) {
  for (int64_t tile_begin = 0; tile_begin < rows; tile_begin += kKeyTile) {
    float* tile = dst + tile_begin * cols;
    const int64_t tile_rows = std::min(kKeyTile, rows - tile_begin);
    const float* tile_src = src + tile_begin * ld_src;
    int64_t j0 = 0;
#if AMPIPE_HAVE_AVX2_FMA
    for (; j0 + 8 <= tile_rows; j0 += 8) {
      int64_t c = 0;
      for (; c + 8 <= cols; c += 8)
        transpose_8x8(tile_src + j0 * ld_src + c, ld_src, tile + c * kKeyTile + j0, kKeyTile);
      for (; c < cols; ++c)
        for (int64_t j = j0; j < j0 + 8; ++j) tile[c * kKeyTile + j] = tile_src[j * ld_src + c];
    }
#endif
    for (; j0 < tile_rows; j0 += 16) {
      const int64_t j1 = std::min<int64_t>(j0 + 16, tile_rows);
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t j = j0; j < j1; ++j) tile[c * kKeyTile + j] = tile_src[j * ld_src + c];
    }
  }
}

// Floats pack_key_tiles writes for `rows` keys.
int64_t packed_key_tiles_size(int64_t rows, int64_t cols) {
  return (rows + kKeyTile - 1) / kKeyTile * kKeyTile * cols;
}

// ---------------------------------------------------------------------------------------------
// Shapes

using Dims = kernels::detail::AttentionDims;

// One head of one sequence: pointers to its first row and column, and row strides. `h` indexes the
// heads of that tensor (query heads for q, out, dq; KV heads for k, v, dk, dv).
struct HeadRows {
  const float* data;
  int64_t ld;
  const float* row(int64_t i) const { return data + i * ld; }
};
struct MutableHeadRows {
  float* data;
  int64_t ld;
  float* row(int64_t i) const { return data + i * ld; }
};

HeadRows head_rows(const Tensor& t, int64_t rows_per_seq, const Dims& dims, int64_t b, int64_t h) {
  return {t.data<float>() + b * rows_per_seq * t.stride(0) + h * dims.head_dim, t.stride(0)};
}
MutableHeadRows mutable_head_rows(const Tensor& t, int64_t rows_per_seq, const Dims& dims, int64_t b,
                                  int64_t h) {
  return {t.data<float>() + b * rows_per_seq * t.stride(0) + h * dims.head_dim, t.stride(0)};
}

// ---------------------------------------------------------------------------------------------
// Forward

struct ForwardScratch {
  std::unique_ptr<float[], FreeDeleter> scores;  // [kQueryTile, kKeyTile]: S, then P
  std::unique_ptr<float[], FreeDeleter> acc;     // [kQueryTile, head_dim]: unnormalised output
  float row_max[kQueryTile];                     // running max of the base-2 scores
  float row_sum[kQueryTile];                     // running sum of 2^(s - row_max)
};

struct ForwardHead {
  HeadRows q, v;
  const float* key_tiles;  // K packed by pack_key_tiles
  MutableHeadRows out;
  float* lse;  // [q_len] for this (sequence, head)
};

// Folds keys [key_begin, key_end) into query rows [r0, r1) of the tile whose row 0 is query
// position tile_pos. `masked`: some keys lie after some queries (key j is seen by position p iff
// j <= p).
void forward_block(const ForwardHead& head, const Dims& dims, ForwardScratch& scratch, int64_t tile_row,
                   int64_t tile_pos, int64_t r0, int64_t r1, int64_t key_begin, int64_t key_end,
                   bool masked) {
  const int64_t rows = r1 - r0, keys = key_end - key_begin, hd = dims.head_dim;
  float* s = scratch.scores.get();
  float* acc = scratch.acc.get();
  const float score_scale = kLog2e / std::sqrt(static_cast<float>(hd));
  sgemm(false, false, rows, keys, hd, score_scale, head.q.row(tile_row + r0), head.q.ld,
        head.key_tiles + key_begin * hd, kKeyTile, 0.0f, s, kKeyTile);
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = s + r * kKeyTile;
    int64_t valid = keys;
    if (masked) valid = std::clamp<int64_t>(tile_pos + r0 + r - key_begin + 1, 0, keys);
    std::fill(srow + valid, srow + keys, 0.0f);
    if (valid == 0) continue;
    const int64_t tr = r0 + r;
    const float old_max = scratch.row_max[tr];
    const float new_max = std::max(old_max, row_max(srow, valid));
    const float rescale = fast_math::fast_exp2(old_max - new_max);  // 0 when old_max is -inf
    const float sum = exp2_shift_sum(srow, valid, new_max);
    scratch.row_max[tr] = new_max;
    scratch.row_sum[tr] = scratch.row_sum[tr] * rescale + sum;
    if (rescale != 1.0f) scale_row(acc + tr * hd, hd, rescale);
  }
  sgemm(false, false, rows, hd, keys, 1.0f, s, kKeyTile, head.v.row(key_begin), head.v.ld, 1.0f,
        acc + r0 * hd, hd);
}

// Query rows [row_begin, row_end) of one (sequence, head).
void forward_query_tile(const ForwardHead& head, const Dims& dims, ForwardScratch& scratch, int64_t row_begin,
                        int64_t row_end) {
  const int64_t rows = row_end - row_begin, hd = dims.head_dim;
  const int64_t tile_pos = dims.q_begin + row_begin;  // position of the tile's first query
  const int64_t keys_end = tile_pos + rows;           // the last query sees keys < keys_end
  std::fill(scratch.row_max, scratch.row_max + rows, -INFINITY);
  std::fill(scratch.row_sum, scratch.row_sum + rows, 0.0f);
  std::fill(scratch.acc.get(), scratch.acc.get() + rows * hd, 0.0f);
  for (int64_t key_begin = 0; key_begin < keys_end; key_begin += kKeyTile) {
    const int64_t key_end = std::min(key_begin + kKeyTile, keys_end);
    if (key_end - 1 <= tile_pos) {  // every query of the tile sees every key
      forward_block(head, dims, scratch, row_begin, tile_pos, 0, rows, key_begin, key_end, false);
      continue;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += kDiagonalRows) {
      const int64_t r1 = std::min(r0 + kDiagonalRows, rows);
      const int64_t block_key_end = std::min(key_end, tile_pos + r1);
      if (block_key_end <= key_begin) continue;
      forward_block(head, dims, scratch, row_begin, tile_pos, r0, r1, key_begin, block_key_end, true);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float sum = scratch.row_sum[r];
    const float inv = 1.0f / sum;
    const float* a = scratch.acc.get() + r * hd;
    float* o = head.out.row(row_begin + r);
    for (int64_t c = 0; c < hd; ++c) o[c] = a[c] * inv;
    head.lse[row_begin + r] = (scratch.row_max[r] + std::log2(sum)) * kLn2;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

struct BackwardHead {
  HeadRows q, k, out, dout;
  MutableHeadRows dq, dk, dv;
  const float* lse;  // [q_len]
};

struct BackwardScratch {
  std::unique_ptr<float[], FreeDeleter> probs;        // [kQueryTile, kKeyTile]: P
  std::unique_ptr<float[], FreeDeleter> grad;         // [kQueryTile, kKeyTile]: dP, then dS
  std::unique_ptr<float[], FreeDeleter> lse2;         // [q_len]: lse in base 2
  std::unique_ptr<float[], FreeDeleter> dout_dot_o;   // [q_len]: D_i = dO_i . O_i
  std::unique_ptr<float[], FreeDeleter> key_tiles;    // K of this head, packed by pack_key_tiles
  std::unique_ptr<float[], FreeDeleter> value_tiles;  // V of this head, packed likewise
};

// Query rows [i0, i1) against keys [key_begin, key_end).
void backward_block(const BackwardHead& head, const Dims& dims, BackwardScratch& scratch, int64_t i0,
                    int64_t i1, int64_t key_begin, int64_t key_end, bool masked) {
  const int64_t rows = i1 - i0, keys = key_end - key_begin, hd = dims.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* p = scratch.probs.get();
  float* g = scratch.grad.get();
  sgemm(false, false, rows, keys, hd, scale * kLog2e, head.q.row(i0), head.q.ld,
        scratch.key_tiles.get() + key_begin * hd, kKeyTile, 0.0f, p, kKeyTile);
  for (int64_t r = 0; r < rows; ++r) {
    float* prow = p + r * kKeyTile;
    int64_t valid = keys;
    if (masked) valid = std::clamp<int64_t>(dims.q_begin + i0 + r - key_begin + 1, 0, keys);
    exp2_shift(prow, valid, scratch.lse2[i0 + r]);
    std::fill(prow + valid, prow + keys, 0.0f);
  }
  // dV += P^T dO
  sgemm(true, false, keys, hd, rows, 1.0f, p, kKeyTile, head.dout.row(i0), head.dout.ld, 1.0f,
        head.dv.row(key_begin), head.dv.ld);
  // dP = dO V^T, then dS = P * (dP - D) in place
  sgemm(false, false, rows, keys, hd, 1.0f, head.dout.row(i0), head.dout.ld,
        scratch.value_tiles.get() + key_begin * hd, kKeyTile, 0.0f, g, kKeyTile);
  for (int64_t r = 0; r < rows; ++r)
    softmax_backward_row(p + r * kKeyTile, g + r * kKeyTile, keys, scratch.dout_dot_o[i0 + r]);
  // dQ += scale * dS K, dK += scale * dS^T Q
  sgemm(false, false, rows, hd, keys, scale, g, kKeyTile, head.k.row(key_begin), head.k.ld, 1.0f,
        head.dq.row(i0), head.dq.ld);
  sgemm(true, false, keys, hd, rows, scale, g, kKeyTile, head.q.row(i0), head.q.ld, 1.0f,
        head.dk.row(key_begin), head.dk.ld);
}

void backward_head(const BackwardHead& head, const Dims& dims, BackwardScratch& scratch) {
  const int64_t hd = dims.head_dim;
  for (int64_t i = 0; i < dims.q_len; ++i) {
    std::fill(head.dq.row(i), head.dq.row(i) + hd, 0.0f);
    scratch.lse2[i] = head.lse[i] * kLog2e;
    scratch.dout_dot_o[i] = dot(head.dout.row(i), head.out.row(i), hd);
  }
  // Query blocks outermost: a key tile's pass streams the block's rows of Q, dO and dQ, which stay
  // in the core's cache, instead of every query of the call (a whole long sequence ran ~10% slower
  // than the same queries cut into chunks of 1-2K before this blocking).
  for (int64_t qb = 0; qb < dims.q_len; qb += kBackwardQueryBlock) {
    const int64_t qe = std::min(qb + kBackwardQueryBlock, dims.q_len);
    const int64_t keys_seen = dims.q_begin + qe;  // the block's last query sees keys [0, keys_seen)
    for (int64_t key_begin = 0; key_begin < keys_seen; key_begin += kKeyTile) {
      const int64_t key_end = std::min(key_begin + kKeyTile, keys_seen);
      // Queries at positions >= key_begin see this tile; row blocks start there, so the first
      // blocks cover the diagonal. Those are short and their key range is cut at their last query.
      for (int64_t i0 = std::max<int64_t>(qb, key_begin - dims.q_begin); i0 < qe;) {
        const bool diagonal = dims.q_begin + i0 < key_end - 1;
        const int64_t i1 = std::min(i0 + (diagonal ? kDiagonalRows : kQueryTile), qe);
        const int64_t block_key_end = std::min(key_end, dims.q_begin + i1);
        const bool masked = block_key_end - 1 > dims.q_begin + i0;
        backward_block(head, dims, scratch, i0, i1, key_begin, block_key_end, masked);
        i0 = i1;
      }
    }
  }
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& shape,
                       Tensor out, Tensor lse) {
  const Dims dims = kernels::detail::check_attention_forward(q, k, v, shape, out, lse);
  if (dims.batch == 0 || dims.q_len == 0) return;

  // K of every (sequence, KV head), packed once for all the query tiles of all the query heads that
  // read it: O(tokens * g * hd).
  const int64_t keys = dims.kv_used(), packed_size = packed_key_tiles_size(keys, dims.head_dim);
  const auto key_tiles = aligned_floats(dims.batch * dims.kv_heads * packed_size);
  parallel_for(dims.batch * dims.kv_heads, 1, [&](int64_t task_begin, int64_t task_end) {
    for (int64_t bg = task_begin; bg < task_end; ++bg) {
      const HeadRows k_head = head_rows(k, dims.kv_len, dims, bg / dims.kv_heads, bg % dims.kv_heads);
      pack_key_tiles(k_head.data, k_head.ld, keys, dims.head_dim, key_tiles.get() + bg * packed_size);
    }
  });

  // Tasks pair query tile t with tile (tiles - 1 - t): causal cost grows with the tile index, so
  // every pair costs about the same and the static partition stays balanced.
  const int64_t tiles = (dims.q_len + kQueryTile - 1) / kQueryTile;
  const int64_t pairs = (tiles + 1) / 2;
  parallel_for(dims.batch * dims.heads * pairs, 1, [&](int64_t task_begin, int64_t task_end) {
    ForwardScratch scratch{
        aligned_floats(kQueryTile * kKeyTile), aligned_floats(kQueryTile * dims.head_dim), {}, {}};
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t pair = task % pairs;
      const int64_t bh = task / pairs;
      const int64_t b = bh / dims.heads, h = bh % dims.heads, kv = h / dims.group();
      const ForwardHead head{head_rows(q, dims.q_len, dims, b, h), head_rows(v, dims.kv_len, dims, b, kv),
                             key_tiles.get() + (b * dims.kv_heads + kv) * packed_size,
                             mutable_head_rows(out, dims.q_len, dims, b, h),
                             lse.data<float>() + bh * dims.q_len};
      for (const int64_t tile : {pair, tiles - 1 - pair}) {
        const int64_t row_begin = tile * kQueryTile;
        forward_query_tile(head, dims, scratch, row_begin, std::min(row_begin + kQueryTile, dims.q_len));
        if (tile == tiles - 1 - pair) break;  // odd tile count: the middle tile pairs with itself
      }
    }
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionShape& shape, Tensor dq,
                        Tensor dk, Tensor dv) {
  const Dims dims =
      kernels::detail::check_attention_backward(q, k, v, out, lse, dout, shape, dq, dk, dv);
  if (dims.batch == 0 || dims.q_len == 0) return;

  // One task per (sequence, KV head): it owns that KV head's columns of dk and dv and the columns of
  // dq of its group's query heads, which it runs in order (a fixed summation order for dk, dv).
  parallel_for(dims.batch * dims.kv_heads, 1, [&](int64_t task_begin, int64_t task_end) {
    const int64_t keys = dims.kv_used(), packed_size = packed_key_tiles_size(keys, dims.head_dim);
    BackwardScratch scratch{aligned_floats(kQueryTile * kKeyTile),
                            aligned_floats(kQueryTile * kKeyTile),
                            aligned_floats(dims.q_len),
                            aligned_floats(dims.q_len),
                            aligned_floats(packed_size),
                            aligned_floats(packed_size)};
    for (int64_t bg = task_begin; bg < task_end; ++bg) {
      const int64_t b = bg / dims.kv_heads, kv = bg % dims.kv_heads;
      const HeadRows k_head = head_rows(k, dims.kv_len, dims, b, kv);
      const HeadRows v_head = head_rows(v, dims.kv_len, dims, b, kv);
      pack_key_tiles(k_head.data, k_head.ld, keys, dims.head_dim, scratch.key_tiles.get());
      pack_key_tiles(v_head.data, v_head.ld, keys, dims.head_dim, scratch.value_tiles.get());
      const MutableHeadRows dk_head = mutable_head_rows(dk, dims.kv_len, dims, b, kv);
      const MutableHeadRows dv_head = mutable_head_rows(dv, dims.kv_len, dims, b, kv);
      for (int64_t h = kv * dims.group(); h < (kv + 1) * dims.group(); ++h) {
        const BackwardHead head{head_rows(q, dims.q_len, dims, b, h),
                                k_head,
                                head_rows(out, dims.q_len, dims, b, h),
                                head_rows(dout, dims.q_len, dims, b, h),
                                mutable_head_rows(dq, dims.q_len, dims, b, h),
                                dk_head,
                                dv_head,
                                lse.data<float>() + (b * dims.heads + h) * dims.q_len};
        backward_head(head, dims, scratch);
      }
    }
  });
}

}  // namespace ampipe::kernels::cpu
