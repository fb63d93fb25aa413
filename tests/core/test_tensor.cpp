// Tensor: shapes, strides, views sharing storage (rows, cols, reshape), clone, copy_from, fill.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace ampipe {
namespace {

// A [rows, cols] tensor holding 0, 1, 2, ... in row-major order.
Tensor iota(int64_t rows, int64_t cols) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from({rows, cols}, v);
}

TEST(Tensor, ShapeStridesAndNumel) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_EQ(t.ndim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_EQ(t.stride(1), 4);
  EXPECT_EQ(t.stride(2), 1);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.to_vector(), std::vector<float>(24, 0.0f));
  EXPECT_THROW(t.dim(3), Error);
  EXPECT_THROW(t.stride(-1), Error);
  EXPECT_FALSE(Tensor().defined());
  EXPECT_EQ(Tensor::zeros({0, 5}).numel(), 0);
  EXPECT_THROW(Tensor::empty({2, -1}), Error);
  EXPECT_THROW(Tensor::from({2, 2}, {1, 2, 3}), Error);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(Tensor::empty({3}).data<float>()) % 64, 0u);  // 64-byte aligned
}

TEST(Tensor, ShapesPastInt64AreRefused) {
  // Elements past 2^63 - 1, and strides past it even with no elements ([0, 2^32, 2^32]).
  EXPECT_THROW(Tensor::empty({int64_t{1} << 32, int64_t{1} << 32}), Error);
  EXPECT_THROW(Tensor::empty({0, int64_t{1} << 32, int64_t{1} << 32}), Error);
  EXPECT_EQ(Tensor::empty({0, 1 << 20, 1 << 10}).numel(), 0);
}

TEST(Tensor, DtypeIsChecked) {
  Tensor i = Tensor::from_ints({3}, {1, 2, 3});
  EXPECT_EQ(i.dtype(), DType::I32);
  EXPECT_EQ(i.data<int32_t>()[2], 3);
  EXPECT_THROW(i.data<float>(), Error);
  EXPECT_THROW(Tensor::zeros({3}).data<int32_t>(), Error);
}

TEST(Tensor, CopiesShareStorage) {
  Tensor a = iota(2, 3);
  Tensor b = a;  // a handle, not a copy
  b.data<float>()[4] = 100;
  EXPECT_EQ(a.to_vector()[4], 100.0f);
}

TEST(Tensor, RowsIsAViewSharingStorage) {
  Tensor a = iota(4, 3);
  Tensor r = a.rows(1, 3);
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  EXPECT_EQ(r.stride(0), 3);
  EXPECT_TRUE(r.is_contiguous());
  EXPECT_EQ(r.to_vector(), (std::vector<float>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(r.data<float>(), a.data<float>() + 3);
  r.fill(-1);  // writes through to a, and only to rows 1 and 2
  EXPECT_EQ(a.to_vector(), (std::vector<float>{0, 1, 2, -1, -1, -1, -1, -1, -1, 9, 10, 11}));
  EXPECT_EQ(a.rows(2, 2).numel(), 0);
  EXPECT_THROW(a.rows(3, 5), Error);
  EXPECT_THROW(a.rows(2, 1), Error);
  EXPECT_THROW(a.rows(-1, 1), Error);
}

TEST(Tensor, ColsIsAStridedViewSharingStorage) {
  Tensor a = iota(3, 5);
  Tensor c = a.cols(1, 3);
  EXPECT_EQ(c.shape(), (Shape{3, 2}));
  EXPECT_EQ(c.stride(0), 5);  // keeps the parent's row stride
  EXPECT_EQ(c.stride(1), 1);
  EXPECT_FALSE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), (std::vector<float>{1, 2, 6, 7, 11, 12}));
  c.fill(0);
  EXPECT_EQ(a.to_vector(), (std::vector<float>{0, 0, 0, 3, 4, 5, 0, 0, 8, 9, 10, 0, 0, 13, 14}));
  // Rows of a column slice keep the stride.
  Tensor rc = c.rows(1, 3);
  EXPECT_EQ(rc.stride(0), 5);
  EXPECT_EQ(rc.data<float>(), a.data<float>() + 6);
  // The full width is contiguous again.
  EXPECT_TRUE(a.cols(0, 5).is_contiguous());
  EXPECT_THROW(a.cols(4, 6), Error);
  EXPECT_THROW(Tensor::zeros({2, 3, 4}).cols(0, 1), Error);  // 2-D only
}

TEST(Tensor, ReshapeSharesStorageAndRefusesStridedViews) {
  Tensor a = iota(2, 6);
  Tensor r = a.reshape({3, 4});
  EXPECT_EQ(r.shape(), (Shape{3, 4}));
  EXPECT_EQ(r.stride(0), 4);
  EXPECT_EQ(r.to_vector(), a.to_vector());
  r.data<float>()[5] = 50;
  EXPECT_EQ(a.to_vector()[5], 50.0f);
  EXPECT_THROW(a.reshape({5, 2}), Error);          // numel differs
  EXPECT_THROW(a.cols(0, 3).reshape({6}), Error);  // not contiguous
  // A row view is contiguous and can be reshaped.
  EXPECT_EQ(a.rows(1, 2).reshape({2, 3}).to_vector(), (std::vector<float>{6, 7, 8, 9, 10, 11}));
}

TEST(Tensor, CloneIsIndependentAndContiguous) {
  Tensor a = iota(3, 5);
  Tensor c = a.cols(2, 4).clone();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.stride(0), 2);
  EXPECT_EQ(c.to_vector(), (std::vector<float>{2, 3, 7, 8, 12, 13}));
  c.fill(9);
  EXPECT_EQ(a.to_vector(), iota(3, 5).to_vector());  // the original is untouched
  Tensor i = Tensor::from_ints({2}, {7, 8}).clone();
  EXPECT_EQ(i.data<int32_t>()[1], 8);
}

TEST(Tensor, CopyFromWritesThroughViewsAndChecksShape) {
  Tensor a = Tensor::zeros({3, 5});
  a.cols(1, 3).copy_from(iota(3, 2));
  EXPECT_EQ(a.to_vector(), (std::vector<float>{0, 0, 1, 0, 0, 0, 2, 3, 0, 0, 0, 4, 5, 0, 0}));
  Tensor b = Tensor::zeros({3, 2});
  b.copy_from(a.cols(1, 3));  // strided source
  EXPECT_EQ(b.to_vector(), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_THROW(b.copy_from(Tensor::zeros({2, 3})), Error);
  EXPECT_THROW(b.copy_from(Tensor::zeros({3, 2}, DType::I32)), Error);
  a.cols(3, 5).zero();
  a.cols(0, 1).fill(7);
  EXPECT_EQ(a.to_vector(), (std::vector<float>{7, 0, 1, 0, 0, 7, 2, 3, 0, 0, 7, 4, 5, 0, 0}));
}

}  // namespace
}  // namespace ampipe
