// GEMM rates by element type: OpenBLAS sgemm (the engine's float32 GEMM), oneDNN's float32 matmul
// and oneDNN's bf16 matmul with float32 accumulation (kernels/cpu/gemm_bf16.h), in one run.
//
//   bench_gemm_bf16 [--threads 1] [--repeats 3] [--json FILE]
//
// Cases: square n = 1024 and 2048, and the GEMMs of one block at d = 1024, 4096 tokens, FFN 4096
// (projection, FFN up, FFN down, and a weight gradient, whose a is transposed). FLOPs 2 * M * N * K.
// Each time is the median of R runs after one warm-up, the runs of all kernels and cases
// interleaved, so a slow spell on a shared machine touches them alike. Prints one line per case with
// the three rates, bf16 / sgemm and oneDNN f32 / sgemm, and the implementations that ran (bf16 is
// oneDNN's, or OpenBLAS on widened operands where oneDNN has no bf16 matmul for this CPU); with
// --json, writes the same as JSON Lines (one object per case).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/bf16.h"
#include "core/random.h"
#include "core/tensor.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/gemm.h"

namespace {

using namespace ampipe;
using bench::median;
using bench::seconds_of;

struct Shape3 {
  std::string name;
  bool transpose_a;
  int64_t m, n, k;
};

// One case's operands in both element types and its three timed kernels.
struct Case {
  Shape3 shape;
  Tensor a, b, c;  // float32: a is [M, K] (or [K, M] when transposed), b is [K, N]
  std::vector<bf16> a_half, b_half;
  std::vector<std::vector<double>> seconds = std::vector<std::vector<double>>(3);
};

Case make_case(const Shape3& s, uint64_t seed) {
  Case cs{s,
          Tensor::empty(s.transpose_a ? ampipe::Shape{s.k, s.m} : ampipe::Shape{s.m, s.k}),
          Tensor::empty({s.k, s.n}),
          Tensor::empty({s.m, s.n}),
          {},
          {}};
  for (Tensor* t : {&cs.a, &cs.b}) {
    Rng rng(seed++);
    for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = static_cast<float>(rng.normal());
  }
  cs.a_half.resize(static_cast<size_t>(cs.a.numel()));
  cs.b_half.resize(static_cast<size_t>(cs.b.numel()));
  to_bf16(cs.a.data<float>(), cs.a_half.data(), cs.a.numel());
  to_bf16(cs.b.data<float>(), cs.b_half.data(), cs.b.numel());
  return cs;
}

// Kernel i of a case: 0 OpenBLAS sgemm, 1 oneDNN f32, 2 oneDNN bf16.
void run(Case& cs, int kernel) {
  const Shape3& s = cs.shape;
  const int64_t lda = s.transpose_a ? s.m : s.k;
  if (kernel == 0)
    kernels::gemm(cs.a, s.transpose_a, cs.b, false, cs.c);
  else if (kernel == 1)
    kernels::cpu::gemm_f32_onednn(s.transpose_a, false, s.m, s.n, s.k, 1.0f, cs.a.data<float>(), lda,
                                  cs.b.data<float>(), s.n, 0.0f, cs.c.data<float>(), s.n);
  else
    kernels::cpu::gemm_bf16(s.transpose_a, false, s.m, s.n, s.k, 1.0f, cs.a_half.data(), lda,
                            cs.b_half.data(), s.n, 0.0f, cs.c.data<float>(), s.n);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, repeats = 3;
  std::string json_path;
  CLI::App app{
      "bench_gemm_bf16: OpenBLAS sgemm, oneDNN f32 and oneDNN bf16 (float32 accumulation) GEMM rates, "
      "square n = 1024, 2048 and the block's shapes at d = 1024, 4096 tokens"};
  app.add_option("--threads", threads, "Compute threads (kernels, BLAS and oneDNN)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats,
                 "Timed runs per kernel and case (after one warm-up); each time is their median")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "Also write one JSON line per case to this file");
  CLI11_PARSE(app, argc, argv);
  kernels::set_kernel_threads(threads);

  const int64_t d = 1024, tokens = 4096, ffn = 4096;
  const std::vector<Shape3> shapes = {
      {"square", false, 1024, 1024, 1024},       {"square", false, 2048, 2048, 2048},
      {"block_projection", false, tokens, d, d}, {"block_ffn_up", false, tokens, ffn, d},
      {"block_ffn_down", false, tokens, d, ffn}, {"block_weight_grad", true, d, ffn, tokens}};
  std::vector<Case> cases;
  uint64_t seed = 1;
  for (const Shape3& s : shapes) cases.push_back(make_case(s, seed += 2));

  for (Case& cs : cases)
    for (int kernel = 0; kernel < 3; ++kernel) run(cs, kernel);  // warm-up, primitive creation
  for (int r = 0; r < repeats; ++r)
    for (Case& cs : cases)
      for (int kernel = 0; kernel < 3; ++kernel)
        cs.seconds[kernel].push_back(seconds_of([&] { run(cs, kernel); }));

  const std::string bf16_impl = kernels::cpu::gemm_bf16_implementation();
  const std::string f32_impl = kernels::cpu::gemm_f32_onednn_implementation();
  const bool avx512bf16 = detail::bf16_cpu_has_avx512bf16();
  std::ofstream json_file;
  if (!json_path.empty()) json_file.open(json_path);
  for (const Case& cs : cases) {
    const Shape3& s = cs.shape;
    const double flops = 2.0 * s.m * s.n * s.k;
    double gflops[3];
    for (int kernel = 0; kernel < 3; ++kernel) gflops[kernel] = flops / median(cs.seconds[kernel]) * 1e-9;
    std::printf(
        "%-18s M=%-5lld N=%-5lld K=%-5lld ta=%d threads=%d  sgemm %6.1f  onednn_f32 %6.1f  bf16 %6.1f "
        "GFLOP/s  bf16/sgemm %4.2f  onednn_f32/sgemm %4.2f  [%s | %s]\n",
        s.name.c_str(), static_cast<long long>(s.m), static_cast<long long>(s.n), static_cast<long long>(s.k),
        s.transpose_a, threads, gflops[0], gflops[1], gflops[2], gflops[2] / gflops[0], gflops[1] / gflops[0],
        f32_impl.c_str(), bf16_impl.c_str());
    const nlohmann::json row = {{"bench", "gemm_bf16"},
                                {"case", s.name},
                                {"M", s.m},
                                {"N", s.n},
                                {"K", s.k},
                                {"transpose_a", s.transpose_a},
                                {"threads", threads},
                                {"repeats", repeats},
                                {"sgemm_gflops", gflops[0]},
                                {"onednn_f32_gflops", gflops[1]},
                                {"bf16_gflops", gflops[2]},
                                {"bf16_over_sgemm", gflops[2] / gflops[0]},
                                {"bf16_over_onednn_f32", gflops[2] / gflops[1]},
                                {"onednn_f32_over_sgemm", gflops[1] / gflops[0]},
                                {"onednn_f32_implementation", f32_impl},
                                {"bf16_implementation", bf16_impl},
                                {"cpu_avx512bf16", avx512bf16}};
    if (json_file.is_open()) json_file << row.dump() << "\n";
  }
  return 0;
}
