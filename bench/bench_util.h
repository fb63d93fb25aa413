// What the benchmarks (bench/*.cpp) share: wall time of a call, and the median of samples.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace ampipe::bench {

// Seconds fn takes, by the steady clock.
inline double seconds_of(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The median of non-empty samples (the upper one of an even count).
inline double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace ampipe::bench
