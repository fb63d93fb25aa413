// One transformer block (attention half + MoE half), forward + backward, against its FLOP bound.
//
//   ./build/bench_block [--threads 1] [--seq-length 2048] [--hidden-size 512] [--heads 8]
//                       [--experts 4] [--ffn 2048] [--top-k 1] [--repeats 5] [--json-out FILE]
//                       [model-family flags: --model-family mixtral --group-query-attention ...]
//
// FLOP bound = block FLOPs (causal attention counted as half) / the sgemm rate measured in the same
// run on the block's expert-FFN GEMM shape. Prints the case, the median time and the ratio
// (time / bound; 1.0 is the limit), a per-stage breakdown, and one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/model_flags.h"
#include "core/random.h"
#include "kernels/gemm.h"
#include "model/block.h"
#include "bench_util.h"

using namespace ampipe;
using bench::median;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
  int threads = 1, repeats = 5;
  int64_t N = 2048, d = 512, h = 8, E = 4, f = 2048, k = 1;
  std::string json_out;
  CLI::App app{"bench_block: one transformer block, forward + backward, against its FLOP bound"};
  app.add_option("--threads", threads, "Compute threads")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seq-length", N, "Sequence length N")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--hidden-size", d, "Hidden size d")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--heads,--num-attention-heads", h, "Attention (query) heads")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--experts,--moe-num-experts", E, "Experts E")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--ffn,--ffn-hidden-size", f, "Expert FFN hidden size f")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--top-k,--moe-top-k", k, "Experts per token k")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "Timed repeats (after one warm-up)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--json-out", json_out, "Append the JSON line to this file");
  FamilyFlags family;
  add_family_flags(app, family);
  CLI11_PARSE(app, argc, argv);
  kernels::set_kernel_threads(threads);

  ModelConfig config;
  try {
    apply_family_flags(family, config);
    config.max_seq_len = N;
    config.hidden_size = d;
    config.num_attention_heads = h;
    config.num_experts = E;
    config.ffn_hidden_size = f;
    config.top_k = k;
    config.num_layers = 1;
    config.validate();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_block: %s\n", e.what());
    return 2;
  }
  StandaloneBlock standalone(config);
  standalone.initialize(10);
  const AttentionLayer& attention = standalone.block().attention;
  const MoeLayer& moe = standalone.block().moe;
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
  // QKV (h + 2g) hd columns, output projection, router, and 2 (GELU) or 3 (SwiGLU) expert GEMMs.
  const double qkv_width = double((config.num_attention_heads + 2 * config.kv_heads()) * config.head_dim());
  const double expert_gemms = config.swiglu ? 3.0 : 2.0;
  const double linear_fwd =
      2 * dN * dd * qkv_width + 2 * dN * dd * dd + 2 * dN * dd * E + 2 * expert_gemms * k * dN * dd * df;
  const double attention_fwd = 2 * dN * dN * dd;  // QK^T and PV, causal half
  const double flops = 3 * linear_fwd + 3.5 * attention_fwd;
  const double t = median(total);
  const double bound = flops / rate;
  std::printf("block fwd+bwd  N=%lld d=%lld heads=%lld kv_heads=%lld E=%lld f=%lld k=%lld family=%s threads=%d\n",
              (long long)N, (long long)d, (long long)h, (long long)config.kv_heads(), (long long)E, (long long)f,
              (long long)k, config.family.c_str(), threads);
  std::printf("  sgemm rate %.1f GFLOP/s (expert fc1 shape %lldx%lldx%lld)\n", rate / 1e9, (long long)(N * k / E),
              (long long)f, (long long)d);
  std::printf("  block FLOPs %.2f G, time %.1f ms (median of %d), FLOP bound %.1f ms, time/bound %.3f, %.1f GFLOP/s\n",
              flops / 1e9, t * 1e3, repeats, bound * 1e3, t / bound, flops / t / 1e9);
  for (auto& [name, v] : stage) std::printf("    %-14s %8.1f ms\n", name.c_str(), median(v) * 1e3);
  char json[640];
  std::snprintf(json, sizeof json,
                "{\"bench\":\"block\",\"family\":\"%s\",\"swiglu\":%s,\"kv_heads\":%lld,"
                "\"seq_length\":%lld,\"hidden_size\":%lld,\"heads\":%lld,\"num_experts\":%lld,"
                "\"ffn\":%lld,\"top_k\":%lld,\"threads\":%d,\"gemm_gflops\":%.2f,\"block_gflop\":%.3f,\"time_ms\":%.3f,"
                "\"bound_ms\":%.3f,\"time_over_bound\":%.4f}",
                config.family.c_str(), config.swiglu ? "true" : "false", (long long)config.kv_heads(), (long long)N,
                (long long)d, (long long)h, (long long)E, (long long)f, (long long)k, threads, rate / 1e9,
                flops / 1e9, t * 1e3, bound * 1e3, t / bound);
  std::printf("%s\n", json);
  if (!json_out.empty()) std::ofstream(json_out, std::ios::app) << json << "\n";
  return 0;
}
