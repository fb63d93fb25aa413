// The vocabulary-parallel cross-entropy (model/vocab_parallel.h): three all_gathers of per-row
// values, each reduced by every rank in rank order, around local passes over the logits shard.
#include "model/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "core/parallel.h"

namespace ampipe {
namespace {

constexpr const char* kForward = "vocab_parallel_cross_entropy_forward";
constexpr const char* kBackward = "vocab_parallel_cross_entropy_backward";
// Target ids are int32, so the vocabulary has at most 2^31 ids.
constexpr int64_t kMaxVocab = int64_t{1} << 31;

// Rows per parallel part: at least ~16k elements each, as the CPU kernels split (kernels/cpu).
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

// Every rank's `values` (the same count on every rank), rank-major. The bytes travel as int32
// elements: moved, never summed, so floats and doubles arrive bit for bit.
template <class T>
std::vector<T> all_gather_values(Communicator& group, const std::vector<T>& values) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) % sizeof(int32_t) == 0);
  const size_t bytes = values.size() * sizeof(T);
  const auto words = static_cast<int64_t>(bytes / sizeof(int32_t));
  Tensor send = Tensor::empty({words}, DType::I32);
  Tensor recv = Tensor::empty({words * group.size()}, DType::I32);
  std::memcpy(send.data<int32_t>(), values.data(), bytes);
  group.all_gather(send, recv);
  std::vector<T> out(values.size() * static_cast<size_t>(group.size()));
  std::memcpy(out.data(), recv.data<int32_t>(), bytes * static_cast<size_t>(group.size()));
  return out;
}

// What rank r tells the others before any per-row data moves (collective 1 in the header).
struct ShardHeader {
  int64_t arguments_ok;  // 1 when this rank's own arguments passed check_local_arguments
  int64_t vocab_size;
  int64_t shard_begin;
  int64_t shard_size;
  int64_t rows;
  uint64_t targets_hash;  // FNV-1a over the target ids
};

uint64_t hash_targets(const int32_t* targets, int64_t rows) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (int64_t t = 0; t < rows; ++t) {
    h ^= static_cast<uint32_t>(targets[t]);
    h *= 0x100000001B3ull;
  }
  return h;
}

std::string describe(const Tensor& x) {
  return x.defined() ? std::string(dtype_name(x.dtype())) + " " + shape_string(x.shape())
                     : "an undefined tensor";
}

// `prefix` starts every message: "" for the forward's local checks (agree_on_layout adds the call
// and the rank), the call's name for the backward.
void check_float_rows(const std::string& prefix, const Tensor& x, const char* name) {
  AMPIPE_CHECK(x.defined() && x.dtype() == DType::F32 && x.device() == Device::CPU && x.ndim() == 2 &&
               x.dim(1) >= 1)
      << prefix << name << " must be a float32 CPU tensor [T, Vs >= 1], got " << describe(x);
}

void check_targets(const std::string& prefix, const Tensor& targets, int64_t rows, int64_t vocab_size) {
  AMPIPE_CHECK(targets.defined() && targets.dtype() == DType::I32 && targets.device() == Device::CPU &&
               targets.ndim() == 1 && targets.dim(0) == rows)
      << prefix << "targets must be an int32 CPU tensor [" << rows << "], got " << describe(targets);
  const int32_t* tp = targets.data<int32_t>();
  for (int64_t t = 0; t < rows; ++t)
    AMPIPE_CHECK(tp[t] >= 0 && tp[t] < vocab_size) << prefix << "target " << tp[t] << " of token " << t
                                                   << " is outside the vocabulary [0, " << vocab_size << ")";
}

// The checks one rank can make alone (messages without the call's name: agree_on_layout adds it).
void check_local_arguments(const Tensor& logits, const Tensor& targets, int64_t shard_begin,
                           int64_t vocab_size, const Tensor& losses) {
  check_float_rows("", logits, "the logits shard");
  const int64_t rows = logits.dim(0);
  AMPIPE_CHECK(losses.defined() && losses.dtype() == DType::F32 && losses.device() == Device::CPU &&
               losses.ndim() == 1 && losses.dim(0) == rows)
      << "losses must be a float32 CPU tensor [" << rows << "], got " << describe(losses);
  AMPIPE_CHECK(vocab_size >= 1 && vocab_size <= kMaxVocab)
      << "vocab_size " << vocab_size << " must be in [1, 2^31] (target ids are int32)";
  const int64_t shard_size = logits.dim(1);
  AMPIPE_CHECK(shard_begin >= 0 && shard_begin <= vocab_size - shard_size)
      << "the shard [" << shard_begin << ", " << shard_begin + shard_size << ") (begin " << shard_begin
      << ", " << shard_size << " columns) is not inside the vocabulary [0, " << vocab_size << ")";
  check_targets("", targets, rows, vocab_size);
}

// The backward's checks: shapes against the forward's stats (their values are not checked).
void check_backward_arguments(const Tensor& logits, const Tensor& targets, const VocabParallelStats& stats,
                              const Tensor& dlogits) {
  const std::string prefix = std::string(kBackward) + ": ";
  check_float_rows(prefix, logits, "the logits shard");
  check_float_rows(prefix, dlogits, "dlogits");
  const int64_t rows = logits.dim(0);
  AMPIPE_CHECK(dlogits.shape() == logits.shape())
      << prefix << "dlogits " << shape_string(dlogits.shape()) << " must match the logits shard "
      << shape_string(logits.shape());
  AMPIPE_CHECK(static_cast<int64_t>(stats.row_max.size()) == rows &&
               static_cast<int64_t>(stats.row_sum.size()) == rows && stats.shard_size == logits.dim(1))
      << prefix << "the stats are of a forward over " << stats.row_max.size() << " tokens and a shard of "
      << stats.shard_size << " ids; the logits shard is " << shape_string(logits.shape());
  check_targets(prefix, targets, rows, stats.vocab_size);
}

// Collective 1: exchanges the headers and checks them the same way on every rank, so a refusal is
// thrown on every rank (naming the values) and the group stays in step. `local_error` is this
// rank's own refusal ("" if none). Returns every rank's header.
std::vector<ShardHeader> agree_on_layout(Communicator& group, const ShardHeader& mine,
                                         const std::string& local_error) {
  const std::vector<ShardHeader> all = all_gather_values(group, std::vector<ShardHeader>{mine});
  const int rank = group.rank(), size = group.size();
  auto where = [&] {
    return std::string(kForward) + " on rank " + std::to_string(rank) + " of " + std::to_string(size);
  };
  AMPIPE_CHECK(local_error.empty()) << where() << ": " << local_error;
  for (int r = 0; r < size; ++r)
    AMPIPE_CHECK(all[r].arguments_ok == 1)
        << where() << ": rank " << r << " refused its arguments (its own error says why)";
  int64_t next_begin = 0;
  for (int r = 0; r < size; ++r) {
    const ShardHeader& h = all[r];
    AMPIPE_CHECK(h.vocab_size == mine.vocab_size)
        << where() << ": rank " << r << " passed vocab_size " << h.vocab_size << ", this rank "
        << mine.vocab_size << "; every rank of the group must pass the same";
    AMPIPE_CHECK(h.rows == mine.rows)
        << where() << ": rank " << r << " has " << h.rows << " tokens, this rank " << mine.rows
        << "; every rank of the group must pass the same targets";
    AMPIPE_CHECK(h.targets_hash == mine.targets_hash)
        << where() << ": rank " << r
        << "'s targets differ from this rank's; every rank must pass the same targets";
    AMPIPE_CHECK(h.shard_begin == next_begin)
        << where() << ": the shards do not tile the vocabulary [0, " << mine.vocab_size
        << ") in rank order: rank " << r << "'s shard begins at " << h.shard_begin << " (" << h.shard_size
        << " ids), expected " << next_begin
        << (r == 0 ? " (rank 0's shard begins at 0)" : " (where rank " + std::to_string(r - 1) + "'s ends)");
    next_begin += h.shard_size;
  }
  AMPIPE_CHECK(next_begin == mine.vocab_size)
      << where() << ": the shards cover [0, " << next_begin << ") but the vocabulary is [0, "
      << mine.vocab_size << "); the shard sizes must sum to vocab_size";
  return all;
}

// The rank whose shard holds vocabulary id `id` (the shards tile [0, V) in rank order).
int owner_of(const std::vector<ShardHeader>& layout, int64_t id) {
  int r = 0;
  while (r + 1 < static_cast<int>(layout.size()) && layout[r + 1].shard_begin <= id) ++r;
  return r;
}

// Collective 2: stats.row_max[t] = M (the maximum over every rank's local maxima, exact) and the
// target's logit from its owner rank (exact), per row.
std::vector<float> gather_max_and_target_logit(Communicator& group, const std::vector<ShardHeader>& layout,
                                               const Tensor& logits, const int32_t* tp, int64_t begin,
                                               VocabParallelStats& stats) {
  const int64_t rows = logits.dim(0), cols = logits.dim(1), ls = logits.stride(0);
  const float* lp = logits.data<float>();
  std::vector<float> local(static_cast<size_t>(2 * rows));  // [max of each row..., target logit or 0...]
  parallel_for(rows, row_grain(cols), [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const float* row = lp + t * ls;
      float mx = -INFINITY;
      for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, row[j]);
      const int64_t local_id = tp[t] - begin;
      local[t] = mx;
      local[rows + t] = local_id >= 0 && local_id < cols ? row[local_id] : 0.0f;
    }
  });
  const std::vector<float> all = all_gather_values(group, local);
  std::vector<float> target_logit(static_cast<size_t>(rows));
  stats.row_max.assign(static_cast<size_t>(rows), -INFINITY);
  for (int64_t t = 0; t < rows; ++t) {
    for (size_t r = 0; r < layout.size(); ++r)
      stats.row_max[t] = std::max(stats.row_max[t], all[r * 2 * rows + t]);
    target_logit[t] = all[static_cast<size_t>(owner_of(layout, tp[t])) * 2 * rows + rows + t];
  }
  return target_logit;
}

// Collective 3: stats.row_sum[t] = S, the partial sums of exp(z - M) (float32 exponentials, double
// accumulation, as the CPU kernel) added in rank order in double.
void gather_exp_sums(Communicator& group, const Tensor& logits, VocabParallelStats& stats) {
  const int64_t rows = logits.dim(0), cols = logits.dim(1), ls = logits.stride(0);
  const float* lp = logits.data<float>();
  std::vector<double> local(static_cast<size_t>(rows));
  parallel_for(rows, row_grain(cols), [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const float* row = lp + t * ls;
      const float mx = stats.row_max[t];
      double s = 0;
      for (int64_t j = 0; j < cols; ++j) s += std::exp(row[j] - mx);
      local[t] = s;
    }
  });
  const std::vector<double> all = all_gather_values(group, local);
  stats.row_sum.assign(static_cast<size_t>(rows), 0.0);
  for (int r = 0; r < group.size(); ++r)
    for (int64_t t = 0; t < rows; ++t) stats.row_sum[t] += all[static_cast<size_t>(r * rows + t)];
}

}  // namespace

void vocab_parallel_cross_entropy_forward(const Tensor& logits_shard, const Tensor& targets,
                                          int64_t shard_begin, int64_t vocab_size, Communicator& group,
                                          Tensor losses, VocabParallelStats& stats) {
  std::string local_error;
  try {
    check_local_arguments(logits_shard, targets, shard_begin, vocab_size, losses);
  } catch (const Error& e) {
    local_error = e.what();
  }
  ShardHeader mine{};
  if (local_error.empty()) {
    const int64_t rows = logits_shard.dim(0);
    mine = {
        1, vocab_size, shard_begin, logits_shard.dim(1), rows, hash_targets(targets.data<int32_t>(), rows)};
  }
  const std::vector<ShardHeader> layout = agree_on_layout(group, mine, local_error);

  const int64_t rows = mine.rows;
  const int32_t* tp = targets.data<int32_t>();
  stats = VocabParallelStats{{}, {}, shard_begin, mine.shard_size, vocab_size};
  if (rows == 0) return;  // every rank has T = 0 (agreed above): no per-row collective
  const std::vector<float> target_logit =
      gather_max_and_target_logit(group, layout, logits_shard, tp, shard_begin, stats);
  gather_exp_sums(group, logits_shard, stats);
  float* out = losses.data<float>();
  for (int64_t t = 0; t < rows; ++t) {
    // (M - target logit) first: both are large for large logits, their difference is not.
    out[t] = static_cast<float>((static_cast<double>(stats.row_max[t]) - target_logit[t]) +
                                std::log(stats.row_sum[t]));
  }
}

void vocab_parallel_cross_entropy_backward(const Tensor& logits_shard, const Tensor& targets,
                                           const VocabParallelStats& stats, float scale,
                                           Tensor dlogits_shard) {
  check_backward_arguments(logits_shard, targets, stats, dlogits_shard);
  const int64_t rows = logits_shard.dim(0), cols = logits_shard.dim(1);
  const int32_t* tp = targets.data<int32_t>();
  const float* lp = logits_shard.data<float>();
  float* dp = dlogits_shard.data<float>();
  const int64_t ls = logits_shard.stride(0), ds = dlogits_shard.stride(0);
  parallel_for(rows, row_grain(cols), [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const float* row = lp + t * ls;
      float* drow = dp + t * ds;
      const float mx = stats.row_max[t];
      const float coeff = static_cast<float>(static_cast<double>(scale) / stats.row_sum[t]);
      // Element j is read before it is written, so dlogits may alias the logits.
      for (int64_t j = 0; j < cols; ++j) drow[j] = coeff * std::exp(row[j] - mx);
      const int64_t local_id = tp[t] - stats.shard_begin;
      if (local_id >= 0 && local_id < cols) drow[local_id] -= scale;
    }
  });
}

}  // namespace ampipe
