// GPU tests: skip with the reason where no GPU can be used (no CUDA build, no driver, no device), so
// the suite runs everywhere and CI builds every GPU test; scripts/gpu_check.sh runs them on a GPU.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"

#define AMPIPE_REQUIRE_GPU()                                              \
  do {                                                                    \
    const std::string ampipe_gpu_reason_ = ::ampipe::cuda_unavailable_reason(); \
    if (!ampipe_gpu_reason_.empty()) GTEST_SKIP() << ampipe_gpu_reason_;  \
  } while (0)

namespace ampipe::testing {

// The GPU emulator (-DAMPIPE_CUDA=EMULATE, docs/GPU.md) runs every CUDA thread as a fiber on the CPU,
// a few million threads a second: tests whose sizes only exist to keep a real GPU busy shrink under
// it (each such test says so where it picks its size).
#if AMPIPE_GPU_EMULATOR
inline constexpr bool kEmulatedGpu = true;
#else
inline constexpr bool kEmulatedGpu = false;
#endif
// A size for a real GPU, the emulator, and the emulator under ThreadSanitizer (about 20x slower).
inline constexpr int64_t gpu_test_size(int64_t real, int64_t emulated) {
#if defined(__SANITIZE_THREAD__)
  return kEmulatedGpu ? emulated / 16 : real;
#else
  return kEmulatedGpu ? emulated : real;
#endif
}

// Largest |a - b| / max(|b|, floor) over the elements (b is the reference); reports the worst index.
inline double max_relative_error(const std::vector<float>& a, const std::vector<float>& b, double floor = 1e-3,
                                 size_t* worst = nullptr) {
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i])) / std::max(std::abs(double(b[i])), floor);
    if (d > m) {
      m = d;
      if (worst) *worst = i;
    }
  }
  return m;
}

}  // namespace ampipe::testing
