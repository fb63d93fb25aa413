// Comparing an analytic gradient with a numeric (finite-difference or float64) reference under a
// criterion that a zero or sign-flipped gradient cannot pass, unlike `|a - n| <= atol + rtol |n|`
// with an atol as large as the gradients themselves.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace ampipe::testing {

struct GradientTolerance {
  // Elements with |numeric| > floor must agree in sign and satisfy |a - n| <= atol + rtol |n|;
  // atol < floor / 2 and rtol < 1/2 make a zero or negated gradient fail there. Elements with
  // |numeric| <= floor must have |a - n| <= floor (so |analytic| is small too).
  double floor = 1e-3;
  double atol = 3e-4;
  double rtol = 0.03;
  // Over the whole vector (when |numeric|_2 > floor): cosine(a, n) > min_cosine and
  // |a - n|_2 / |n|_2 < max_relative_l2.
  double min_cosine = 0.999;
  double max_relative_l2 = 1e-2;
};

// One scalar (a directional derivative): the per-element criterion alone.
inline bool gradient_element_ok(double analytic, double numeric, const GradientTolerance& tol) {
  if (!std::isfinite(analytic) || !std::isfinite(numeric)) return false;
  if (std::abs(numeric) <= tol.floor) return std::abs(analytic - numeric) <= tol.floor;
  return (analytic > 0) == (numeric > 0) &&
         std::abs(analytic - numeric) <= tol.atol + tol.rtol * std::abs(numeric);
}

// Every element and the aggregate; failures name `what` and the first few offending elements.
inline void expect_gradient_matches(const std::vector<double>& analytic, const std::vector<double>& numeric,
                                    const GradientTolerance& tol, const std::string& what) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  int64_t bad = 0;
  std::ostringstream first;
  double dot = 0, aa = 0, nn = 0, diff = 0;
  for (size_t i = 0; i < analytic.size(); ++i) {
    const double a = analytic[i], n = numeric[i];
    if (!gradient_element_ok(a, n, tol)) {
      if (bad < 5) first << " [" << i << "] analytic " << a << " numeric " << n << ";";
      ++bad;
    }
    dot += a * n;
    aa += a * a;
    nn += n * n;
    diff += (a - n) * (a - n);
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << analytic.size() << " elements differ:" << first.str();
  if (std::sqrt(nn) > tol.floor) {
    const double cosine = aa > 0 ? dot / std::sqrt(aa * nn) : 0.0;
    EXPECT_GT(cosine, tol.min_cosine) << what << ": cosine similarity of analytic and numeric gradients";
    EXPECT_LT(std::sqrt(diff / nn), tol.max_relative_l2) << what << ": relative L2 error";
  }
}

}  // namespace ampipe::testing
