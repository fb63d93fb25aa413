// One transformer block (attention half + MoE half), forward + backward, against its FLOP bound.
//
//   ./build/bench_block [--threads 1] [--seq-length 2048] [--hidden-size 512] [--heads 8]
//                       [--experts 4] [--ffn 2048] [--top-k 1] [--repeats 5] [--json-out FILE]
//
// FLOP bound = block FLOPs (causal attention counted as half) / the sgemm rate measured in the same
// run on the block's expert-FFN GEMM shape. Prints the case, the median time and the ratio
// (time / bound; 1.0 is the limit), a per-stage breakdown, and one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/random.h"
#include "kernels/gemm.h"
#include "model/attention_layer.h"
#include "model/moe/moe_layer.h"

using namespace ampipe;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Tensor random_tensor(const Shape& shape, uint64_t seed, float scale) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal()) * scale;
  return t;
}

double gemm_rate(int64_t m, int64_t n, int64_t k, int repeats) {
  Tensor a = random_tensor({m, k}, 1, 1.0f), b = random_tensor({n, k}, 2, 1.0f), c = Tensor::empty({m, n});
  kernels::gemm(a, false, b, true, c);
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    kernels::gemm(a, false, b, true, c);
    times.push_back(seconds_since(t0));
  }
  return 2.0 * m * n * k / median(times);
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args = {{"--threads", "1"}, {"--seq-length", "2048"}, {"--hidden-size", "512"},
                                             {"--heads", "8"},   {"--experts", "4"},       {"--ffn", "2048"},
                                             {"--top-k", "1"},   {"--repeats", "5"},       {"--json-out", ""}};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help")) {
      std::printf("usage: bench_block");
      for (auto& [k, v] : args) std::printf(" [%s %s]", k.c_str(), v.empty() ? "FILE" : v.c_str());
      std::printf("\n");
      return 0;
    }
    if (!args.count(argv[i]) || i + 1 >= argc) {
      std::fprintf(stderr, "bench_block: unknown flag or missing value: %s (try --help)\n", argv[i]);
      return 2;
    }
    args[argv[i]] = argv[i + 1];
    ++i;
  }
  const int threads = std::atoi(args["--threads"].c_str());
  const int64_t N = std::atoll(args["--seq-length"].c_str()), d = std::atoll(args["--hidden-size"].c_str());
  const int64_t h = std::atoll(args["--heads"].c_str()), E = std::atoll(args["--experts"].c_str());
  const int64_t f = std::atoll(args["--ffn"].c_str()), k = std::atoll(args["--top-k"].c_str());
  const int repeats = std::max(1, std::atoi(args["--repeats"].c_str()));
  kernels::set_kernel_threads(std::max(1, threads));

  ModelConfig config;
  config.max_seq_len = N;
  config.hidden_size = d;
  config.num_attention_heads = h;
  config.num_experts = E;
  config.ffn_hidden_size = f;
  config.top_k = k;
  config.num_layers = 1;
  ParameterRegistry params;
  AttentionLayer attention(config, params, "blocks.0.");
  MoeLayer moe(config, params, "blocks.0.");
  uint64_t seed = 10;
  for (Parameter& p : params.all()) p.value.copy_from(random_tensor(p.value.shape(), seed++, 0.02f));
  for (const char* ln : {"blocks.0.ln1.weight", "blocks.0.ln2.weight"}) params.get(ln).value.fill(1.0f);
  Tensor x = random_tensor({N, d}, 1, 1.0f), dy = random_tensor({N, d}, 2, 1e-3f);

  const double rate = gemm_rate(N * k / E, f, d, repeats);  // one expert's fc1 GEMM
  std::map<std::string, std::vector<double>> stage;
  std::vector<double> total;
  for (int r = 0; r < repeats + 1; ++r) {
    AttentionContext actx;
    MoeContext mctx;
    RoutingStats stats;
    stats.reset(E);
    auto t0 = std::chrono::steady_clock::now();
    Tensor y1 = attention.forward(actx, x, 1, N);
    const double t_af = seconds_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    Tensor y2 = moe.forward(mctx, y1, stats);
    const double t_mf = seconds_since(t1);
    auto t2 = std::chrono::steady_clock::now();
    Tensor d1 = moe.backward(mctx, dy, stats, 0.01);
    const double t_mb = seconds_since(t2);
    auto t3 = std::chrono::steady_clock::now();
    Tensor d0 = attention.backward(actx, d1);
    const double t_ab = seconds_since(t3);
    if (r == 0) continue;  // warm-up
    total.push_back(seconds_since(t0));
    stage["attention fwd"].push_back(t_af);
    stage["moe fwd"].push_back(t_mf);
    stage["moe bwd"].push_back(t_mb);
    stage["attention bwd"].push_back(t_ab);
  }
  const double dN = static_cast<double>(N), dd = static_cast<double>(d), df = static_cast<double>(f);
  const double linear_fwd = 2 * dN * dd * 3 * dd + 2 * dN * dd * dd + 2 * dN * dd * E + 4.0 * k * dN * dd * df;
  const double attention_fwd = 2 * dN * dN * dd;  // QK^T and PV, causal half
  const double flops = 3 * linear_fwd + 3.5 * attention_fwd;
  const double t = median(total);
  const double bound = flops / rate;
  std::printf("block fwd+bwd  N=%lld d=%lld heads=%lld E=%lld f=%lld k=%lld threads=%d\n", (long long)N, (long long)d,
              (long long)h, (long long)E, (long long)f, (long long)k, threads);
  std::printf("  sgemm rate %.1f GFLOP/s (expert fc1 shape %lldx%lldx%lld)\n", rate / 1e9, (long long)(N * k / E),
              (long long)f, (long long)d);
  std::printf("  block FLOPs %.2f G, time %.1f ms (median of %d), FLOP bound %.1f ms, time/bound %.3f, %.1f GFLOP/s\n",
              flops / 1e9, t * 1e3, repeats, bound * 1e3, t / bound, flops / t / 1e9);
  for (auto& [name, v] : stage) std::printf("    %-14s %8.1f ms\n", name.c_str(), median(v) * 1e3);
  char json[512];
  std::snprintf(json, sizeof json,
                "{\"bench\":\"block\",\"seq_length\":%lld,\"hidden_size\":%lld,\"heads\":%lld,\"num_experts\":%lld,"
                "\"ffn\":%lld,\"top_k\":%lld,\"threads\":%d,\"gemm_gflops\":%.2f,\"block_gflop\":%.3f,\"time_ms\":%.3f,"
                "\"bound_ms\":%.3f,\"time_over_bound\":%.4f}",
                (long long)N, (long long)d, (long long)h, (long long)E, (long long)f, (long long)k, threads, rate / 1e9,
                flops / 1e9, t * 1e3, bound * 1e3, t / bound);
  std::printf("%s\n", json);
  if (!args["--json-out"].empty()) std::ofstream(args["--json-out"], std::ios::app) << json << "\n";
  return 0;
}
