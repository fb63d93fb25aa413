// Helpers shared by the tests: random tensors, float64 reference comparisons, finite differences.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "core/tensor.h"

namespace ampipe::testing {

// Runs fn and returns the ampipe::Error message it throws ("" and a test failure if none).
template <class Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ampipe::Error was thrown";
  return "";
}

// A fresh, empty directory TempDir()/ampipe_<name>_<pid> (removed first if it exists).
inline std::string fresh_temp_dir(const std::string& name) {
  const std::filesystem::path p =
      std::filesystem::path(::testing::TempDir()) / ("ampipe_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// n int32 ids drawn uniformly from [0, vocab) with a fixed seed (small vocabularies repeat ids).
inline Tensor random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  return Tensor::from_ints({n}, t);
}

// A float tensor of N(0, scale^2) values from a fixed seed.
inline Tensor random_tensor(const Shape& shape, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal()) * scale;
  return t;
}

inline std::vector<double> to_double(const Tensor& t) {
  std::vector<float> f = t.to_vector();
  return std::vector<double>(f.begin(), f.end());
}

// Max over elements of |a - b| / (atol + rtol * |b|) must be <= 1.
inline void expect_close(const std::vector<double>& actual, const std::vector<double>& expected, double atol,
                         double rtol, const char* what = "") {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    double err = std::abs(actual[i] - expected[i]) / (atol + rtol * std::abs(expected[i]));
    if (!(err <= worst)) {  // also catches NaN
      worst = std::isnan(err) ? INFINITY : err;
      worst_i = i;
    }
  }
  EXPECT_LE(worst, 1.0) << what << ": element " << worst_i << " actual " << actual[worst_i] << " expected "
                        << expected[worst_i];
}

inline void expect_close(const Tensor& actual, const std::vector<double>& expected, double atol, double rtol,
                         const char* what = "") {
  expect_close(to_double(actual), expected, atol, rtol, what);
}

// Central finite difference of a scalar function of x (modified in place and restored) in float64.
inline std::vector<double> finite_difference(std::vector<double>& x, const std::function<double()>& f,
                                             double h = 1e-5) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double saved = x[i];
    x[i] = saved + h;
    double fp = f();
    x[i] = saved - h;
    double fm = f();
    x[i] = saved;
    grad[i] = (fp - fm) / (2 * h);
  }
  return grad;
}

}  // namespace ampipe::testing
