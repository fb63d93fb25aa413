// CPU token + position embedding (kernels/embedding.h).
//
// The backward pass never has two threads add into one row: token-table rows are split by
// vocabulary range (each thread scans all tokens in order and adds those in its range) and
// position-table rows by position (each sums its batch rows in order). Every row therefore
// accumulates in token order, whatever the thread count.
#include "kernels/embedding.h"

#include <algorithm>

#include "core/parallel.h"
#include "kernels/row_checks.h"

namespace ampipe::kernels::cpu {
namespace {

constexpr int64_t kGrainElements = 16384;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1)); }

// Checks every token id against the vocabulary (the shapes are checked by the caller).
const int32_t* check_token_ids(const Tensor& tokens, int64_t vocab, const char* op) {
  const int32_t* tp = tokens.data<int32_t>();
  for (int64_t t = 0; t < tokens.dim(0); ++t) detail::check_token_id(tp[t], t, vocab, op);
  return tp;
}

}  // namespace

void embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                       int64_t seq_len, Tensor x) {
  detail::check_embedding_forward(tokens, token_table, position_table, seq_len, x);
  const int64_t rows = x.dim(0);
  const int64_t width = x.dim(1);
  const bool positions = position_table.defined();
  const int32_t* tp = check_token_ids(tokens, token_table.dim(0), "embedding_forward");
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
  detail::check_embedding_backward(tokens, dx, seq_len, dtoken_table, dposition_table);
  const int64_t rows = dx.dim(0);
  const int64_t width = dx.dim(1);
  const int64_t vocab = dtoken_table.dim(0);
  const int32_t* tp = check_token_ids(tokens, vocab, "embedding_backward");
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
