#include "plan/calibrate.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "comm/communicator.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/random.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "kernels/permute.h"

namespace ampipe {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// How many samples a measurement takes: at least min_samples, then more until budget_s seconds
// of samples have been taken, at most max_samples.
struct Sampling {
  int min_samples;
  int max_samples;
  double budget_s;
  bool done(size_t taken, double total_s) const {
    const int n = static_cast<int>(taken);
    return n >= max_samples || (n >= min_samples && total_s >= budget_s);
  }
};

// Median seconds of fn on this rank, after `warmup` untimed calls (no communicator calls).
double median_seconds(const std::function<void()>& fn, const Sampling& sampling, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> samples;
  double total = 0;
  while (!sampling.done(samples.size(), total)) {
    const auto start = Clock::now();
    fn();
    samples.push_back(seconds_since(start));
    total += samples.back();
  }
  return median(samples);
}

// Median over samples of the slowest rank's time of fn, after `warmup` untimed calls; collective.
// Every sample starts on all ranks together (a barrier), so ranks that share the machine load it
// as training does; every rank sees the same (max-reduced) times, so all take the same number of
// samples.
double collective_median_seconds(Communicator& comm, const std::function<void()>& fn,
                                 const Sampling& sampling, int warmup = 1) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> samples;
  double total = 0;
  while (!sampling.done(samples.size(), total)) {
    comm.barrier();
    const auto start = Clock::now();
    fn();
    double seconds = seconds_since(start);
    comm.all_reduce_max(seconds);
    samples.push_back(seconds);
    total += seconds;
  }
  return median(samples);
}

// Uniform values in [-1, 1): cheap to make, no denormals.
Tensor uniform_tensor(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(2.0 * rng.uniform() - 1.0);
  return t;
}

// printf-style formatting of one log line.
template <class... Args>
std::string format(const char* fmt, Args... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

class Log {
 public:
  Log(std::ostream* out, bool enabled) : out_(enabled ? out : nullptr) {}
  void line(const std::string& text) const {
    if (out_) *out_ << "calibrate: " << text << std::endl;
  }

 private:
  std::ostream* out_;
};

// ---- Compute.

struct GemmShape {
  int64_t m, k, n;  // [m,k] x [k,n]
};

// FLOP/s of kernels::gemm at block shapes, on `dtype` operands (F32, or BF16 with float32
// accumulation, as --bf16 runs its GEMMs): the median over shapes.
double measure_matrix_flops(Communicator& world, std::vector<int64_t> hidden_sizes, bool quick,
                            const Log& log, int* shape_count, DType dtype = DType::F32) {
  // Smallest first: quick mode's one warm-up is then the cheapest shape.
  std::sort(hidden_sizes.begin(), hidden_sizes.end());
  hidden_sizes.erase(std::unique(hidden_sizes.begin(), hidden_sizes.end()), hidden_sizes.end());
  std::vector<GemmShape> shapes;
  const std::vector<int64_t> tokens =
      quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 2048, 4096};
  for (const int64_t t : tokens)
    for (const int64_t d : hidden_sizes) {
      shapes.push_back({t, d, 4 * d});              // FFN up-projection (and QKV-like)
      if (!quick) shapes.push_back({t, 4 * d, d});  // FFN down-projection
    }
  const Sampling sampling = quick ? Sampling{2, 4, 0.03} : Sampling{3, 10, 0.4};
  std::vector<double> rates;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const GemmShape& s = shapes[i];
    Tensor a = uniform_tensor({s.m, s.k}, 11 + i), b = uniform_tensor({s.k, s.n}, 101 + i);
    a = kernels::as_dtype(a, dtype);
    b = kernels::as_dtype(b, dtype);
    const Tensor c = Tensor::empty({s.m, s.n});
    // Quick mode warms up BLAS once (thread pool, buffers); full mode before every shape.
    const int warmup = (!quick || i == 0) ? 1 : 0;
    const double seconds = collective_median_seconds(
        world, [&] { kernels::gemm(a, false, b, false, c); }, sampling, warmup);
    const double rate = 2.0 * s.m * s.n * s.k / seconds;
    rates.push_back(rate);
    log.line(format("gemm%s [%lld x %lld] x [%lld x %lld]: %.2f ms, %.1f GFLOP/s",
                    dtype == DType::BF16 ? " bf16" : "", static_cast<long long>(s.m),
                    static_cast<long long>(s.k), static_cast<long long>(s.k), static_cast<long long>(s.n),
                    seconds * 1e3, rate * 1e-9));
  }
  *shape_count = static_cast<int>(shapes.size());
  return median(rates);
}

struct AttentionRates {
  double forward = 0, backward = 0;  // FLOP/s
};

// Causal attention as in bench/bench_attention.cpp: d = 512, 8 heads, B = 1, q/k/v column slices of
// a fused [N, 3d] buffer. Rates: the median over sequence lengths.
AttentionRates measure_attention(Communicator& world, bool quick, const Log& log) {
  const int64_t d = 512, heads = 8;
  const std::vector<int64_t> lengths = quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 2048};
  const Sampling sampling = quick ? Sampling{2, 4, 0.05} : Sampling{3, 10, 0.5};
  std::vector<double> forward, backward;
  for (const int64_t n : lengths) {
    const Tensor qkv = uniform_tensor({n, 3 * d}, 1000 + n), dqkv = Tensor::zeros({n, 3 * d});
    const Tensor q = qkv.cols(0, d), k = qkv.cols(d, 2 * d), v = qkv.cols(2 * d, 3 * d);
    const Tensor dq = dqkv.cols(0, d), dk = dqkv.cols(d, 2 * d), dv = dqkv.cols(2 * d, 3 * d);
    const Tensor out = Tensor::empty({n, d}), lse = Tensor::empty({1, heads, n});
    const Tensor dout = uniform_tensor({n, d}, 2000 + n);
    const kernels::AttentionShape shape{1, heads, 0, n, n};
    const double forward_flops = 2.0 * n * n * d;  // 4 N^2 d / 2: the causal half of QK^T and PV
    const double fwd_s = collective_median_seconds(
        world, [&] { kernels::attention_forward(q, k, v, shape, out, lse); }, sampling);
    const double bwd_s = collective_median_seconds(
        world, [&] { kernels::attention_backward(q, k, v, out, lse, dout, shape, dq, dk, dv); }, sampling);
    forward.push_back(forward_flops / fwd_s);
    backward.push_back(2.5 * forward_flops / bwd_s);
    log.line(format(
        "attention N=%lld d=%lld heads=%lld: forward %.2f ms, %.1f GFLOP/s; backward %.2f ms, %.1f GFLOP/s",
        static_cast<long long>(n), static_cast<long long>(d), static_cast<long long>(heads), fwd_s * 1e3,
        forward.back() * 1e-9, bwd_s * 1e3, backward.back() * 1e-9));
  }
  return {median(forward), median(backward)};
}

// Bytes/s (read + written) of elementwise passes: the median of y += x, layernorm forward and a
// row gather (the permute), over tensors of `rows` x 1024 floats, each pass run back to back (so a
// tensor that fits in the cache stays there).
double measure_elementwise_rate(Communicator& world, int64_t rows, const Sampling& sampling, const Log& log) {
  const int64_t cols = 1024;
  const double tensor_bytes = 4.0 * rows * cols;
  Tensor x = Tensor::empty({rows, cols}), y = Tensor::empty({rows, cols});
  x.fill(1e-3f);
  y.fill(0.0f);
  const Tensor weight = uniform_tensor({cols}, 7), bias = uniform_tensor({cols}, 8);
  const Tensor mean = Tensor::empty({rows}), rstd = Tensor::empty({rows});
  std::vector<int32_t> order(rows);
  Rng rng(9);
  for (int64_t i = 0; i < rows; ++i) order[i] = static_cast<int32_t>(i);
  for (int64_t i = rows - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
  const Tensor index = Tensor::from_ints({rows}, order);

  struct Pass {
    const char* name;
    double bytes;
    std::function<void()> run;
  };
  const std::vector<Pass> passes = {
      {"y += x", 3 * tensor_bytes, [&] { kernels::add_inplace(y, x); }},
      {"layernorm forward", 2 * tensor_bytes,
       [&] { kernels::layernorm_forward(x, weight, bias, y, mean, rstd); }},
      {"gather rows", 2 * tensor_bytes, [&] { kernels::gather_rows(x, index, y); }},
  };
  std::vector<double> rates;
  for (const Pass& pass : passes) {
    const double seconds = collective_median_seconds(world, pass.run, sampling);
    rates.push_back(pass.bytes / seconds);
    log.line(std::string(pass.name) + format(" over %.2f MB: %.3f ms, %.2f GB/s", tensor_bytes * 1e-6,
                                             seconds * 1e3, rates.back() * 1e-9));
  }
  return median(rates);
}

double measure_memory_bandwidth(Communicator& world, bool quick, const Log& log) {
  const int64_t rows = quick ? 8192 : 16384;  // 32 MB / 64 MB per tensor: past the caches
  return measure_elementwise_rate(world, rows, quick ? Sampling{3, 10, 0.03} : Sampling{5, 50, 0.3}, log);
}

// "32768K", "1024K", "8M", "512" (bytes) as in /sys/devices/system/cpu/cpu0/cache/index*/size; 0 if
// unreadable.
int64_t parse_cache_size(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (text.empty()) return 0;
  int64_t unit = 1;
  if (text.back() == 'K') unit = 1 << 10;
  if (text.back() == 'M') unit = 1 << 20;
  if (text.back() == 'G') unit = int64_t{1} << 30;
  if (unit > 1) text.pop_back();
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  return (end && *end == '\0' && value > 0) ? static_cast<int64_t>(value) * unit : 0;
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  std::getline(in, text);
  return text;
}

// The cache one rank's elementwise stages can count on: the largest of each data cache level of
// CPU 0, a level shared by several CPUs divided among the `ranks` ranks on this machine (the
// calibration assumes they all share it). From /sys (the kernel's cpuid decoding), else sysconf;
// 0 if neither says.
int64_t cache_bytes_per_rank(int ranks, const Log& log) {
  int64_t best = 0;
  std::string described;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string type = read_small_file(dir + "type");
    if (type.empty()) break;
    if (type == "Instruction") continue;
    const int64_t size = parse_cache_size(read_small_file(dir + "size"));
    // "0-1" or "0,2" or "0": shared when it names more than one CPU.
    const std::string cpus = read_small_file(dir + "shared_cpu_list");
    const bool shared = cpus.find_first_of("-,") != std::string::npos;
    const int64_t share = shared ? size / std::max(ranks, 1) : size;
    described += format(" L%s %lld KiB%s;", read_small_file(dir + "level").c_str(),
                        static_cast<long long>(size >> 10), shared ? " shared" : "");
    best = std::max(best, share);
  }
  if (best == 0) {
    for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
      const long size = sysconf(name);
      if (size > 0) {
        best = name == _SC_LEVEL3_CACHE_SIZE ? size / std::max(ranks, 1) : size;
        described = format(" sysconf L%d %ld KiB;", name == _SC_LEVEL3_CACHE_SIZE ? 3 : 2, size >> 10);
        break;
      }
    }
  }
  log.line(format("caches:%s %lld KiB per rank (%d rank%s)",
                  described.empty() ? " unknown;" : described.c_str(), static_cast<long long>(best >> 10),
                  ranks, ranks == 1 ? "" : "s"));
  return best;
}

// The elementwise passes again, over two tensors that together fill a quarter of `cache_bytes`.
double measure_cache_bandwidth(Communicator& world, int64_t cache_bytes, bool quick, const Log& log) {
  const int64_t rows = std::max<int64_t>(16, cache_bytes / 8 / (4 * 1024));
  return measure_elementwise_rate(world, rows, quick ? Sampling{5, 40, 0.02} : Sampling{20, 400, 0.2}, log);
}

// Seconds from submitting an empty task to a Stream until the host has seen its Event complete.
double measure_task_overhead(bool quick, const Log& log) {
  Stream stream("calibrate");
  Event done;
  auto round_trip = [&] {
    stream.submit("empty task", [] {});
    stream.record(done);
    done.synchronize();
  };
  const Sampling sampling = quick ? Sampling{200, 200, 0.0} : Sampling{2000, 2000, 0.0};
  const double seconds = median_seconds(round_trip, sampling, 20);
  stream.synchronize();
  log.line(format("stream task round trip: %.1f us", seconds * 1e6));
  return seconds;
}

// ---- Communication.

// The dispatcher's exchange: the counts (one int64 per rank) with all_to_all, then all_to_all_v.
// Each rank sends about `bytes_per_rank` bytes of float32 in all, split evenly over the ranks
// (itself included).
class Exchange {
 public:
  Exchange(int ranks, int64_t bytes_per_rank)
      : ranks_(ranks),
        per_peer_(std::max<int64_t>(1, bytes_per_rank / 4 / ranks)),
        send_counts_(ranks, per_peer_) {
    send_ = Tensor::empty({per_peer_ * ranks});
    recv_ = Tensor::empty({per_peer_ * ranks});
    send_.fill(1.0f);
    recv_.zero();
  }
  void run(Communicator& comm) {
    comm.all_to_all(send_counts_, recv_counts_);
    comm.all_to_all_v(send_, send_counts_, recv_, recv_counts_);
  }
  static constexpr int kCalls = 2;  // collective calls per exchange
  // Bytes that leave this rank per exchange.
  double remote_bytes() const { return 4.0 * per_peer_ * (ranks_ - 1); }
  double total_bytes() const { return 4.0 * per_peer_ * ranks_; }

 private:
  int ranks_;
  int64_t per_peer_;
  std::vector<int64_t> send_counts_, recv_counts_;
  Tensor send_, recv_;
};

// Latency and bandwidth per rank, all ranks exchanging at once: time = latency + remote / bandwidth.
LinkProfile measure_link(Communicator& world, bool quick, const Log& log) {
  const std::vector<int64_t> sizes = quick ? std::vector<int64_t>{16 << 10, 128 << 10, 1 << 20}
                                           : std::vector<int64_t>{16 << 10, 1 << 20, 8 << 20};
  const Sampling sampling = quick ? Sampling{3, 30, 0.08} : Sampling{5, 200, 1.0};
  std::vector<double> x, t;
  for (const int64_t bytes : sizes) {
    Exchange exchange(world.size(), bytes);
    const double seconds = collective_median_seconds(
        world, [&] { exchange.run(world); }, sampling);
    x.push_back(exchange.remote_bytes());
    t.push_back(seconds);
    log.line(format("all-to-all %.0f bytes per rank (%.0f remote): %.3f ms, %.3f GB/s per rank",
                    exchange.total_bytes(), exchange.remote_bytes(), seconds * 1e3,
                    exchange.remote_bytes() / seconds * 1e-9));
  }
  // Least-squares slope; the smallest message gives the latency (its transfer time at that
  // bandwidth subtracted, which is steadier than the intercept of a fit dominated by the largest
  // message). Real links are not quite a straight line (small messages may go faster per byte than
  // large ones), so the latency is kept within [t_min / 2, t_min].
  const double n = static_cast<double>(x.size());
  double sx = 0, st = 0, sxx = 0, sxt = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    st += t[i];
    sxx += x[i] * x[i];
    sxt += x[i] * t[i];
  }
  const double slope = (n * sxt - sx * st) / (n * sxx - sx * sx);
  LinkProfile link;
  link.bandwidth = (std::isfinite(slope) && slope > 0) ? 1.0 / slope : x.back() / t.back();
  const double exchange_latency =
      std::clamp(t.front() - x.front() / link.bandwidth, 0.5 * t.front(), t.front());
  // The profile's latency is per collective call (the cost model charges the dispatch two calls,
  // counts and rows, and the combine one); an exchange is two calls of about the same latency.
  link.latency = exchange_latency / Exchange::kCalls;
  log.line(format("link fit: bandwidth %.3f GB/s per rank, latency %.1f us per exchange = %.1f us per call",
                  link.bandwidth * 1e-9, exchange_latency * 1e6, link.latency * 1e6));
  return link;
}

struct OverlapSlowdowns {
  double compute = 1;  // GEMM time beside back-to-back exchanges / alone
  double comm = 1;     // exchange time beside back-to-back GEMMs / alone
};

// A cap on comm_overlap_slowdown: beside GEMMs an exchange over shared memory may barely progress,
// and a finite figure keeps the simulator's arithmetic finite.
constexpr double kMaxCommOverlapSlowdown = 1000;

// GEMM time while another thread runs back-to-back exchanges on `world`, over GEMM time alone; and
// the exchanges' time meanwhile, over their time alone. The message is of the size of a block's
// chunk exchange (1 MiB quick, 4 MiB full).
OverlapSlowdowns measure_overlap_slowdown(Communicator& world, bool quick, const Log& log) {
  const int64_t tokens = quick ? 1024 : 2048, d = 512;
  const Tensor a = uniform_tensor({tokens, d}, 21), b = uniform_tensor({d, 4 * d}, 22);
  const Tensor c = Tensor::empty({tokens, 4 * d});
  auto gemm = [&] { kernels::gemm(a, false, b, false, c); };
  const Sampling sampling = quick ? Sampling{4, 4, 0.0} : Sampling{8, 8, 0.0};

  const double alone = collective_median_seconds(world, gemm, sampling);
  Exchange exchange(world.size(), quick ? (1 << 20) : (4 << 20));
  const double exchange_alone = collective_median_seconds(
      world, [&] { exchange.run(world); }, quick ? Sampling{2, 2, 0.0} : Sampling{3, 3, 0.0});
  world.barrier();

  // The comm thread goes on until every rank's GEMMs are done (agreed by a max-reduction before
  // each exchange), so every rank's timed GEMMs overlap communication and all ranks make the
  // same sequence of calls. Until it is joined, this thread makes no communicator call.
  std::atomic<bool> gemms_done{false};
  std::exception_ptr comm_error;
  int64_t exchanges = 0;
  double comm_seconds = 0;
  std::thread comm_thread([&] {
    const auto comm_start = Clock::now();
    try {
      while (true) {
        int64_t running = gemms_done.load() ? 0 : 1;
        world.all_reduce_max(running);
        if (running == 0) break;
        exchange.run(world);
        ++exchanges;
      }
    } catch (...) {
      comm_error = std::current_exception();
    }
    comm_seconds = seconds_since(comm_start);
  });
  double overlapped = 0;
  std::exception_ptr gemm_error;
  try {
    overlapped = median_seconds(gemm, sampling, 0);
  } catch (...) {
    gemm_error = std::current_exception();
  }
  gemms_done = true;
  comm_thread.join();
  if (gemm_error) std::rethrow_exception(gemm_error);
  if (comm_error) std::rethrow_exception(comm_error);

  OverlapSlowdowns slowdown;
  slowdown.compute = std::max(1.0, overlapped / alone);
  log.line(format("overlap: gemm %.2f ms alone, %.2f ms beside back-to-back all-to-all: slowdown %.3f",
                  alone * 1e3, overlapped * 1e3, slowdown.compute));
  // The comm thread's time per exchange (its count agreement included, which is small). With no
  // exchange finished, one took at least the whole time: a lower bound.
  const double beside = comm_seconds / static_cast<double>(std::max<int64_t>(exchanges, 1));
  slowdown.comm = std::clamp(beside / std::max(exchange_alone, 1e-9), 1.0, kMaxCommOverlapSlowdown);
  log.line(
      format("overlap: %.0f-byte exchange %.3f ms alone, %.3f ms beside the GEMMs (%lld exchanges): comm "
             "slowdown %.3f",
             exchange.total_bytes(), exchange_alone * 1e3, beside * 1e3, static_cast<long long>(exchanges),
             slowdown.comm));
  return slowdown;
}

// ---- Source text.

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "unknown-host";
  return buf;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string link_label(const std::string& option) {
  if (!option.empty()) return option;
  const char* env = std::getenv("AMPIPE_LINK");
  return env && *env ? env : "unshaped";
}

// Restores the kernel thread count on every exit path.
class ThreadCountGuard {
 public:
  explicit ThreadCountGuard(int threads) : previous_(num_threads()), changed_(threads > 0) {
    if (changed_) kernels::set_kernel_threads(threads);
  }
  ~ThreadCountGuard() {
    if (changed_) kernels::set_kernel_threads(previous_);
  }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int previous_;
  bool changed_;
};

void check_options(const CalibrateOptions& o) {
  AMPIPE_CHECK(!o.name.empty()) << "calibrate: the profile name must not be empty";
  AMPIPE_CHECK(o.threads >= 0) << "calibrate: threads must be >= 1 (or 0 = keep the current count), got "
                               << o.threads;
  AMPIPE_CHECK(!o.hidden_sizes.empty()) << "calibrate: hidden_sizes must name at least one hidden size";
  for (const int64_t d : o.hidden_sizes)
    AMPIPE_CHECK(d >= 1 && d <= 8192) << "calibrate: hidden size " << d << " is not in [1, 8192]";
  AMPIPE_CHECK(std::isfinite(o.single_rank_link.bandwidth) && o.single_rank_link.bandwidth > 0)
      << "calibrate: single_rank_link.bandwidth must be > 0, got " << o.single_rank_link.bandwidth;
  AMPIPE_CHECK(std::isfinite(o.single_rank_link.latency) && o.single_rank_link.latency >= 0)
      << "calibrate: single_rank_link.latency must be >= 0, got " << o.single_rank_link.latency;
}

}  // namespace

HardwareProfile calibrate(Communicator& world, const CalibrateOptions& options) {
  check_options(options);
  ThreadCountGuard threads(options.threads);
  const bool quick = options.quick;
  const int ranks = world.size();
  const Log log(options.log, world.rank() == 0);
  const auto start = Clock::now();

  // Every rank measures at the same time (they share this machine, as in training).
  HardwareProfile p;
  p.name = options.name;
  world.barrier();
  int gemm_shapes = 0;
  p.matrix_flops = measure_matrix_flops(world, options.hidden_sizes, quick, log, &gemm_shapes);
  // The full calibration also measures bf16 operands (plan --bf16); the quick start-up one does not
  // (a profile without matrix_flops_bf16 prices --bf16 GEMMs at matrix_flops).
  int bf16_shapes = 0;
  if (!quick)
    p.matrix_flops_bf16 =
        measure_matrix_flops(world, options.hidden_sizes, quick, log, &bf16_shapes, DType::BF16);
  const AttentionRates attention = measure_attention(world, quick, log);
  // The profile allows (0, 1.5]: a rate above that would mean the GEMM figure is off.
  p.attention_efficiency = std::clamp(attention.forward / p.matrix_flops, 1e-6, 1.5);
  p.attention_backward_efficiency = std::clamp(attention.backward / p.matrix_flops, 1e-6, 1.5);
  p.memory_bandwidth = measure_memory_bandwidth(world, quick, log);
  // Every rank reads the same /sys, so all agree whether to measure.
  const int64_t cache_bytes = cache_bytes_per_rank(ranks, log);
  if (cache_bytes > 0) {
    p.cache_bytes = static_cast<double>(cache_bytes);
    p.cache_bandwidth = measure_cache_bandwidth(world, cache_bytes, quick, log);
  }
  world.barrier();
  p.task_overhead = measure_task_overhead(quick, log);
  if (ranks > 1) {
    p.inter_node = measure_link(world, quick, log);
    const OverlapSlowdowns slowdown = measure_overlap_slowdown(world, quick, log);
    p.overlap_slowdown = slowdown.compute;
    p.comm_overlap_slowdown = slowdown.comm;
  } else {
    p.inter_node = options.single_rank_link;
    p.overlap_slowdown = 1.0;
    p.comm_overlap_slowdown = 1.0;
  }
  p.intra_node = p.inter_node;
  p.ranks_per_node = ranks;
  p.bytes_per_element = 4;

  const int thread_count = num_threads();
  std::ostringstream source;
  source << "ampipe plan --calibrate on " << host_name() << " at " << utc_now() << ", " << ranks
         << (ranks == 1 ? " rank" : " ranks") << ", link " << link_label(options.link) << "; "
         << (quick ? "quick" : "full") << " mode, " << thread_count << " compute thread"
         << (thread_count == 1 ? "" : "s")
         << " per rank, float32 CPU kernels; matrix_flops = median sgemm rate over " << gemm_shapes
         << " block shapes"
         << (quick ? "" : "; matrix_flops_bf16 = the same on bf16 operands, float32 accumulation (kernels::gemm)")
         << "; attention efficiencies against it (d=512, 8 heads, causal FLOPs); ";
  if (ranks > 1) {
    source
        << "one machine, so intra_node = inter_node = the measured all-to-all link (bandwidth = remote bytes "
           "per rank / time, all ranks sending) and ranks_per_node = "
        << ranks;
  } else {
    source << "one rank, so nothing crossed a link: intra_node = inter_node = the assumed link (bandwidth "
           << options.single_rank_link.bandwidth << " B/s, latency " << options.single_rank_link.latency
           << " s; not measured) and overlap_slowdown = comm_overlap_slowdown = 1 (not measured)";
  }
  p.source = source.str();
  log.line(format("done in %.2f s", seconds_since(start)));

  // Rank 0's figures, for everyone; parsing validates them (identically on every rank).
  std::string json = world.rank() == 0 ? profile_to_json(p) : std::string();
  world.broadcast_bytes(json, 0);
  return parse_profile(json, "calibrated profile");
}

}  // namespace ampipe
