// CPU token + position embedding (kernels/embedding.h).
//
// The backward pass never has two threads add into one row: token-table rows are split by
// vocabulary range (each thread scans all tokens in order and adds those in its range) and
// position-table rows by position (each sums its batch rows in order). Every row therefore
// accumulates in token order, whatever the thread count.
#include "kernels/embedding.h"

#include <algorithm>

#include "core/parallel.h"

namespace ampipe::kernels::cpu {
namespace {

constexpr int64_t kGrainElements = 16384;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1)); }

// Checks the token ids against the table and the token count against the sequence length.
const int32_t* check_tokens(const Tensor& tokens, int64_t num_rows, int64_t vocab, int64_t seq_len,
                            const char* op) {
  AMPIPE_CHECK(tokens.dtype() == DType::I32 && tokens.ndim() == 1 && tokens.dim(0) == num_rows)
      << op << ": tokens must be int32 [" << num_rows << "], got " << dtype_name(tokens.dtype()) << " "
      << shape_string(tokens.shape());
  AMPIPE_CHECK(seq_len >= 1 && num_rows % seq_len == 0)
      << op << ": " << num_rows << " tokens are not a whole number of sequences of length " << seq_len;
  const int32_t* tp = tokens.data<int32_t>();
  for (int64_t t = 0; t < num_rows; ++t)
    AMPIPE_CHECK(tp[t] >= 0 && tp[t] < vocab) << op << ": token id " << tp[t] << " at position " << t
                                              << " is outside the vocabulary [0, " << vocab << ")";
  return tp;
}

void check_table(const Tensor& table, int64_t min_rows, int64_t width, const char* op, const char* name) {
  AMPIPE_CHECK(table.ndim() == 2 && table.dim(0) >= min_rows && table.dim(1) == width)
      << op << ": " << name << " " << shape_string(table.shape()) << " must be [>= " << min_rows << ", "
      << width << "]";
}

}  // namespace

void embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                       int64_t seq_len, Tensor x) {
  AMPIPE_CHECK(x.ndim() == 2) << "embedding_forward: x must be 2-D [tokens, d], got "
                              << shape_string(x.shape());
  const int64_t rows = x.dim(0);
  const int64_t width = x.dim(1);
  check_table(token_table, 0, width, "embedding_forward", "token_table");
  const bool positions = position_table.defined();
  if (positions) check_table(position_table, seq_len, width, "embedding_forward", "position_table");
  const int32_t* tp = check_tokens(tokens, rows, token_table.dim(0), seq_len, "embedding_forward");
  const float* tok = token_table.data<float>();
  const float* pos = positions ? position_table.data<float>() : nullptr;
  float* xp = x.data<float>();
  const int64_t tok_s = token_table.stride(0);
  const int64_t pos_s = positions ? position_table.stride(0) : 0;
  const int64_t xs = x.stride(0);
  parallel_for(rows, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* a = tok + tp[t] * tok_s;
      float* out = xp + t * xs;
      if (!pos) {
        std::copy(a, a + width, out);
        continue;
      }
      const float* b = pos + (t % seq_len) * pos_s;
      for (int64_t j = 0; j < width; ++j) out[j] = a[j] + b[j];
    }
  });
}

void embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, Tensor dtoken_table,
                        Tensor dposition_table) {
  AMPIPE_CHECK(dx.ndim() == 2) << "embedding_backward: dx must be 2-D [tokens, d], got "
                               << shape_string(dx.shape());
  const int64_t rows = dx.dim(0);
  const int64_t width = dx.dim(1);
  check_table(dtoken_table, 0, width, "embedding_backward", "dtoken_table");
  if (dposition_table.defined()) check_table(dposition_table, seq_len, width, "embedding_backward", "dposition_table");
  const int64_t vocab = dtoken_table.dim(0);
  const int32_t* tp = check_tokens(tokens, rows, vocab, seq_len, "embedding_backward");
  const float* g = dx.data<float>();
  const int64_t gs = dx.stride(0);

  float* dtok = dtoken_table.data<float>();
  const int64_t tok_s = dtoken_table.stride(0);
  // Each part owns the vocabulary rows [begin, end); scanning the ids is cheap next to the adds.
  parallel_for(vocab, std::max<int64_t>(1, vocab / std::max<int64_t>(1, rows * width / kGrainElements)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = 0; t < rows; ++t) {
                   const int64_t v = tp[t];
                   if (v < begin || v >= end) continue;
                   float* out = dtok + v * tok_s;
                   const float* in = g + t * gs;
                   for (int64_t j = 0; j < width; ++j) out[j] += in[j];
                 }
               });

  if (!dposition_table.defined()) return;
  float* dpos = dposition_table.data<float>();
  const int64_t pos_s = dposition_table.stride(0);
  const int64_t batch = rows / seq_len;
  parallel_for(seq_len, row_grain(width * batch), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* out = dpos + i * pos_s;
      for (int64_t b = 0; b < batch; ++b) {
        const float* in = g + (b * seq_len + i) * gs;
        for (int64_t j = 0; j < width; ++j) out[j] += in[j];
      }
    }
  });
}

}  // namespace ampipe::kernels::cpu
