// Deterministic random numbers, identical on every platform and standard library (the C++
// distributions are not), so a seed names one initialisation and one data order everywhere.
#pragma once

#include <cmath>
#include <cstdint>

namespace ampipe {

// A well-mixed 64-bit value from several inputs: nearby inputs give unrelated outputs, so it can
// seed independent streams (Rng(seed + i) would not: splitmix64 streams seeded a multiple of its
// increment apart are the same stream shifted).
inline uint64_t mix_seed(uint64_t a, uint64_t b) {
  auto splitmix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  return splitmix(splitmix(a) ^ (b * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // splitmix64: 64 uniformly distributed bits.
  uint64_t next_u64() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return next_u64() % n; }
  // Standard normal (Box-Muller; one value per call, the pair's sibling discarded for simplicity).
  double normal() {
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

}  // namespace ampipe
