#include "core/device.h"

#include "core/error.h"

#if AMPIPE_HAVE_CUDA
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda/context.h"
#include "core/cuda/cuda_check.h"
#include "core/device_cache.h"
#endif

namespace ampipe {

void require_cuda(const char* what) {
  const std::string reason = cuda_unavailable_reason();
  AMPIPE_CHECK(reason.empty()) << what << " needs an NVIDIA GPU, but " << reason
                               << "; use --device cpu, or run on a machine with a GPU and a CUDA build";
}

#if !AMPIPE_HAVE_CUDA

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_unavailable_reason() {
  return "this ampipe was built without the CUDA backend (configure with -DAMPIPE_CUDA=ON on a machine with the "
         "CUDA toolkit)";
}
void cuda_synchronize() {}
int use_local_cuda_device() {
  require_cuda("--device cuda");
  return 0;
}

[[noreturn]] static void no_cuda(const char* what) {
  throw Error(std::string(what) + ": " + cuda_unavailable_reason());
}
void* device_allocate(size_t, size_t*) { no_cuda("device memory"); }
void device_release(void*, size_t) { no_cuda("device memory"); }
void copy_rows(void*, Device, size_t, const void*, Device, size_t, size_t, size_t) { no_cuda("device copy"); }
void device_zero_rows(void*, size_t, size_t, size_t) { no_cuda("device memset"); }
DeviceCacheStats device_cache_stats() { return {}; }
void* device_stream_create() { no_cuda("a GPU stream"); }
void device_stream_destroy(void*) { no_cuda("a GPU stream"); }
void device_stream_make_current(void*) { no_cuda("a GPU stream"); }
void device_stream_synchronize(void*) { no_cuda("a GPU stream"); }
void* device_event_record(void*) { no_cuda("a GPU event"); }
void device_stream_wait_event(void*, void*) { no_cuda("a GPU event"); }
bool device_event_query(void*) { no_cuda("a GPU event"); }
void device_event_synchronize(void*) { no_cuda("a GPU event"); }
void device_event_release(void*) { no_cuda("a GPU event"); }

#else

bool cuda_built() { return true; }

namespace {

std::atomic<int> g_device{0};  // the process's GPU (use_local_cuda_device)

struct DeviceQuery {
  int count = 0;
  std::string reason;
};

const DeviceQuery& device_query() {
  static const DeviceQuery q = [] {
    DeviceQuery r;
    const cudaError_t e = cudaGetDeviceCount(&r.count);
    if (e != cudaSuccess) {
      r.count = 0;
      r.reason = std::string("no usable CUDA driver or device (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
      (void)cudaGetLastError();  // clear the sticky-free error so later calls start clean
    } else if (r.count == 0) {
      r.reason = "no CUDA device is present";
    }
    return r;
  }();
  return q;
}

// The allocator's backend: cudaMalloc / cudaFree, fences as one event per known stream.
class CudaBackend final : public DeviceCacheBackend {
 public:
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    AMPIPE_CUDA_CHECK(cudaSetDevice(g_device));  // the caller may be any thread of the process
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;
    }
    AMPIPE_CUDA_CHECK(e);
    return p;
  }
  void free(void* p) override { AMPIPE_CUDA_CHECK(cudaFree(p)); }
  // No fence (0) when every stream is idle: all work enqueued before the release has finished, so
  // the block is free at once. Without this, a block released right after a synchronisation waited
  // for event records that the device had not yet reached, and the next request took fresh device
  // memory (found under the GPU emulator: CudaTensor.TheSteadyStateAllocatesNothingFromTheDevice).
  uint64_t record_fence() override {
    const std::vector<cudaStream_t> streams = registered_cuda_streams();
    bool idle = true;
    for (cudaStream_t s : streams) {
      const cudaError_t r = cudaStreamQuery(s);
      if (r == cudaErrorNotReady) {
        idle = false;
        break;
      }
      AMPIPE_CUDA_CHECK(r);
    }
    if (idle) return 0;
    std::vector<cudaEvent_t> events;
    for (cudaStream_t s : streams) {
      cudaEvent_t e = take_event();
      AMPIPE_CUDA_CHECK(cudaEventRecord(e, s));
      events.push_back(e);
    }
    const uint64_t id = next_fence_++;
    fences_.emplace(id, std::move(events));
    return id;
  }
  bool fence_passed(uint64_t fence) override {
    auto it = fences_.find(fence);
    if (it == fences_.end()) return true;
    for (cudaEvent_t e : it->second) {
      const cudaError_t r = cudaEventQuery(e);
      if (r == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return false;
      }
      AMPIPE_CUDA_CHECK(r);
    }
    recycle(it);
    return true;
  }
  void wait_fence(uint64_t fence) override {
    auto it = fences_.find(fence);
    if (it == fences_.end()) return;
    for (cudaEvent_t e : it->second) AMPIPE_CUDA_CHECK(cudaEventSynchronize(e));
    recycle(it);
  }

 private:
  cudaEvent_t take_event() {
    if (!pool_.empty()) {
      cudaEvent_t e = pool_.back();
      pool_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    AMPIPE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  void recycle(std::unordered_map<uint64_t, std::vector<cudaEvent_t>>::iterator it) {
    pool_.insert(pool_.end(), it->second.begin(), it->second.end());
    fences_.erase(it);
  }
  uint64_t next_fence_ = 1;
  std::unordered_map<uint64_t, std::vector<cudaEvent_t>> fences_;
  std::vector<cudaEvent_t> pool_;
};

// Never destroyed: tensors may be released during static destruction, after the driver has begun
// to unload, and the process's end returns device memory anyway.
DeviceCache& cache() {
  static CudaBackend* backend = new CudaBackend;
  static DeviceCache* c = new DeviceCache(*backend);
  return *c;
}

}  // namespace

int cuda_device_count() { return device_query().count; }
std::string cuda_unavailable_reason() { return device_query().reason; }

int use_local_cuda_device() {
  require_cuda("--device cuda");
  int local = 0;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') {
      local = std::atoi(v);
      break;
    }
  }
  const int device = std::max(local, 0) % cuda_device_count();
  g_device = device;
  AMPIPE_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

void cuda_synchronize() {
  if (cuda_device_count() == 0) return;
  AMPIPE_CUDA_CHECK(cudaStreamSynchronize(current_cuda_stream()));
}

void* device_allocate(size_t bytes, size_t* capacity) {
  require_cuda("a tensor on the GPU");
  return cache().allocate(bytes, capacity);
}

void device_release(void* p, size_t capacity) {
  // Called from a tensor's deleter, which must not throw: a CUDA error here (the runtime already
  // unloading at exit, or a device fault reported late) leaks the block and says so once.
  try {
    cache().release(p, capacity);
  } catch (const std::exception& e) {
    static std::once_flag reported;
    std::call_once(reported, [&] { std::fprintf(stderr, "ampipe: warning: GPU memory not returned: %s\n", e.what()); });
  }
}

void copy_rows(void* dst, Device dst_device, size_t dst_pitch, const void* src, Device src_device, size_t src_pitch,
               size_t row_bytes, size_t rows) {
  if (row_bytes == 0 || rows == 0) return;
  cudaStream_t stream = current_cuda_stream();
  if (rows == 1 || (dst_pitch == row_bytes && src_pitch == row_bytes)) {
    AMPIPE_CUDA_CHECK(cudaMemcpyAsync(dst, src, row_bytes * rows, cudaMemcpyDefault, stream));
  } else {
    AMPIPE_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDefault, stream));
  }
  if (dst_device == Device::CPU || src_device == Device::CPU) AMPIPE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void device_zero_rows(void* dst, size_t pitch, size_t row_bytes, size_t rows) {
  if (row_bytes == 0 || rows == 0) return;
  cudaStream_t stream = current_cuda_stream();
  if (rows == 1 || pitch == row_bytes) {
    AMPIPE_CUDA_CHECK(cudaMemsetAsync(dst, 0, row_bytes * rows, stream));
  } else {
    AMPIPE_CUDA_CHECK(cudaMemset2DAsync(dst, pitch, 0, row_bytes, rows, stream));
  }
}

DeviceCacheStats device_cache_stats() { return cache().stats(); }

namespace {
std::mutex g_event_pool_mutex;
std::vector<cudaEvent_t>& event_pool() {
  static auto* pool = new std::vector<cudaEvent_t>;  // never destroyed (see cache())
  return *pool;
}
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }
}  // namespace

void* device_stream_create() {
  require_cuda("a GPU stream");
  AMPIPE_CUDA_CHECK(cudaSetDevice(g_device));
  cudaStream_t s = nullptr;
  AMPIPE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  register_cuda_stream(s);
  return s;
}

void device_stream_destroy(void* stream) {
  if (stream == nullptr) return;
  const cudaError_t e = cudaStreamSynchronize(as_stream(stream));
  unregister_cuda_stream(as_stream(stream));
  (void)cudaStreamDestroy(as_stream(stream));
  AMPIPE_CUDA_CHECK(e);
}

void device_stream_make_current(void* stream) {
  AMPIPE_CUDA_CHECK(cudaSetDevice(g_device));
  set_current_cuda_stream(as_stream(stream));
}

void device_stream_synchronize(void* stream) { AMPIPE_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream))); }

void* device_event_record(void* stream) {
  cudaEvent_t e = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_event_pool_mutex);
    if (!event_pool().empty()) {
      e = event_pool().back();
      event_pool().pop_back();
    }
  }
  if (e == nullptr) AMPIPE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  AMPIPE_CUDA_CHECK(cudaEventRecord(e, as_stream(stream)));
  return e;
}

void device_stream_wait_event(void* stream, void* event) {
  AMPIPE_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream), as_event(event), 0));
}

bool device_event_query(void* event) {
  const cudaError_t r = cudaEventQuery(as_event(event));
  if (r == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  AMPIPE_CUDA_CHECK(r);
  return true;
}

void device_event_synchronize(void* event) { AMPIPE_CUDA_CHECK(cudaEventSynchronize(as_event(event))); }

void device_event_release(void* event) {
  if (event == nullptr) return;
  std::lock_guard<std::mutex> lock(g_event_pool_mutex);
  event_pool().push_back(as_event(event));
}

#endif

}  // namespace ampipe
