// Token + position embedding against a float64 reference and finite differences.
#include <cstring>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/random.h"
#include "kernels/embedding.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

struct Case {
  int64_t batch, seq_len, max_seq, vocab, width;
};
const Case kCases[] = {
    {1, 1, 1, 1, 1}, {1, 3, 5, 17, 3}, {3, 5, 7, 17, 130}, {2, 17, 17, 3, 33}, {4, 64, 80, 130, 65}};

using ::ampipe::testing::random_tokens;

std::vector<double> embedding_ref(const Tensor& tokens, const std::vector<double>& tok,
                                  const std::vector<double>& pos, int64_t seq_len, int64_t width) {
  const int32_t* tp = tokens.data<int32_t>();
  const int64_t n = tokens.dim(0);
  std::vector<double> x(static_cast<size_t>(n * width));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < width; ++j)
      x[t * width + j] = tok[tp[t] * width + j] + pos[(t % seq_len) * width + j];
  return x;
}

TEST(Embedding, ForwardMatchesReference) {
  uint64_t seed = 1;
  for (const Case& c : kCases) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << c.batch << " N=" << c.seq_len << " V=" << c.vocab << " d=" << c.width);
    Tensor tokens = random_tokens(c.batch * c.seq_len, c.vocab, ++seed);
    Tensor tok = random_tensor({c.vocab, c.width}, ++seed);
    Tensor pos = random_tensor({c.max_seq, c.width}, ++seed);
    Tensor x = Tensor::empty({c.batch * c.seq_len, c.width});
    embedding_forward(tokens, tok, pos, c.seq_len, x);
    expect_close(x, embedding_ref(tokens, to_double(tok), to_double(pos), c.seq_len, c.width), 1e-7, 1e-6,
                 "x");
  }
}

TEST(Embedding, ForwardHonoursColumnSliceViews) {
  Tensor tokens = random_tokens(6, 11, 1);
  Tensor tok_buf = random_tensor({11, 20}, 2);
  Tensor pos_buf = random_tensor({4, 30}, 3);
  Tensor x_buf = Tensor::zeros({6, 12});
  Tensor tok = tok_buf.cols(3, 10);
  Tensor pos = pos_buf.cols(20, 27);
  Tensor x = x_buf.cols(5, 12);
  embedding_forward(tokens, tok, pos, 3, x);
  expect_close(x, embedding_ref(tokens, to_double(tok), to_double(pos), 3, 7), 1e-7, 1e-6, "x");
  EXPECT_EQ(x_buf.to_vector()[4], 0.0f);
}

TEST(Embedding, BackwardAccumulatesRepeatedTokensAndPositions) {
  uint64_t seed = 100;
  for (const Case& c : kCases) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << c.batch << " N=" << c.seq_len << " V=" << c.vocab << " d=" << c.width);
    const int64_t n = c.batch * c.seq_len;
    Tensor tokens = random_tokens(n, c.vocab, ++seed);
    Tensor dx = random_tensor({n, c.width}, ++seed);
    Tensor dtok = random_tensor({c.vocab, c.width}, ++seed);  // accumulated into
    Tensor dpos = random_tensor({c.max_seq, c.width}, ++seed);
    std::vector<double> expected_tok = to_double(dtok);
    std::vector<double> expected_pos = to_double(dpos);
    const std::vector<double> g = to_double(dx);
    const int32_t* tp = tokens.data<int32_t>();
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < c.width; ++j) {
        expected_tok[tp[t] * c.width + j] += g[t * c.width + j];
        expected_pos[(t % c.seq_len) * c.width + j] += g[t * c.width + j];
      }
    embedding_backward(tokens, dx, c.seq_len, dtok, dpos);
    expect_close(dtok, expected_tok, 1e-6, 1e-5, "dtoken_table");
    // Rows past seq_len are left alone.
    expect_close(dpos, expected_pos, 1e-6, 1e-5, "dposition_table");
  }
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  const int64_t batch = 2, seq_len = 3, max_seq = 4, vocab = 5, width = 3;
  Tensor tokens = Tensor::from_ints({6}, {1, 3, 1, 4, 1, 0});
  Tensor tok = random_tensor({vocab, width}, 1);
  Tensor pos = random_tensor({max_seq, width}, 2);
  Tensor dx = random_tensor({batch * seq_len, width}, 3);
  Tensor dtok = Tensor::zeros({vocab, width});
  Tensor dpos = Tensor::zeros({max_seq, width});
  embedding_backward(tokens, dx, seq_len, dtok, dpos);
  std::vector<double> tv = to_double(tok), pv = to_double(pos);
  const std::vector<double> g = to_double(dx);
  auto loss = [&] {
    const std::vector<double> x = embedding_ref(tokens, tv, pv, seq_len, width);
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += x[i] * g[i];
    return s;
  };
  expect_close(dtok, finite_difference(tv, loss), 1e-6, 1e-5, "dtoken_table vs finite differences");
  expect_close(dpos, finite_difference(pv, loss), 1e-6, 1e-5, "dposition_table vs finite differences");
}

TEST(Embedding, TokenOutsideVocabularyThrows) {
  Tensor tok = random_tensor({5, 3}, 1);
  Tensor pos = random_tensor({4, 3}, 2);
  Tensor x = Tensor::empty({4, 3});
  EXPECT_THROW(embedding_forward(Tensor::from_ints({4}, {0, 1, 5, 2}), tok, pos, 2, x), Error);
  EXPECT_THROW(embedding_forward(Tensor::from_ints({4}, {0, -1, 2, 2}), tok, pos, 2, x), Error);
  Tensor dtok = Tensor::zeros({5, 3});
  Tensor dpos = Tensor::zeros({4, 3});
  EXPECT_THROW(embedding_backward(Tensor::from_ints({4}, {0, 1, 9, 2}), x, 2, dtok, dpos), Error);
  try {
    embedding_forward(Tensor::from_ints({4}, {0, 1, 5, 2}), tok, pos, 2, x);
    FAIL() << "an out-of-range token id was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 5"), std::string::npos) << e.what();
  }
}

TEST(Embedding, BadSequenceLengthOrTableShapeThrows) {
  Tensor tokens = Tensor::from_ints({4}, {0, 1, 2, 3});
  Tensor tok = random_tensor({5, 3}, 1);
  Tensor x = Tensor::empty({4, 3});
  EXPECT_THROW(embedding_forward(tokens, tok, random_tensor({4, 3}, 2), 3, x), Error);  // 4 % 3 != 0
  EXPECT_THROW(embedding_forward(tokens, tok, random_tensor({1, 3}, 2), 2, x), Error);  // S < N
  EXPECT_THROW(embedding_forward(tokens, tok, random_tensor({4, 4}, 2), 2, x), Error);  // width
  EXPECT_THROW(embedding_forward(tokens, tok, random_tensor({4, 3}, 2), 2, Tensor::empty({3, 3})), Error);
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (the backward accumulates each
// table row in token order, whatever the thread count).
TEST(Embedding, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  const int64_t batch = 4, seq_len = 128, vocab = 50, width = 130;
  Tensor tokens = random_tokens(batch * seq_len, vocab, 1);
  Tensor dx = random_tensor({batch * seq_len, width}, 2);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor dtok = Tensor::zeros({vocab, width});
    Tensor dpos = Tensor::zeros({seq_len, width});
    embedding_backward(tokens, dx, seq_len, dtok, dpos);
    std::vector<float> all;
    ampipe::testing::append_values(all, dtok);
    ampipe::testing::append_values(all, dpos);
    return all;
  });
}

}  // namespace
}  // namespace ampipe::kernels
