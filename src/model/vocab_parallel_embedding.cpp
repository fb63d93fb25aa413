#include "model/vocab_parallel_embedding.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "model/sequence_parallel.h"

namespace ampipe {
namespace {

void check_float(const Tensor& t, const char* name, const char* op) {
  AMPIPE_CHECK(t.defined() && t.dtype() == DType::F32 && t.device() == Device::CPU && t.ndim() == 2 &&
               t.stride(1) == 1)
      << op << ": " << name << " must be a float32 CPU matrix with contiguous rows";
}

// Checks every id against [0, vocab_size) (on every rank, as each sees all ids).
const int32_t* check_tokens(const Tensor& tokens, int64_t rows, int64_t vocab_size, const char* op) {
  AMPIPE_CHECK(tokens.defined() && tokens.dtype() == DType::I32 && tokens.device() == Device::CPU &&
               tokens.ndim() == 1 && tokens.dim(0) == rows && tokens.is_contiguous())
      << op << ": tokens must be " << rows << " contiguous int32 ids on the CPU";
  const int32_t* ids = tokens.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    AMPIPE_CHECK(ids[r] >= 0 && ids[r] < vocab_size)
        << op << ": token id " << ids[r] << " at row " << r << " is outside the vocabulary [0, " << vocab_size
        << ")";
  return ids;
}

}  // namespace

void vocab_parallel_embedding_forward(const Tensor& tokens, const Tensor& table_shard, int64_t shard_begin,
                                      int64_t vocab_size, const Tensor& position_table, int64_t seq_len,
                                      Communicator& group, Tensor x, bool sequence_parallel) {
  const char* op = "vocab_parallel_embedding_forward";
  check_float(table_shard, "the table shard", op);
  check_float(x, "x", op);
  const int64_t T = sequence_parallel ? group.size() : 1;
  AMPIPE_CHECK(x.is_contiguous() && x.dim(1) == table_shard.dim(1) && x.dim(0) * T == tokens.numel())
      << op << ": x must be contiguous [" << tokens.numel() / T << ", " << table_shard.dim(1) << "]"
      << (sequence_parallel ? " (this rank's rows under sequence parallelism)" : "");
  const int64_t rows = tokens.numel(), d = x.dim(1), shard = table_shard.dim(0);
  AMPIPE_CHECK(shard_begin >= 0 && shard_begin + shard <= vocab_size)
      << op << ": the shard [" << shard_begin << ", " << shard_begin + shard
      << ") is outside the vocabulary [0, " << vocab_size << ")";
  AMPIPE_CHECK(seq_len >= 1 && rows % seq_len == 0)
      << op << ": " << rows << " rows are not whole sequences of " << seq_len;
  if (position_table.defined()) {
    check_float(position_table, "the position table", op);
    AMPIPE_CHECK(position_table.dim(0) >= seq_len && position_table.dim(1) == d)
        << op << ": the position table must be [>= " << seq_len << ", " << d << "]";
  }
  const int32_t* ids = check_tokens(tokens, rows, vocab_size, op);
  const Tensor whole = sequence_parallel ? Tensor::empty({rows, d}) : x;  // this rank's part of every row
  float* xp = whole.data<float>();
  const float* tab = table_shard.data<float>();
  const int64_t ts = table_shard.stride(0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t local = ids[r] - shard_begin;
    float* out = xp + r * d;
    if (local >= 0 && local < shard) {
      std::memcpy(out, tab + local * ts, static_cast<size_t>(d) * sizeof(float));
    } else {
      std::fill(out, out + d, 0.0f);
    }
  }
  if (sequence_parallel) {
    sequence_reduce_scatter(group, whole, x);  // this rank's rows of the sum
  } else {
    group.all_reduce_sum(x);
  }
  if (!position_table.defined()) return;
  const float* pos = position_table.data<float>();
  const int64_t ps = position_table.stride(0);
  xp = x.data<float>();
  const int64_t rank = sequence_parallel ? group.rank() : 0;
  for (int64_t r = 0; r < x.dim(0); ++r) {
    const float* b = pos + ((r * T + rank) % seq_len) * ps;  // the whole row r T + rank's position
    float* out = xp + r * d;
    for (int64_t j = 0; j < d; ++j) out[j] += b[j];
  }
}

void vocab_parallel_embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len,
                                       int64_t shard_begin, Tensor dtable_shard, Tensor dposition_table) {
  const char* op = "vocab_parallel_embedding_backward";
  check_float(dx, "dx", op);
  check_float(dtable_shard, "the table shard's gradient", op);
  const int64_t rows = dx.dim(0), d = dx.dim(1), shard = dtable_shard.dim(0);
  AMPIPE_CHECK(dtable_shard.dim(1) == d)
      << op << ": the table shard's gradient must be [" << shard << ", " << d << "]";
  AMPIPE_CHECK(seq_len >= 1 && rows % seq_len == 0)
      << op << ": " << rows << " rows are not whole sequences of " << seq_len;
  AMPIPE_CHECK(shard_begin >= 0) << op << ": shard_begin " << shard_begin << " is negative";
  const int32_t* ids = check_tokens(tokens, rows, INT32_MAX, op);
  const float* g = dx.data<float>();
  const int64_t gs = dx.stride(0);
  float* dt = dtable_shard.data<float>();
  const int64_t ts = dtable_shard.stride(0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t local = ids[r] - shard_begin;
    if (local < 0 || local >= shard) continue;
    float* out = dt + local * ts;
    const float* src = g + r * gs;
    for (int64_t j = 0; j < d; ++j) out[j] += src[j];
  }
  if (!dposition_table.defined()) return;
  check_float(dposition_table, "the position table's gradient", op);
  AMPIPE_CHECK(dposition_table.dim(0) >= seq_len && dposition_table.dim(1) == d)
      << op << ": the position table's gradient must be [>= " << seq_len << ", " << d << "]";
  float* dp = dposition_table.data<float>();
  const int64_t ps = dposition_table.stride(0);
  for (int64_t i = 0; i < seq_len; ++i) {
    float* out = dp + i * ps;
    for (int64_t r = i; r < rows; r += seq_len) {
      const float* src = g + r * gs;
      for (int64_t j = 0; j < d; ++j) out[j] += src[j];
    }
  }
}

}  // namespace ampipe
