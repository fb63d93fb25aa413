// GPU kernel throughput (float32): the cuBLAS sgemm rate and causal attention forward / backward
// against it, timed on the device with CUDA events.
//
//   bench_cuda_kernels [--repeats R] [--json FILE] [--gemm-size G] [--seq-length N...]
//                      [--hidden-size D] [--num-attention-heads H]
//
// Cases (defaults): sgemm 4096^3 (the ceiling, pedantic float32: TF32 off, as the float32 engine
// runs); attention with d = 2048, 16 heads (hd = 128), B = 1, N in {2048, 8192}, q, k, v column
// slices of a fused [N, 3d] buffer as in the model; and the longest N cut into 4 query chunks (the
// pipelined block's calls). The size flags shrink it for the GPU emulator (gpu_check.sh --emulate). FLOPs
// count the causal half of the matmuls: forward 4 N^2 d / 2, backward 2.5x that. Each time is the median of R
// runs after 2 warm-ups (clocks ramp). One human line and one JSON object per case, each with the ratio to
// the sgemm rate. Without a GPU it says why and exits 0.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/random.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/gemm.h"

#if AMPIPE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using namespace ampipe;

#if AMPIPE_HAVE_CUDA
Tensor random_gpu_tensor(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal());
  return t.to(Device::CUDA);
}

// Median device time of fn over `repeats` runs after two warm-ups, in seconds (CUDA events on the
// current stream, the one the kernels use).
double device_seconds(const std::function<void()>& fn, int repeats) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 2; ++i) fn();
  std::vector<double> samples;
  for (int i = 0; i < repeats; ++i) {
    cudaEventRecord(start, nullptr);
    fn();
    cudaEventRecord(stop, nullptr);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    samples.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int repeats = 10;
  int64_t g = 4096, d = 2048, heads = 16;
  std::vector<int64_t> seq_lengths = {2048, 8192};
  std::string json_path;
  CLI::App app{"GPU kernel throughput: sgemm and causal attention (float32), timed with CUDA events"};
  app.add_option("--repeats", repeats, "Timed runs per case (median reported)")->check(CLI::Range(1, 1000));
  app.add_option("--json", json_path, "Also write the results as a JSON array to this file");
  app.add_option("--gemm-size", g, "sgemm of G x G by G x G (default 4096)")
      ->check(CLI::Range(int64_t(1), int64_t(65536)));
  app.add_option(
         "--seq-length", seq_lengths,
         "Attention sequence lengths (default 2048 8192); the longest is also timed in 4 query chunks")
      ->check(CLI::Range(int64_t(4), int64_t(1) << 20));
  app.add_option("--hidden-size", d, "Attention width d (default 2048)")
      ->check(CLI::Range(int64_t(1), int64_t(65536)));
  app.add_option("--num-attention-heads", heads, "Attention heads (default 16; must divide --hidden-size)")
      ->check(CLI::Range(int64_t(1), int64_t(1024)));
  CLI11_PARSE(app, argc, argv);
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) {
    std::printf("bench_cuda_kernels: skipped: %s\n", reason.c_str());
    return 0;
  }
#if AMPIPE_HAVE_CUDA
  try {
    nlohmann::json results = nlohmann::json::array();
    if (d % heads != 0) {
      std::fprintf(stderr,
                   "bench_cuda_kernels: --num-attention-heads %lld does not divide --hidden-size %lld\n",
                   static_cast<long long>(heads), static_cast<long long>(d));
      return 1;
    }
    const int64_t longest = *std::max_element(seq_lengths.begin(), seq_lengths.end());
    Tensor a = random_gpu_tensor({g, g}, 1), b = random_gpu_tensor({g, g}, 2);
    Tensor c = Tensor::empty({g, g}, DType::F32, Device::CUDA);
    const double gemm_s = device_seconds([&] { kernels::gemm(a, false, b, false, c); }, repeats);
    const double gemm_rate = 2.0 * g * g * g / gemm_s;
    const std::string gemm_label = "sgemm " + std::to_string(g) + "^3";
    std::printf("%-28s %9.3f ms  %7.2f TFLOP/s\n", gemm_label.c_str(), gemm_s * 1e3, gemm_rate * 1e-12);
    results.push_back({{"kernel", "sgemm"},
                       {"m", g},
                       {"n", g},
                       {"k", g},
                       {"ms", gemm_s * 1e3},
                       {"tflops", gemm_rate * 1e-12}});

    for (int64_t n : seq_lengths) {
      for (int chunks : {1, 4}) {
        if (chunks > 1 && (n != longest || n % chunks != 0)) continue;
        Tensor qkv = random_gpu_tensor({n, 3 * d}, 3 + n);
        Tensor q = qkv.cols(0, d), k = qkv.cols(d, 2 * d), v = qkv.cols(2 * d, 3 * d);
        Tensor out = Tensor::empty({n, d}, DType::F32, Device::CUDA);
        Tensor lse = Tensor::empty({1, heads, n}, DType::F32, Device::CUDA);
        Tensor dout = random_gpu_tensor({n, d}, 7 + n);
        Tensor dq = Tensor::empty({n, d}, DType::F32, Device::CUDA);
        Tensor dk = Tensor::zeros({n, d}, DType::F32, Device::CUDA),
               dv = Tensor::zeros({n, d}, DType::F32, Device::CUDA);
        const int64_t rows = n / chunks;
        // Chunk c: queries [c*rows, (c+1)*rows) against keys [0, (c+1)*rows); lse per chunk.
        std::vector<Tensor> lses;
        for (int ch = 0; ch < chunks; ++ch)
          lses.push_back(Tensor::empty({1, heads, rows}, DType::F32, Device::CUDA));
        auto shape_of = [&](int ch) {
          kernels::AttentionShape s;
          s.batch = 1;
          s.num_heads = heads;
          s.q_begin = ch * rows;
          s.q_len = rows;
          s.kv_len = n;
          return s;
        };
        auto forward = [&] {
          for (int ch = 0; ch < chunks; ++ch)
            kernels::attention_forward(q.rows(ch * rows, (ch + 1) * rows), k, v, shape_of(ch),
                                       out.rows(ch * rows, (ch + 1) * rows), lses[ch]);
        };
        auto backward = [&] {
          for (int ch = chunks - 1; ch >= 0; --ch)
            kernels::attention_backward(q.rows(ch * rows, (ch + 1) * rows), k, v,
                                        out.rows(ch * rows, (ch + 1) * rows), lses[ch],
                                        dout.rows(ch * rows, (ch + 1) * rows), shape_of(ch),
                                        dq.rows(ch * rows, (ch + 1) * rows), dk, dv);
        };
        const double fwd_flops = 4.0 * double(n) * double(n) * double(d) / 2.0;
        const double fwd_s = device_seconds(forward, repeats);
        forward();
        const double bwd_s = device_seconds(backward, repeats);
        for (auto [name, secs, flops] :
             {std::tuple{"forward", fwd_s, fwd_flops}, std::tuple{"backward", bwd_s, 2.5 * fwd_flops}}) {
          const double rate = flops / secs;
          char label[64];
          std::snprintf(label, sizeof label, "attention %s N=%lld x%d", name, static_cast<long long>(n),
                        chunks);
          std::printf("%-28s %9.3f ms  %7.2f TFLOP/s  %.2f of sgemm\n", label, secs * 1e3, rate * 1e-12,
                      rate / gemm_rate);
          results.push_back({{"kernel", std::string("attention_") + name},
                             {"n", n},
                             {"d", d},
                             {"heads", heads},
                             {"chunks", chunks},
                             {"ms", secs * 1e3},
                             {"tflops", rate * 1e-12},
                             {"ratio_to_sgemm", rate / gemm_rate}});
        }
      }
    }
    if (!json_path.empty()) std::ofstream(json_path) << results.dump(1) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_kernels: %s\n", e.what());
    return 1;
  }
#endif
  return 0;
}
