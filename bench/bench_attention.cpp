// Causal attention forward / backward throughput against the sgemm rate measured in the same run.
//
//   bench_attention [--threads N] [--repeats R]
//
// Cases: d = 512, 8 heads (hd = 64), B = 1, N in {1024, 2048, 4096}; q, k, v are column slices of a
// fused [N, 3d] buffer, as in the model. FLOPs count the causal half of the matmuls only:
// forward 4 * N^2 * d / 2, backward 2.5x that (exp and masking are overhead). Each time is the
// median of R runs after one warm-up. Prints one human line and one JSON line per case.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/parallel.h"
#include "core/random.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"

namespace {

using namespace ampipe;

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal());
  return t;
}

// Median seconds of `repeats` calls after one warm-up.
double median_seconds(int repeats, const std::function<void()>& fn) {
  fn();
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void report(const std::string& kernel, const nlohmann::json& config, double seconds, double flops, double gemm_gflops,
            int threads) {
  const double gflops = flops / seconds * 1e-9;
  std::printf("%-14s %-28s threads=%d  %9.3f ms  %7.1f GFLOP/s  %5.2f of sgemm\n", kernel.c_str(),
              config.dump().c_str(), threads, seconds * 1e3, gflops, gflops / gemm_gflops);
  nlohmann::json row = {{"bench", "attention"}, {"kernel", kernel},         {"threads", threads},
                        {"ms", seconds * 1e3},  {"gflops", gflops},         {"gemm_gflops", gemm_gflops},
                        {"ratio_to_gemm", gflops / gemm_gflops}};
  row.update(config);
  std::printf("%s\n", row.dump().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, repeats = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--threads" || arg == "--repeats") && i + 1 < argc) {
      const int value = std::atoi(argv[++i]);
      if (value < 1) {
        std::fprintf(stderr, "bench_attention: %s must be >= 1, got %s\n", arg.c_str(), argv[i]);
        return 2;
      }
      (arg == "--threads" ? threads : repeats) = value;
    } else {
      std::fprintf(stderr, "usage: bench_attention [--threads N] [--repeats R]\n");
      return 2;
    }
  }
  kernels::set_kernel_threads(threads);

  // The ceiling: a large sgemm through the same BLAS, same thread count.
  const int64_t gm = 2048, gn = 2048, gk = 512;
  Tensor a = random_tensor({gm, gk}, 1), b = random_tensor({gk, gn}, 2), c = Tensor::empty({gm, gn});
  const double gemm_seconds = median_seconds(repeats, [&] { kernels::gemm(a, false, b, false, c); });
  const double gemm_gflops = 2.0 * gm * gn * gk / gemm_seconds * 1e-9;
  std::printf("%-14s %-28s threads=%d  %9.3f ms  %7.1f GFLOP/s\n", "sgemm",
              ("{\"m\":" + std::to_string(gm) + ",\"n\":" + std::to_string(gn) + ",\"k\":" + std::to_string(gk) + "}")
                  .c_str(),
              threads, gemm_seconds * 1e3, gemm_gflops);
  std::printf("%s\n", nlohmann::json{{"bench", "attention"},
                                     {"kernel", "sgemm"},
                                     {"threads", threads},
                                     {"m", gm},
                                     {"n", gn},
                                     {"k", gk},
                                     {"ms", gemm_seconds * 1e3},
                                     {"gflops", gemm_gflops}}
                          .dump()
                          .c_str());

  const int64_t d = 512, heads = 8, batch = 1;
  for (const int64_t n : {1024, 2048, 4096}) {
    Tensor qkv = random_tensor({batch * n, 3 * d}, 10 + n);
    Tensor q = qkv.cols(0, d), k = qkv.cols(d, 2 * d), v = qkv.cols(2 * d, 3 * d);
    Tensor out = Tensor::empty({batch * n, d}), lse = Tensor::empty({batch, heads, n});
    Tensor dout = random_tensor({batch * n, d}, 20 + n);
    Tensor dqkv = Tensor::zeros({batch * n, 3 * d});
    Tensor dq = dqkv.cols(0, d), dk = dqkv.cols(d, 2 * d), dv = dqkv.cols(2 * d, 3 * d);
    const kernels::AttentionShape shape{batch, heads, 0, n, n};
    const nlohmann::json config = {{"N", n}, {"d", d}, {"heads", heads}, {"B", batch}};

    const double forward_flops = 4.0 * n * n * d / 2 * batch;
    const double forward_seconds =
        median_seconds(repeats, [&] { kernels::attention_forward(q, k, v, shape, out, lse); });
    report("attention_fwd", config, forward_seconds, forward_flops, gemm_gflops, threads);
    const double backward_seconds = median_seconds(
        repeats, [&] { kernels::attention_backward(q, k, v, out, lse, dout, shape, dq, dk, dv); });
    report("attention_bwd", config, backward_seconds, 2.5 * forward_flops, gemm_gflops, threads);
  }
  return 0;
}
