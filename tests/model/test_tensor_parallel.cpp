// The tensor-parallel linear layers (model/tensor_parallel.h) on one rank (SelfCommunicator: every
// shard is the whole weight) against model/linear.h on the same tensors, bit for bit, with and
// without bias and sequence parallelism; the shard helpers; the refusals. Several ranks:
// tests/parallel/mpi_test_tensor_parallel.cpp.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "model/linear.h"
#include "model/tensor_parallel.h"
#include "test_util.h"

namespace ampipe {
namespace {

using ::ampipe::testing::error_of;
using ::ampipe::testing::random_tensor;

constexpr int64_t kRows = 10, kIn = 12, kOut = 8;

struct Grads {
  std::vector<float> y, dx, dweight, dbias;
};

// The plain linear on x [kRows, kIn], weight [kOut, kIn]; dweight and dbias start from `seed`'s
// values (both sides accumulate into them).
Grads plain(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& dy, uint64_t seed) {
  Tensor y = Tensor::empty({kRows, kOut}), dx = Tensor::empty({kRows, kIn});
  Tensor dw = random_tensor({kOut, kIn}, seed), db = b.defined() ? random_tensor({kOut}, seed + 1) : Tensor();
  linear_forward(x, w, b, y);
  linear_backward(x, w, dy, dx, dw, db);
  return {y.to_vector(), dx.to_vector(), dw.to_vector(),
          db.defined() ? db.to_vector() : std::vector<float>{}};
}

Grads parallel(TensorParallelKind kind, bool sequence_parallel, const Tensor& x, const Tensor& w,
               const Tensor& b, const Tensor& dy, uint64_t seed) {
  SelfCommunicator self;
  Tensor y = Tensor::empty({kRows, kOut}), dx = Tensor::empty({kRows, kIn});
  Tensor dw = random_tensor({kOut, kIn}, seed), db = b.defined() ? random_tensor({kOut}, seed + 1) : Tensor();
  const Tensor ws = tensor_parallel_weight_shard(w, kind, 0, 1),
               bs = tensor_parallel_bias_shard(b, kind, 0, 1);
  if (kind == TensorParallelKind::Column) {
    column_parallel_forward(x, ws, bs, self, sequence_parallel, y);
    column_parallel_backward(x, ws, dy, self, sequence_parallel, dx, dw, db);
  } else {
    row_parallel_forward(x, ws, bs, self, sequence_parallel, y);
    row_parallel_backward(x, ws, dy, self, sequence_parallel, dx, dw, db);
  }
  return {y.to_vector(), dx.to_vector(), dw.to_vector(),
          db.defined() ? db.to_vector() : std::vector<float>{}};
}

void expect_bits_equal(const Grads& a, const Grads& b) {
  EXPECT_EQ(a.y, b.y) << "y";
  EXPECT_EQ(a.dx, b.dx) << "dx";
  EXPECT_EQ(a.dweight, b.dweight) << "dweight";
  EXPECT_EQ(a.dbias, b.dbias) << "dbias";
}

TEST(TensorParallel, OneRankEqualsLinearBitForBit) {
  // x and dy as column views of wider matrices too (a row stride larger than the width).
  const Tensor wide_x = random_tensor({kRows, kIn + 3}, 1), wide_dy = random_tensor({kRows, kOut + 5}, 2);
  const Tensor w = random_tensor({kOut, kIn}, 3, 0.3f), b = random_tensor({kOut}, 4);
  for (bool strided : {false, true}) {
    const Tensor x = strided ? wide_x.cols(2, 2 + kIn) : wide_x.cols(0, kIn).clone();
    const Tensor dy = strided ? wide_dy.cols(1, 1 + kOut) : wide_dy.cols(0, kOut).clone();
    for (TensorParallelKind kind : {TensorParallelKind::Column, TensorParallelKind::Row})
      for (bool sp : {false, true})
        for (bool with_bias : {true, false}) {
          SCOPED_TRACE(::testing::Message() << (kind == TensorParallelKind::Column ? "column" : "row")
                                            << (sp ? ", sequence parallel" : "")
                                            << (with_bias ? ", bias" : "") << (strided ? ", strided" : ""));
          const Tensor bias = with_bias ? b : Tensor();
          expect_bits_equal(parallel(kind, sp, x, w, bias, dy, 7), plain(x, w, bias, dy, 7));
        }
  }
}

TEST(TensorParallel, ShardsTileTheWeight) {
  const Tensor w = random_tensor({6, 4}, 5), b = random_tensor({6}, 6);
  const std::vector<float> wv = w.to_vector(), bv = b.to_vector();
  for (int t = 0; t < 2; ++t) {
    const std::vector<float> col =
        tensor_parallel_weight_shard(w, TensorParallelKind::Column, t, 2).to_vector();
    const std::vector<float> row = tensor_parallel_weight_shard(w, TensorParallelKind::Row, t, 2).to_vector();
    EXPECT_EQ(col, std::vector<float>(wv.begin() + 12 * t, wv.begin() + 12 * (t + 1)));
    for (int r = 0; r < 6; ++r)
      for (int c = 0; c < 2; ++c) EXPECT_EQ(row[r * 2 + c], wv[r * 4 + 2 * t + c]);
    EXPECT_EQ(tensor_parallel_bias_shard(b, TensorParallelKind::Column, t, 2).to_vector(),
              std::vector<float>(bv.begin() + 3 * t, bv.begin() + 3 * (t + 1)));
    EXPECT_EQ(tensor_parallel_bias_shard(b, TensorParallelKind::Row, t, 2).to_vector(), bv);
  }
  EXPECT_FALSE(tensor_parallel_bias_shard(Tensor(), TensorParallelKind::Column, 0, 2).defined());
}

// TensorParallelShard: take reads the pieces in order (a fused q, k, v shard of rows, a column
// block), place writes them back where they came from and nothing else.
TEST(TensorParallel, ShardMappingTakesAndPlacesItsPieces) {
  const Tensor full = random_tensor({8, 3}, 7);
  const std::vector<float> fv = full.to_vector();
  const TensorParallelShard rows{"w", {8, 3}, 0, {{0, 1, 2}, {2, 5, 1}, {3, 7, 1}}};
  const Tensor shard = take_tensor_parallel_shard(full, rows);
  ASSERT_EQ(shard.shape(), (Shape{4, 3}));
  std::vector<float> want(fv.begin() + 3, fv.begin() + 9);
  want.insert(want.end(), fv.begin() + 15, fv.begin() + 18);
  want.insert(want.end(), fv.begin() + 21, fv.begin() + 24);
  EXPECT_EQ(shard.to_vector(), want);
  Tensor back = Tensor::zeros({8, 3});
  place_tensor_parallel_shard(shard, rows, back);
  const std::vector<float> bv = back.to_vector();
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 3; ++c) {
      const bool held = r == 1 || r == 2 || r == 5 || r == 7;
      EXPECT_EQ(bv[r * 3 + c], held ? fv[r * 3 + c] : 0.0f) << r << ", " << c;
    }
  const TensorParallelShard cols{"o", {8, 3}, 1, {{0, 2, 1}}};
  EXPECT_EQ(take_tensor_parallel_shard(full, cols).to_vector(),
            tensor_parallel_weight_shard(full.cols(0, 3).clone(), TensorParallelKind::Row, 2, 3).to_vector());
  const TensorParallelShard outside{"x", {8, 3}, 0, {{0, 7, 2}}};
  const std::string msg = error_of([&] { take_tensor_parallel_shard(full, outside); });
  EXPECT_NE(msg.find("tensor-parallel shard of x: piece [7, 9)"), std::string::npos) << msg;
}

TEST(TensorParallel, ShardHelpersRefuseIndivisibleSizes) {
  const Tensor w = random_tensor({6, 4}, 5);
  std::string msg = error_of([&] { tensor_parallel_weight_shard(w, TensorParallelKind::Column, 0, 4); });
  EXPECT_NE(
      msg.find(
          "out (the weight's rows, column-parallel) (6) must be divisible by the tensor-parallel size 4"),
      std::string::npos)
      << msg;
  msg = error_of([&] { tensor_parallel_weight_shard(w, TensorParallelKind::Row, 0, 3); });
  EXPECT_NE(msg.find("(4) must be divisible by the tensor-parallel size 3"), std::string::npos) << msg;
  msg =
      error_of([&] { tensor_parallel_bias_shard(random_tensor({6}, 1), TensorParallelKind::Column, 1, 4); });
  EXPECT_NE(msg.find("(6) must be divisible by the tensor-parallel size 4"), std::string::npos) << msg;
  msg = error_of([&] { tensor_parallel_weight_shard(w, TensorParallelKind::Row, 2, 2); });
  EXPECT_NE(msg.find("rank 2 must be in [0, 2)"), std::string::npos) << msg;
  msg = error_of([&] {
    tensor_parallel_weight_shard(Tensor::zeros({6, 4}, DType::BF16), TensorParallelKind::Row, 0, 2);
  });
  EXPECT_NE(msg.find("float32 CPU"), std::string::npos) << msg;
}

TEST(TensorParallel, RefusesBadArguments) {
  SelfCommunicator self;
  const Tensor x = random_tensor({kRows, kIn}, 1), w = random_tensor({kOut, kIn}, 2),
               b = random_tensor({kOut}, 3);
  Tensor y = Tensor::empty({kRows, kOut});
  std::string msg = error_of([&] {
    column_parallel_forward(x, Tensor::zeros({kOut, kIn}, DType::BF16), b, self, false, y);
  });
  EXPECT_NE(msg.find("column_parallel_forward: weight_shard must be a float32 CPU tensor"), std::string::npos)
      << msg;
  msg = error_of([&] { column_parallel_forward(x, w, b, self, false, Tensor::empty({kRows, kOut + 1})); });
  EXPECT_NE(msg.find("y_shard must be a float32 CPU tensor [10, 8], got float32 [10, 9]"), std::string::npos)
      << msg;
  msg = error_of([&] { column_parallel_forward(random_tensor({kRows, kIn + 1}, 1), w, b, self, false, y); });
  EXPECT_NE(msg.find("x must be a float32 CPU tensor [N, 12]"), std::string::npos) << msg;
  msg = error_of([&] { column_parallel_forward(x, w, random_tensor({kOut + 1}, 3), self, false, y); });
  EXPECT_NE(msg.find("bias_shard must be a float32 CPU tensor [8] or undefined"), std::string::npos) << msg;
  // The row-parallel forward's y is written by a collective: a strided view is refused.
  const Tensor xr = random_tensor({kRows, kIn}, 1);
  msg = error_of([&] {
    row_parallel_forward(xr, w, b, self, false, Tensor::empty({kRows, kOut + 2}).cols(0, kOut));
  });
  EXPECT_NE(msg.find("row_parallel_forward: y must be a contiguous float32 CPU tensor [10, 8]"),
            std::string::npos)
      << msg;
  Tensor dx = Tensor::empty({kRows, kIn}), dw = Tensor::zeros({kOut, kIn});
  msg = error_of([&] {
    row_parallel_backward(xr, w, random_tensor({kRows + 1, kOut}, 4), self, false, dx, dw, Tensor());
  });
  EXPECT_NE(msg.find("row_parallel_backward: dy must be a float32 CPU tensor [10, 8], got float32 [11, 8]"),
            std::string::npos)
      << msg;
  msg = error_of([&] {
    column_parallel_backward(x, w, random_tensor({kRows, kOut}, 4), self, true, dx,
                             Tensor::zeros({kOut, kIn + 1}), Tensor());
  });
  EXPECT_NE(msg.find("column_parallel_backward: dweight_shard must be a float32 CPU tensor [8, 12]"),
            std::string::npos)
      << msg;
}

}  // namespace
}  // namespace ampipe
