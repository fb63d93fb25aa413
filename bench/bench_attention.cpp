// Causal attention forward / backward throughput against the sgemm rate measured in the same run.
//
//   bench_attention [--threads N] [--repeats R]
//
// Cases: d = 512, 8 heads (hd = 64), B = 1, N in {1024, 2048, 4096}; q, k, v are column slices of a
// fused [N, 3d] buffer, as in the model. FLOPs count the causal half of the matmuls only:
// forward 4 * N^2 * d / 2, backward 2.5x that (exp and masking are overhead). Each time is the
// median of R runs after one warm-up; the runs of all cases are interleaved, so a slow spell on a
// shared machine slows the sgemm ceiling and the attention cases alike. Prints one human line and
// one JSON line per case, each with the ratio to the sgemm rate.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/random.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"

namespace {

using namespace ampipe;
using bench::median;
using bench::seconds_of;

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal());
  return t;
}

// One timed kernel: what it runs, its FLOPs, its configuration and its samples.
struct Case {
  std::string kernel;
  nlohmann::json config;
  double flops;
  std::function<void()> run;
  std::vector<double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, repeats = 5;
  CLI::App app{
      "bench_attention: causal attention forward / backward (d = 512, 8 heads, N = 1024, 2048, "
      "4096) against the sgemm rate measured in the same run"};
  app.add_option("--threads", threads, "Compute threads (kernels and BLAS)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "Timed runs per case (after one warm-up); each time is their median")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  kernels::set_kernel_threads(threads);

  std::vector<Case> cases;
  // The ceiling: a large sgemm through the same BLAS, same thread count.
  const int64_t gm = 2048, gn = 2048, gk = 512;
  Tensor a = random_tensor({gm, gk}, 1), b = random_tensor({gk, gn}, 2), c = Tensor::empty({gm, gn});
  cases.push_back({"sgemm",
                   {{"m", gm}, {"n", gn}, {"k", gk}},
                   2.0 * gm * gn * gk,
                   [&] { kernels::gemm(a, false, b, false, c); },
                   {}});

  const int64_t d = 512, heads = 8, batch = 1;
  for (const int64_t n : {1024, 2048, 4096}) {
    // The lambdas hold these tensor handles (shared storage) for the rest of the run.
    const Tensor qkv = random_tensor({batch * n, 3 * d}, 10 + n), dqkv = Tensor::zeros({batch * n, 3 * d});
    const Tensor q = qkv.cols(0, d), k = qkv.cols(d, 2 * d), v = qkv.cols(2 * d, 3 * d);
    const Tensor dq = dqkv.cols(0, d), dk = dqkv.cols(d, 2 * d), dv = dqkv.cols(2 * d, 3 * d);
    const Tensor out = Tensor::empty({batch * n, d}), lse = Tensor::empty({batch, heads, n});
    const Tensor dout = random_tensor({batch * n, d}, 20 + n);
    const kernels::AttentionShape shape{batch, heads, 0, n, n};
    const nlohmann::json config = {{"N", n}, {"d", d}, {"heads", heads}, {"B", batch}};
    const double forward_flops = 4.0 * n * n * d / 2 * batch;
    cases.push_back({"attention_fwd",
                     config,
                     forward_flops,
                     [=] { kernels::attention_forward(q, k, v, shape, out, lse); },
                     {}});
    cases.push_back({"attention_bwd",
                     config,
                     2.5 * forward_flops,
                     [=] { kernels::attention_backward(q, k, v, out, lse, dout, shape, dq, dk, dv); },
                     {}});
  }

  // Warm up, then take the samples round-robin, so that a slow spell on a shared machine touches
  // the sgemm ceiling and the attention cases alike.
  for (Case& cs : cases) cs.run();
  for (int r = 0; r < repeats; ++r)
    for (Case& cs : cases) cs.seconds.push_back(seconds_of(cs.run));

  const double gemm_gflops = cases[0].flops / median(cases[0].seconds) * 1e-9;
  for (const Case& cs : cases) {
    const double seconds = median(cs.seconds), gflops = cs.flops / seconds * 1e-9;
    std::printf("%-14s %-36s threads=%d  %9.3f ms  %7.1f GFLOP/s  %5.2f of sgemm\n", cs.kernel.c_str(),
                cs.config.dump().c_str(), threads, seconds * 1e3, gflops, gflops / gemm_gflops);
    nlohmann::json row = {{"bench", "attention"},       {"kernel", cs.kernel},
                          {"threads", threads},         {"repeats", repeats},
                          {"ms", seconds * 1e3},        {"gflops", gflops},
                          {"gemm_gflops", gemm_gflops}, {"ratio_to_gemm", gflops / gemm_gflops}};
    row.update(cs.config);
    std::printf("%s\n", row.dump().c_str());
  }
  return 0;
}
