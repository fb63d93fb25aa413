// all_to_all_v time against message size, over the world communicator.
//
//   mpirun -np 2 bench_all_to_all [--repeats R] [--min-bytes B] [--max-bytes B] [--label TEXT]
//
// Each rank sends B bytes in all (float32), split evenly over the ranks (itself included), for B
// doubling from --min-bytes (1 KiB) to --max-bytes (64 MiB). A sample is one all_to_all_v between
// two barriers; its time is the slowest rank's; the reported time is the median of the samples
// (after one warm-up), R samples for the large sizes and more for the small ones. GB/s = B / time
// (each rank's send bytes per second, "algorithm bandwidth"); bus GB/s = B * (n-1)/n / time (the
// bytes that actually leave a rank). It also times the latency-bound pieces around an all_to_all_v:
// the counts exchange (all_to_all of one int64 per rank) and barrier(), which is exactly the MPI
// backend's per-call agreement round. Prints a human line and a JSON line per case (rank 0 only).
// Without mpirun it runs on the self communicator (a copy).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "comm/world.h"
#include "core/tensor.h"

namespace {

using namespace ampipe;
using bench::median;

// Median over `repeats` samples of the slowest rank's time for fn, after one warm-up.
double timed(Communicator& comm, int repeats, const std::function<void()>& fn) {
  fn();
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) {
    comm.barrier();
    const auto start = std::chrono::steady_clock::now();
    fn();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    comm.all_reduce_max(seconds);
    samples.push_back(seconds);
  }
  return median(samples);
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 20;
  int64_t min_bytes = 1024, max_bytes = 64LL << 20;
  std::string label;
  CLI::App app{
      "bench_all_to_all: all_to_all_v time against message size over the world communicator "
      "(run under mpirun; alone it uses the self communicator)"};
  app.add_option("--repeats", repeats,
                 "Samples per size for the large sizes (small sizes take more, up to 50x); each time is "
                 "their median after one warm-up")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--min-bytes", min_bytes,
                 "Smallest bytes sent per rank (in all, over every peer); doubled "
                 "up to --max-bytes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-bytes", max_bytes, "Largest bytes sent per rank")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--label", label, "Text stored as \"label\" in every JSON line (e.g. the link's name)");
  CLI11_PARSE(app, argc, argv);
  if (max_bytes < min_bytes) {
    std::fprintf(stderr, "bench_all_to_all: --max-bytes (%lld) must be >= --min-bytes (%lld)\n",
                 static_cast<long long>(max_bytes), static_cast<long long>(min_bytes));
    return 2;
  }

  try {
    auto comm = make_world_communicator();
    const int n = comm->size();
    const bool print = comm->rank() == 0;
    auto emit = [&](const std::string& human, nlohmann::json json) {
      if (!print) return;
      json["ranks"] = n;
      json["backend"] = comm->backend();
      if (!label.empty()) json["label"] = label;
      std::printf("%s\n%s\n", human.c_str(), json.dump().c_str());
      std::fflush(stdout);
    };

    // Latency-bound pieces.
    const int small_repeats = std::max(repeats, 200);
    std::vector<int64_t> counts_out(n, 1), counts_in;
    const double barrier_s = timed(*comm, small_repeats, [&] { comm->barrier(); });
    const double counts_s = timed(*comm, small_repeats, [&] { comm->all_to_all(counts_out, counts_in); });
    char line[256];
    std::snprintf(line, sizeof line, "barrier (= one agreement round): %.2f us   counts all_to_all: %.2f us",
                  barrier_s * 1e6, counts_s * 1e6);
    emit(line,
         {{"bench", "latency"}, {"barrier_us", barrier_s * 1e6}, {"counts_all_to_all_us", counts_s * 1e6}});

    if (print) std::printf("%14s %10s %10s %10s %8s\n", "bytes/rank", "ms", "GB/s", "bus GB/s", "samples");
    for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
      const int64_t per_peer = std::max<int64_t>(1, bytes / 4 / n);
      const int64_t elements = per_peer * n;
      const int64_t actual_bytes = elements * 4;
      Tensor send = Tensor::empty({elements});
      Tensor recv = Tensor::empty({elements});
      send.fill(1.0f);
      recv.zero();
      const std::vector<int64_t> counts(n, per_peer);
      // More samples where each is short, so every size takes a similar time.
      const int samples =
          static_cast<int>(std::clamp<int64_t>((64LL << 20) / actual_bytes, repeats, 50 * repeats));
      const double seconds = timed(*comm, samples, [&] { comm->all_to_all_v(send, counts, recv, counts); });
      const double gbps = static_cast<double>(actual_bytes) / seconds / 1e9;
      const double bus = gbps * (n - 1) / n;
      std::snprintf(line, sizeof line, "%14lld %10.4f %10.3f %10.3f %8d",
                    static_cast<long long>(actual_bytes), seconds * 1e3, gbps, bus, samples);
      emit(line, {{"bench", "all_to_all_v"},
                  {"bytes_per_rank", actual_bytes},
                  {"ms", seconds * 1e3},
                  {"GBps", gbps},
                  {"bus_GBps", bus},
                  {"samples", samples}});
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_all_to_all: %s\n", e.what());
    return 1;
  }
  return 0;
}
