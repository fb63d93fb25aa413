// gemm_bf16 and gemm_f32_onednn (kernels/cpu/gemm_bf16.h): oneDNN matmul primitives cached by
// everything their creation depends on, with OpenBLAS behind them where oneDNN has no primitive.
// oneDNN stays in this file (docs/ARCHITECTURE.md, "The dependency rule", 3).
#include "kernels/cpu/gemm_bf16.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/host_cache.h"
#include "core/parallel.h"

#if DNNL_VERSION_MAJOR != 2
#error "kernels/cpu/gemm_bf16.cpp is written against the oneDNN 2.x API (Debian bookworm's libdnnl-dev 2.6)"
#endif

namespace ampipe::kernels::cpu {
namespace {

constexpr const char* kWidenedImplementation = "openblas_sgemm(widened)";
// Distinct (shape, strides, transposes, alpha, beta, threads) combinations kept. A training step
// uses a few dozen; past this the least recently used one is dropped.
constexpr size_t kPlanCapacity = 256;

enum class Element { bf16, f32 };

// Everything a primitive's creation depends on.
struct PlanKey {
  Element element;
  bool transpose_a, transpose_b;
  int64_t m, n, k, lda, ldb, ldc;
  uint32_t alpha_bits, beta_bits;
  int threads;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t h = static_cast<size_t>(key.element) * 4 + key.transpose_a * 2 + key.transpose_b;
    for (const int64_t v : {key.m, key.n, key.k, key.lda, key.ldb, key.ldc, int64_t{key.alpha_bits},
                            int64_t{key.beta_bits}, int64_t{key.threads}})
      h = h * 0x9E3779B97F4A7C15ull + std::hash<int64_t>()(v);
    return h;
  }
};

// A created primitive and the descriptors its execution needs; or, where oneDNN has none for this
// element type on this CPU, the instruction to run OpenBLAS.
struct Plan {
  bool use_openblas = false;
  dnnl::matmul matmul;
  dnnl::memory::desc a, b, c, scratchpad;
  std::string implementation;
};

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// op(x) is [rows, cols], stored row-major with row stride ld as x (or as x^T when transposed).
dnnl::memory::desc operand_desc(dnnl::memory::data_type type, int64_t rows, int64_t cols, bool transposed,
                                int64_t ld) {
  const dnnl::memory::dims strides = transposed ? dnnl::memory::dims{1, ld} : dnnl::memory::dims{ld, 1};
  return dnnl::memory::desc({rows, cols}, type, strides);
}

std::shared_ptr<const Plan> make_plan(const PlanKey& key) {
  using type = dnnl::memory::data_type;
  const type input = key.element == Element::bf16 ? type::bf16 : type::f32;
  auto plan = std::make_shared<Plan>();
  plan->a = operand_desc(input, key.m, key.k, key.transpose_a, key.lda);
  plan->b = operand_desc(input, key.k, key.n, key.transpose_b, key.ldb);
  plan->c = operand_desc(type::f32, key.m, key.n, false, key.ldc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // each call brings its own: thread-safe
  const float alpha = std::bit_cast<float>(key.alpha_bits), beta = std::bit_cast<float>(key.beta_bits);
  // dst = alpha * (a @ b) [output scale] + beta * dst [sum post-op]; without the sum (beta == 0)
  // oneDNN only writes dst.
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(plan->a, plan->b, plan->c), attr, cpu_engine(),
                                        /*allow_empty=*/true);
  if (pd.get(/*allow_empty=*/true) == nullptr) {
    plan->use_openblas = true;
    plan->implementation = key.element == Element::bf16 ? kWidenedImplementation : "openblas_sgemm";
    return plan;
  }
  plan->scratchpad = pd.scratchpad_desc();
  plan->implementation = pd.impl_info_str();
  plan->matmul = dnnl::matmul(pd);
  return plan;
}

// Plans by key, thread-safe. A plan is created outside the lock (two threads may both create a
// new one; the first inserted wins) and shared, so eviction never pulls one from under a caller.
class PlanCache {
 public:
  std::shared_ptr<const Plan> get(const PlanKey& key) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        it->second.last_use = ++clock_;
        return it->second.plan;
      }
    }
    std::shared_ptr<const Plan> plan = make_plan(key);
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= kPlanCapacity && !entries_.contains(key)) {
      auto oldest = std::min_element(entries_.begin(), entries_.end(), [](const auto& x, const auto& y) {
        return x.second.last_use < y.second.last_use;
      });
      entries_.erase(oldest);
    }
    auto [it, inserted] = entries_.try_emplace(key, Entry{plan, 0});
    it->second.last_use = ++clock_;
    return it->second.plan;
  }

 private:
  struct Entry {
    std::shared_ptr<const Plan> plan;
    uint64_t last_use;
  };
  std::mutex mutex_;
  std::unordered_map<PlanKey, Entry, PlanKeyHash> entries_;
  uint64_t clock_ = 0;
};

PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// This thread's scratchpad of at least `bytes`, 64-byte aligned; grows, never shrinks.
void* thread_scratchpad(size_t bytes) {
  struct AlignedFree {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local std::unique_ptr<std::byte[], AlignedFree> buffer;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    buffer.reset();
    buffer.reset(static_cast<std::byte*>(::operator new[](bytes, std::align_val_t{64})));
    capacity = bytes;
  }
  return buffer.get();
}

void run_onednn(const Plan& plan, const void* a, const void* b, float* c) {
  thread_local dnnl::stream stream(cpu_engine());
  const dnnl::engine& engine = cpu_engine();
  // oneDNN takes non-const handles; it does not write a or b.
  dnnl::memory a_mem(plan.a, engine, const_cast<void*>(a));
  dnnl::memory b_mem(plan.b, engine, const_cast<void*>(b));
  dnnl::memory c_mem(plan.c, engine, c);
  dnnl::memory scratch(plan.scratchpad, engine, thread_scratchpad(plan.scratchpad.get_size()));
  plan.matmul.execute(stream, {{DNNL_ARG_SRC, a_mem},
                               {DNNL_ARG_WEIGHTS, b_mem},
                               {DNNL_ARG_DST, c_mem},
                               {DNNL_ARG_SCRATCHPAD, scratch}});
  stream.wait();
}

blasint blas_int(int64_t v) { return static_cast<blasint>(std::max<int64_t>(v, 1)); }

void run_openblas(const PlanKey& key, float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                  float beta, float* c) {
  cblas_sgemm(CblasRowMajor, key.transpose_a ? CblasTrans : CblasNoTrans,
              key.transpose_b ? CblasTrans : CblasNoTrans, blas_int(key.m), blas_int(key.n), blas_int(key.k),
              alpha, a, blas_int(lda), b, blas_int(ldb), beta, c, blas_int(key.ldc));
}

// Float32 storage from the engine's caching host allocator (core/host_cache.h): the widened
// operands come back at the same sizes every step, and fresh pages would fault in on every call.
class HostFloats {
 public:
  explicit HostFloats(int64_t n) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float);
    data_ = static_cast<float*>(host_allocate(bytes, &capacity_));
    AMPIPE_CHECK(data_ != nullptr) << "out of host memory widening a bf16 GEMM operand (" << bytes
                                   << " bytes)";
  }
  ~HostFloats() { host_release(data_, capacity_); }
  HostFloats(const HostFloats&) = delete;
  HostFloats& operator=(const HostFloats&) = delete;
  float* get() const { return data_; }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// A stored bf16 matrix [rows, ld] (first `cols` of each row used) widened to dense [rows, cols].
void widen(const bf16* x, int64_t rows, int64_t cols, int64_t ld, float* dense) {
  parallel_for(rows, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(cols, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t r = begin; r < end; ++r) to_float(x + r * ld, dense + r * cols, cols);
               });
}

void check_arguments(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                     const void* a, const void* b, const void* c) {
  AMPIPE_CHECK(m >= 0 && n >= 0 && k >= 0)
      << "gemm: sizes must be non-negative, got M=" << m << " N=" << n << " K=" << k;
  // Strides and buffers of empty operands are never used (BLAS would still ask for ld >= 1).
  const int64_t a_width = ta ? m : k, b_width = tb ? k : n;
  AMPIPE_CHECK((m * k == 0 || lda >= a_width) && (k * n == 0 || ldb >= b_width) && (m * n == 0 || ldc >= n))
      << "gemm: row strides must cover the stored rows: lda=" << lda << " (rows of " << a_width
      << "), ldb=" << ldb << " (rows of " << b_width << "), ldc=" << ldc << " (rows of " << n << ")";
  AMPIPE_CHECK((m * k == 0 || a) && (k * n == 0 || b) && (m * n == 0 || c)) << "gemm: null buffer";
}

// c = beta * c over [m, n] with row stride ldc; beta == 0 writes zeros without reading c.
void scale_output(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
}

PlanKey make_key(Element element, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, int64_t lda,
                 int64_t ldb, float beta, int64_t ldc) {
  // oneDNN's OpenMP runtime sizes its work by the calling thread's count, as of creation.
  return PlanKey{element,
                 ta,
                 tb,
                 m,
                 n,
                 k,
                 lda,
                 ldb,
                 ldc,
                 std::bit_cast<uint32_t>(alpha),
                 std::bit_cast<uint32_t>(beta),
                 omp_get_max_threads()};
}

std::shared_ptr<const Plan> plan_for(const PlanKey& key) {
  try {
    return plan_cache().get(key);
  } catch (const dnnl::error& e) {
    AMPIPE_CHECK(false) << "oneDNN could not create a matmul for M=" << key.m << " N=" << key.n
                        << " K=" << key.k << ": " << e.what();
  }
  return nullptr;  // not reached
}

}  // namespace

void gemm_bf16(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, float alpha,
               const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  check_arguments(transpose_a, transpose_b, M, N, K, lda, ldb, ldc, a, b, c);
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_output(M, N, beta, c, ldc);
  const PlanKey key = make_key(Element::bf16, transpose_a, transpose_b, M, N, K, alpha, lda, ldb, beta, ldc);
  const std::shared_ptr<const Plan> plan = plan_for(key);
  if (plan->use_openblas) {
    const int64_t a_rows = transpose_a ? K : M, a_cols = transpose_a ? M : K;
    const int64_t b_rows = transpose_b ? N : K, b_cols = transpose_b ? K : N;
    const HostFloats a_wide(a_rows * a_cols), b_wide(b_rows * b_cols);
    widen(a, a_rows, a_cols, lda, a_wide.get());
    widen(b, b_rows, b_cols, ldb, b_wide.get());
    return run_openblas(key, alpha, a_wide.get(), a_cols, b_wide.get(), b_cols, beta, c);
  }
  try {
    run_onednn(*plan, a, b, c);
  } catch (const dnnl::error& e) {
    AMPIPE_CHECK(false) << "oneDNN bf16 matmul failed (M=" << M << " N=" << N << " K=" << K
                        << "): " << e.what();
  }
}

void gemm_f32_onednn(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                     int64_t ldc) {
  check_arguments(transpose_a, transpose_b, M, N, K, lda, ldb, ldc, a, b, c);
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_output(M, N, beta, c, ldc);
  const PlanKey key = make_key(Element::f32, transpose_a, transpose_b, M, N, K, alpha, lda, ldb, beta, ldc);
  const std::shared_ptr<const Plan> plan = plan_for(key);
  if (plan->use_openblas) return run_openblas(key, alpha, a, lda, b, ldb, beta, c);
  try {
    run_onednn(*plan, a, b, c);
  } catch (const dnnl::error& e) {
    AMPIPE_CHECK(false) << "oneDNN f32 matmul failed (M=" << M << " N=" << N << " K=" << K
                        << "): " << e.what();
  }
}

std::string gemm_bf16_implementation() {
  const int64_t n = 1024;
  return plan_for(make_key(Element::bf16, false, false, n, n, n, 1.0f, n, n, 0.0f, n))->implementation;
}

std::string gemm_f32_onednn_implementation() {
  const int64_t n = 1024;
  return plan_for(make_key(Element::f32, false, false, n, n, n, 1.0f, n, n, 0.0f, n))->implementation;
}

}  // namespace ampipe::kernels::cpu
