// LayerNorm and RMSNorm forward/backward against float64 references and finite differences.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "test_util.h"
#include "thread_invariance.h"

namespace ampipe::kernels {
namespace {

using ampipe::testing::expect_close;
using ampipe::testing::finite_difference;
using ampipe::testing::random_tensor;
using ampipe::testing::to_double;

struct RC {
  int64_t rows, cols;
};
const RC kShapes[] = {{1, 1}, {1, 17}, {3, 17}, {17, 3}, {130, 64}, {300, 130}, {5, 1031}};

struct Reference {
  std::vector<double> y, mean, rstd;
};

Reference layernorm_ref(const std::vector<double>& x, const std::vector<double>& w,
                        const std::vector<double>& b, int64_t rows, int64_t cols, double eps = 1e-5) {
  Reference r{std::vector<double>(x.size()), std::vector<double>(rows), std::vector<double>(rows)};
  for (int64_t i = 0; i < rows; ++i) {
    double mu = 0;
    for (int64_t j = 0; j < cols; ++j) mu += x[i * cols + j];
    mu /= cols;
    double var = 0;
    for (int64_t j = 0; j < cols; ++j) var += (x[i * cols + j] - mu) * (x[i * cols + j] - mu);
    var /= cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    r.mean[i] = mu;
    r.rstd[i] = rs;
    for (int64_t j = 0; j < cols; ++j) r.y[i * cols + j] = (x[i * cols + j] - mu) * rs * w[j] + b[j];
  }
  return r;
}

struct Grads {
  std::vector<double> dx, dw, db;
};

// Analytic gradients of sum(dy * layernorm(x)) in double.
Grads layernorm_backward_ref(const std::vector<double>& dy, const std::vector<double>& x,
                             const std::vector<double>& w, int64_t rows, int64_t cols) {
  Grads g{std::vector<double>(x.size()), std::vector<double>(cols, 0.0), std::vector<double>(cols, 0.0)};
  const Reference r = layernorm_ref(x, w, std::vector<double>(cols, 0.0), rows, cols);
  for (int64_t i = 0; i < rows; ++i) {
    double mean_g = 0, mean_gx = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double xh = (x[i * cols + j] - r.mean[i]) * r.rstd[i];
      const double gj = dy[i * cols + j] * w[j];
      mean_g += gj;
      mean_gx += gj * xh;
      g.dw[j] += dy[i * cols + j] * xh;
      g.db[j] += dy[i * cols + j];
    }
    mean_g /= cols;
    mean_gx /= cols;
    for (int64_t j = 0; j < cols; ++j) {
      const double xh = (x[i * cols + j] - r.mean[i]) * r.rstd[i];
      g.dx[i * cols + j] = r.rstd[i] * (dy[i * cols + j] * w[j] - mean_g - xh * mean_gx);
    }
  }
  return g;
}

std::vector<double> plus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> c(a.size());
  for (size_t i = 0; i < a.size(); ++i) c[i] = a[i] + b[i];
  return c;
}

TEST(LayerNorm, ForwardMatchesReference) {
  uint64_t seed = 1;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed, 2.0f);
    Tensor w = random_tensor({s.cols}, ++seed);
    Tensor b = random_tensor({s.cols}, ++seed);
    Tensor y = Tensor::empty({s.rows, s.cols});
    Tensor mean = Tensor::empty({s.rows});
    Tensor rstd = Tensor::empty({s.rows});
    layernorm_forward(x, w, b, y, mean, rstd);
    const Reference r = layernorm_ref(to_double(x), to_double(w), to_double(b), s.rows, s.cols);
    expect_close(y, r.y, 1e-5, 1e-4, "y");
    expect_close(mean, r.mean, 1e-6, 1e-5, "mean");
    // A row of one element has variance 0: rstd = 1/sqrt(eps) ~ 316.
    expect_close(rstd, r.rstd, 1e-6, 1e-5, "rstd");
  }
}

TEST(LayerNorm, ForwardAccurateForLargeMeanSmallVariance) {
  // One-pass E[x^2] - E[x]^2 in float would lose the variance entirely here.
  Tensor x = random_tensor({17, 130}, 5, 0.01f);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] += 300.0f;
  Tensor w = random_tensor({130}, 6);
  Tensor b = random_tensor({130}, 7);
  Tensor y = Tensor::empty({17, 130});
  Tensor mean = Tensor::empty({17});
  Tensor rstd = Tensor::empty({17});
  layernorm_forward(x, w, b, y, mean, rstd);
  const Reference r = layernorm_ref(to_double(x), to_double(w), to_double(b), 17, 130);
  expect_close(rstd, r.rstd, 1e-6, 1e-5, "rstd");
  // x - mean in float carries the rounding of the float mean (ulp(300) ~ 3e-5 against std 0.01).
  expect_close(y, r.y, 1e-2, 1e-2, "y");
}

TEST(LayerNorm, ForwardHonoursColumnSliceViews) {
  Tensor xbuf = random_tensor({13, 60}, 1);
  Tensor x = xbuf.cols(10, 27);
  Tensor ybuf = Tensor::zeros({13, 40});
  Tensor y = ybuf.cols(20, 37);
  Tensor w = random_tensor({17}, 2);
  Tensor b = random_tensor({17}, 3);
  Tensor mean = Tensor::empty({13});
  Tensor rstd = Tensor::empty({13});
  layernorm_forward(x, w, b, y, mean, rstd);
  const Reference r = layernorm_ref(to_double(x), to_double(w), to_double(b), 13, 17);
  expect_close(y, r.y, 1e-5, 1e-4, "y");
  const std::vector<float> all = ybuf.to_vector();
  for (int64_t i = 0; i < 13; ++i) {
    EXPECT_EQ(all[i * 40 + 19], 0.0f);
    EXPECT_EQ(all[i * 40 + 37], 0.0f);
  }
}

TEST(LayerNorm, BackwardMatchesReferenceAndAccumulatesParameterGradients) {
  uint64_t seed = 100;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed, 2.0f);
    Tensor w = random_tensor({s.cols}, ++seed);
    Tensor b = random_tensor({s.cols}, ++seed);
    Tensor dy = random_tensor({s.rows, s.cols}, ++seed);
    Tensor y = Tensor::empty({s.rows, s.cols});
    Tensor mean = Tensor::empty({s.rows});
    Tensor rstd = Tensor::empty({s.rows});
    layernorm_forward(x, w, b, y, mean, rstd);
    Tensor dx = Tensor::empty({s.rows, s.cols});
    Tensor dw = random_tensor({s.cols}, ++seed);  // accumulated into
    Tensor db = random_tensor({s.cols}, ++seed);
    const std::vector<double> dw0 = to_double(dw);
    const std::vector<double> db0 = to_double(db);
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    const Grads g = layernorm_backward_ref(to_double(dy), to_double(x), to_double(w), s.rows, s.cols);
    // A one-column row has rstd ~ 316 and a zero gradient up to float rounding.
    expect_close(dx, g.dx, s.cols == 1 ? 1e-3 : 1e-5, 1e-4, "dx");
    expect_close(dw, plus(dw0, g.dw), 1e-5, 1e-4, "dweight");
    expect_close(db, plus(db0, g.db), 1e-5, 1e-4, "dbias");
  }
}

TEST(LayerNorm, BackwardMatchesFiniteDifferences) {
  const RC shapes[] = {{1, 2}, {3, 5}, {4, 17}};
  uint64_t seed = 200;
  for (const RC& s : shapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    Tensor x = random_tensor({s.rows, s.cols}, ++seed);
    Tensor w = random_tensor({s.cols}, ++seed);
    Tensor b = random_tensor({s.cols}, ++seed);
    Tensor dy = random_tensor({s.rows, s.cols}, ++seed);
    Tensor y = Tensor::empty({s.rows, s.cols});
    Tensor mean = Tensor::empty({s.rows});
    Tensor rstd = Tensor::empty({s.rows});
    layernorm_forward(x, w, b, y, mean, rstd);
    Tensor dx = Tensor::empty({s.rows, s.cols});
    Tensor dw = Tensor::zeros({s.cols});
    Tensor db = Tensor::zeros({s.cols});
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);

    std::vector<double> xv = to_double(x), wv = to_double(w), bv = to_double(b);
    const std::vector<double> gv = to_double(dy);
    auto loss = [&] {
      const Reference r = layernorm_ref(xv, wv, bv, s.rows, s.cols);
      double sum = 0;
      for (size_t i = 0; i < r.y.size(); ++i) sum += r.y[i] * gv[i];
      return sum;
    };
    expect_close(dx, finite_difference(xv, loss), 1e-5, 1e-4, "dx vs finite differences");
    expect_close(dw, finite_difference(wv, loss), 1e-5, 1e-4, "dweight vs finite differences");
    expect_close(db, finite_difference(bv, loss), 1e-5, 1e-4, "dbias vs finite differences");
  }
}

TEST(LayerNorm, ShapeMismatchThrows) {
  Tensor x = Tensor::zeros({3, 4});
  Tensor y = Tensor::zeros({3, 4});
  Tensor mean = Tensor::zeros({3});
  Tensor rstd = Tensor::zeros({3});
  EXPECT_THROW(layernorm_forward(x, Tensor::zeros({5}), Tensor::zeros({4}), y, mean, rstd), Error);
  EXPECT_THROW(layernorm_forward(x, Tensor::zeros({4}), Tensor::zeros({4}), y, Tensor::zeros({2}), rstd),
               Error);
  EXPECT_THROW(layernorm_backward(y, x, Tensor::zeros({4}), mean, rstd, Tensor::zeros({3, 5}),
                                  Tensor::zeros({4}), Tensor::zeros({4})),
               Error);
}

// Bitwise identical across repeated runs and at 1, 2 and 3 threads (dweight / dbias sum fixed row
// blocks in block order; see kernels/cpu/layernorm.cpp).
TEST(LayerNorm, RepeatedRunsAndThreadCountsAreBitwiseIdentical) {
  const int64_t rows = 1000, cols = 130;
  Tensor x = random_tensor({rows, cols}, 1);
  Tensor w = random_tensor({cols}, 2);
  Tensor b = random_tensor({cols}, 3);
  Tensor dy = random_tensor({rows, cols}, 4);
  ampipe::testing::expect_bitwise_identical_runs([&] {
    Tensor mean = Tensor::empty({rows});
    Tensor rstd = Tensor::empty({rows});
    Tensor y = Tensor::empty({rows, cols});
    layernorm_forward(x, w, b, y, mean, rstd);
    Tensor dx = Tensor::empty({rows, cols});
    Tensor dw = Tensor::zeros({cols});
    Tensor db = Tensor::zeros({cols});
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    std::vector<float> all;
    for (const Tensor& t : {y, mean, rstd, dx, dw, db}) ampipe::testing::append_values(all, t);
    return all;
  });
}

TEST(LayerNorm, ForwardHonoursNonDefaultEps) {
  // Rows of small spread, so eps = 0.1 dominates the variance and changes the output.
  Tensor x = random_tensor({9, 37}, 301, 0.1f);
  Tensor w = random_tensor({37}, 302);
  Tensor b = random_tensor({37}, 303);
  Tensor y = Tensor::empty({9, 37});
  Tensor mean = Tensor::empty({9});
  Tensor rstd = Tensor::empty({9});
  layernorm_forward(x, w, b, y, mean, rstd, 0.1f);
  const Reference r = layernorm_ref(to_double(x), to_double(w), to_double(b), 9, 37, 0.1f);
  expect_close(y, r.y, 1e-6, 1e-5, "y");
  expect_close(rstd, r.rstd, 1e-7, 1e-6, "rstd");
  const Reference r_default = layernorm_ref(to_double(x), to_double(w), to_double(b), 9, 37);
  EXPECT_GT(std::abs(to_double(rstd)[0] - r_default.rstd[0]), 1.0) << "eps was ignored";
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsReference {
  std::vector<double> y, rstd;
};

RmsReference rmsnorm_ref(const std::vector<double>& x, const std::vector<double>& w, int64_t rows,
                         int64_t cols, double eps) {
  RmsReference r{std::vector<double>(x.size()), std::vector<double>(rows)};
  for (int64_t i = 0; i < rows; ++i) {
    double ms = 0;
    for (int64_t j = 0; j < cols; ++j) ms += x[i * cols + j] * x[i * cols + j];
    ms /= cols;
    r.rstd[i] = 1.0 / std::sqrt(ms + eps);
    for (int64_t j = 0; j < cols; ++j) r.y[i * cols + j] = x[i * cols + j] * r.rstd[i] * w[j];
  }
  return r;
}

struct RmsGrads {
  std::vector<double> dx, dw;
};

// Analytic gradients of sum(dy * rmsnorm(x)) in double.
RmsGrads rmsnorm_backward_ref(const std::vector<double>& dy, const std::vector<double>& x,
                              const std::vector<double>& w, int64_t rows, int64_t cols, double eps) {
  RmsGrads g{std::vector<double>(x.size()), std::vector<double>(cols, 0.0)};
  const RmsReference r = rmsnorm_ref(x, w, rows, cols, eps);
  for (int64_t i = 0; i < rows; ++i) {
    double mean_gx = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double xh = x[i * cols + j] * r.rstd[i];
      mean_gx += dy[i * cols + j] * w[j] * xh;
      g.dw[j] += dy[i * cols + j] * xh;
    }
    mean_gx /= cols;
    for (int64_t j = 0; j < cols; ++j)
      g.dx[i * cols + j] = r.rstd[i] * (dy[i * cols + j] * w[j] - x[i * cols + j] * r.rstd[i] * mean_gx);
  }
  return g;
}

TEST(RMSNorm, ForwardMatchesReference) {
  uint64_t seed = 400;
  for (const float eps : {1e-5f, 1e-6f}) {
    for (const RC& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " eps " << eps);
      Tensor x = random_tensor({s.rows, s.cols}, ++seed, 2.0f);
      Tensor w = random_tensor({s.cols}, ++seed);
      Tensor y = Tensor::empty({s.rows, s.cols});
      Tensor rstd = Tensor::empty({s.rows});
      rmsnorm_forward(x, w, y, rstd, eps);
      const RmsReference r = rmsnorm_ref(to_double(x), to_double(w), s.rows, s.cols, eps);
      expect_close(y, r.y, 1e-5, 1e-5, "y");
      expect_close(rstd, r.rstd, 1e-7, 1e-6, "rstd");
    }
  }
}

TEST(RMSNorm, ForwardHonoursEps) {
  // Mean square ~0.01: eps = 0.05 changes rstd by a factor of ~2.5.
  Tensor x = random_tensor({5, 19}, 410, 0.1f);
  Tensor w = random_tensor({19}, 411);
  Tensor y = Tensor::empty({5, 19});
  Tensor rstd = Tensor::empty({5});
  rmsnorm_forward(x, w, y, rstd, 0.05f);
  const RmsReference r = rmsnorm_ref(to_double(x), to_double(w), 5, 19, 0.05f);
  expect_close(y, r.y, 1e-6, 1e-5, "y");
  expect_close(rstd, r.rstd, 1e-7, 1e-6, "rstd");
  const RmsReference r_small = rmsnorm_ref(to_double(x), to_double(w), 5, 19, 1e-6);
  EXPECT_GT(std::abs(to_double(rstd)[0] - r_small.rstd[0]), 1.0) << "eps was ignored";
  // All-zero rows: rstd = 1 / sqrt(eps), y = 0.
  Tensor zeros = Tensor::zeros({2, 8});
  Tensor y0 = Tensor::empty({2, 8});
  Tensor rstd0 = Tensor::empty({2});
  rmsnorm_forward(zeros, random_tensor({8}, 412), y0, rstd0, 0.25f);
  expect_close(rstd0, {2.0, 2.0}, 0, 1e-7, "rstd of a zero row");
  expect_close(y0, std::vector<double>(16, 0.0), 1e-30, 0, "y of a zero row");
}

TEST(RMSNorm, BackwardMatchesReferenceAndAccumulatesDweight) {
  uint64_t seed = 500;
  for (const RC& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols);
    const float eps = 1e-5f;
    Tensor x = random_tensor({s.rows, s.cols}, ++seed, 2.0f);
    Tensor w = random_tensor({s.cols}, ++seed);
    Tensor dy = random_tensor({s.rows, s.cols}, ++seed);
    Tensor y = Tensor::empty({s.rows, s.cols});
    Tensor rstd = Tensor::empty({s.rows});
    rmsnorm_forward(x, w, y, rstd, eps);
    Tensor dx = random_tensor({s.rows, s.cols}, ++seed);  // overwritten
    Tensor dw = random_tensor({s.cols}, ++seed);          // accumulated into
    const std::vector<double> dw0 = to_double(dw);
    rmsnorm_backward(dy, x, w, rstd, dx, dw);
    const RmsGrads g = rmsnorm_backward_ref(to_double(dy), to_double(x), to_double(w), s.rows, s.cols, eps);
    expect_close(dx, g.dx, 1e-5, 1e-4, "dx");
    expect_close(dw, plus(dw0, g.dw), 1e-5, 1e-4, "dweight");
  }
}

// Central differences of the float64 forward, for dense inputs and for row-strided views of wider
// buffers (x, dy, dx column slices); 70 rows span two reduction blocks of dweight.
TEST(RMSNorm, BackwardMatchesFiniteDifferencesIncludingStridedViews) {
  const RC shapes[] = {{1, 2}, {3, 5}, {4, 17}, {9, 24}, {70, 3}};
  uint64_t seed = 600;
  for (const bool strided : {false, true}) {
    for (const RC& s : shapes) {
      SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << (strided ? " strided" : " dense"));
      const float eps = 1e-3f;
      auto make = [&](uint64_t sd) {
        if (!strided) return random_tensor({s.rows, s.cols}, sd);
        return random_tensor({s.rows, s.cols + 7}, sd).cols(3, 3 + s.cols);
      };
      Tensor x = make(++seed);
      Tensor dy = make(++seed);
      Tensor dx = make(++seed);
      Tensor w = random_tensor({s.cols}, ++seed);
      Tensor y =
          strided ? Tensor::zeros({s.rows, s.cols + 5}).cols(5, 5 + s.cols) : Tensor::empty({s.rows, s.cols});
      Tensor rstd = Tensor::empty({s.rows});
      rmsnorm_forward(x, w, y, rstd, eps);
      std::vector<double> xv = to_double(x), wv = to_double(w);
      expect_close(y, rmsnorm_ref(xv, wv, s.rows, s.cols, eps).y, 1e-5, 1e-5, "y");
      Tensor dw = Tensor::zeros({s.cols});
      rmsnorm_backward(dy, x, w, rstd, dx, dw);

      const std::vector<double> gv = to_double(dy);
      auto loss = [&] {
        const RmsReference r = rmsnorm_ref(xv, wv, s.rows, s.cols, eps);
        double sum = 0;
        for (size_t i = 0; i < r.y.size(); ++i) sum += r.y[i] * gv[i];
        return sum;
      };
      expect_close(dx, finite_difference(xv, loss), 1e-5, 1e-4, "dx vs finite differences");
      expect_close(dw, finite_difference(wv, loss), 1e-5, 1e-4, "dweight vs finite differences");
    }
  }
}

TEST(RMSNorm, ShapeMismatchThrowsNamingTheTensor) {
  Tensor x = Tensor::zeros({3, 4});
  Tensor y = Tensor::zeros({3, 4});
  Tensor rstd = Tensor::zeros({3});
  EXPECT_THROW(rmsnorm_forward(x, Tensor::zeros({4}), y, Tensor::zeros({2}), 1e-5f), Error);
  EXPECT_THROW(rmsnorm_backward(y, x, Tensor::zeros({4}), rstd, Tensor::zeros({3, 5}), Tensor::zeros({4})),
               Error);
  try {
    rmsnorm_forward(x, Tensor::zeros({5}), y, rstd, 1e-5f);
    FAIL() << "a weight of the wrong size was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight [5] must be [4]"), std::string::npos) << e.what();
  }
}

// LayerNorm and RMSNorm give bit-identical results at 1 and 2 threads (fixed reduction blocks).
TEST(Norms, ResultsDoNotDependOnThreadCount) {
  const int saved = num_threads();
  const int64_t rows = 1000, cols = 130;
  Tensor x = random_tensor({rows, cols}, 1);
  Tensor w = random_tensor({cols}, 2);
  Tensor b = random_tensor({cols}, 3);
  Tensor dy = random_tensor({rows, cols}, 4);
  std::vector<std::vector<float>> runs;
  for (const int threads : {1, 2}) {
    set_kernel_threads(threads);
    Tensor mean = Tensor::empty({rows}), rstd = Tensor::empty({rows});
    Tensor y = Tensor::empty({rows, cols}), dx = Tensor::empty({rows, cols});
    Tensor dw = Tensor::zeros({cols}), db = Tensor::zeros({cols});
    layernorm_forward(x, w, b, y, mean, rstd);
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    Tensor rms_rstd = Tensor::empty({rows}), rms_y = Tensor::empty({rows, cols});
    Tensor rms_dx = Tensor::empty({rows, cols}), rms_dw = Tensor::zeros({cols});
    rmsnorm_forward(x, w, rms_y, rms_rstd, 1e-6f);
    rmsnorm_backward(dy, x, w, rms_rstd, rms_dx, rms_dw);
    std::vector<float> all;
    for (const Tensor& t : {y, dx, dw, db, rms_y, rms_rstd, rms_dx, rms_dw}) {
      const std::vector<float> v = t.to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    runs.push_back(all);
  }
  set_kernel_threads(saved);
  ASSERT_EQ(runs[0].size(), runs[1].size());
  EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)));
}

}  // namespace
}  // namespace ampipe::kernels
