// The emulated CUDA runtime: devices, device memory, streams (a host thread each), events, errors,
// and kernel launches queued on streams (docs/GPU.md, "The emulator").
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "block.h"
#include "runtime_internal.h"

namespace ampipe_gpu_emulator {

constexpr int kMaxSharedOptin = 232448;  // bytes of dynamic shared memory a kernel may opt in to (H100/H200)
constexpr int kDefaultShared = 48 * 1024;
constexpr int kMaxDevices = 64;

using Clock = std::chrono::steady_clock;

struct Device;

struct Stream {
  Device* device = nullptr;
  uint64_t id = 0;  // creation order on its device: the launch seeds follow it
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::pair<std::function<void()>, const char*>> queue;
  bool busy = false;
  bool stopping = false;
  uint64_t launches = 0;  // since the seed was last set
  uint64_t seed_epoch = 0;
  std::thread worker;
};

struct Event {
  unsigned flags = 0;
  std::mutex mutex;
  std::condition_variable changed;
  uint64_t recorded = 0;   // records made
  uint64_t completed = 0;  // records that the stream has passed
  Clock::time_point time{};
  Device* device = nullptr;
};

struct Device {
  int index = 0;
  std::mutex mutex;
  std::vector<Stream*> streams;  // every stream of the device, the legacy default stream included
  std::once_flag legacy_once;
  Stream* legacy = nullptr;
  uint64_t next_stream_id = 0;
  std::string fault;  // the first launch failure: sticky, as a CUDA context after a kernel fault
};

namespace {

// ---- Process state -------------------------------------------------------------------------------
std::atomic<uint64_t> g_seed_epoch{0};  // set_seed calls so far
std::atomic<uint64_t> g_seed{[] {
  const char* v = std::getenv("AMPIPE_GPU_EMULATOR_SEED");
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 0) : 1ULL;
}()};

int device_count_from_env() {
  const char* v = std::getenv("AMPIPE_GPU_EMULATOR_DEVICES");
  if (v == nullptr || *v == '\0') return 1;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0' || n < 0 || n > kMaxDevices) {
    std::fprintf(stderr, "ampipe GPU emulator: AMPIPE_GPU_EMULATOR_DEVICES='%s' is not a count in [0, %d]\n",
                 v, kMaxDevices);
    std::exit(1);
  }
  return static_cast<int>(n);
}

std::vector<Device*>& devices() {
  static auto* d = [] {
    auto* v = new std::vector<Device*>;  // never destroyed: streams may be used during static destruction
    const int n = device_count_from_env();
    for (int i = 0; i < n; ++i) {
      v->push_back(new Device);
      v->back()->index = i;
    }
    return v;
  }();
  return *d;
}

thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::string t_error_text;

std::mutex g_attribute_mutex;
std::unordered_map<const void*, int>& shared_allowance() {
  static auto* m = new std::unordered_map<const void*, int>;
  return *m;
}

}  // namespace
namespace detail {
cudaError_t fail(cudaError_t e) {
  t_last_error = e;
  return e;
}
}  // namespace detail
using detail::fail;
namespace detail {
int device_count() { return static_cast<int>(devices().size()); }
}  // namespace detail
namespace {

Device* current_device() {
  auto& d = devices();
  if (d.empty()) return nullptr;
  return d[static_cast<size_t>(t_device) < d.size() ? t_device : 0];
}

void worker_loop(Stream* s) {
  std::unique_lock<std::mutex> lock(s->mutex);
  for (;;) {
    s->changed.wait(lock, [&] { return s->stopping || !s->queue.empty(); });
    if (s->queue.empty()) return;
    auto [work, what] = std::move(s->queue.front());
    s->queue.pop_front();
    s->busy = true;
    lock.unlock();
    bool faulted = false;
    {
      std::lock_guard<std::mutex> g(s->device->mutex);
      faulted = !s->device->fault.empty();
    }
    if (!faulted) {  // after a fault the context is dead: later work does not run, as on a GPU
      try {
        work();
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> g(s->device->mutex);
        if (s->device->fault.empty()) s->device->fault = std::string(what) + ": " + e.what();
      }
    }
    lock.lock();
    s->busy = false;
    s->changed.notify_all();
  }
}

Stream* make_stream(Device* d) {
  auto* s = new Stream;
  s->device = d;
  {
    std::lock_guard<std::mutex> lock(d->mutex);
    s->id = d->next_stream_id++;
    d->streams.push_back(s);
  }
  s->worker = std::thread(worker_loop, s);
  return s;
}

// nullptr is the current device's legacy default stream (made at first use, before any other).
}  // namespace
namespace detail {
Stream* resolve(Stream* s) {
  if (s != nullptr) return s;
  Device* d = current_device();
  if (d == nullptr) return nullptr;
  std::call_once(d->legacy_once, [d] { d->legacy = make_stream(d); });
  return d->legacy;
}
}  // namespace detail
using detail::resolve;
namespace {

void drain(Stream* s) {
  std::unique_lock<std::mutex> lock(s->mutex);
  s->changed.wait(lock, [&] { return s->queue.empty() && !s->busy; });
}

// The device's sticky fault as the calling thread's error, or success.
cudaError_t device_status(Device* d) {
  std::lock_guard<std::mutex> lock(d->mutex);
  if (d->fault.empty()) return cudaSuccess;
  t_error_text = "unspecified launch failure (GPU emulator: " + d->fault + ")";
  return fail(cudaErrorLaunchFailure);
}

}  // namespace
namespace detail {
void push(Stream* s, std::function<void()> work, const char* what) {
  std::lock_guard<std::mutex> lock(s->mutex);
  s->queue.emplace_back(std::move(work), what);
  s->changed.notify_all();
}
}  // namespace detail
using detail::push;
namespace {}  // namespace

// ---- The emulator's own interface ----------------------------------------------------------------
void set_seed(uint64_t seed) {
  g_seed = seed;
  ++g_seed_epoch;  // every stream's launch count starts again: the same seed replays the same orders
}
uint64_t seed() { return g_seed; }

void enqueue(Stream* stream, std::function<void()> work, const char* what) {
  Stream* s = resolve(stream);
  if (s == nullptr) return;
  push(s, std::move(work), what);
}

void launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            Stream* stream, KernelBody body) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  int allowance = kDefaultShared;
  {
    std::lock_guard<std::mutex> lock(g_attribute_mutex);
    auto it = shared_allowance().find(kernel);
    if (it != shared_allowance().end()) allowance = std::max(allowance, it->second);
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.z > 64 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
    t_error_text = std::string("invalid configuration argument (GPU emulator: kernel ") + name + ")";
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (dynamic_shared_bytes > static_cast<size_t>(allowance)) {
    t_error_text = std::string("invalid argument (GPU emulator: kernel ") + name + " asks for " +
                   std::to_string(dynamic_shared_bytes) + " bytes of dynamic shared memory; it is allowed " +
                   std::to_string(allowance) + " (cudaFuncSetAttribute raises it)";
    fail(cudaErrorInvalidValue);
    return;
  }
  Stream* s = resolve(stream);
  if (s == nullptr) {
    fail(cudaErrorNoDevice);
    return;
  }
  LaunchSpec spec;
  spec.name = name;
  spec.grid = grid;
  spec.block = block;
  spec.dynamic_shared_bytes = dynamic_shared_bytes;
  spec.body = std::move(body);
  {
    std::lock_guard<std::mutex> lock(s->mutex);
    if (s->seed_epoch != g_seed_epoch) {
      s->seed_epoch = g_seed_epoch;
      s->launches = 0;
    }
    const uint64_t n = s->launches++;
    spec.seed = g_seed.load() * 0x9e3779b97f4a7c15ULL ^ (s->id << 40) ^ n ^
                static_cast<uint64_t>(s->device->index) << 56;
  }
  push(
      s, [spec = std::move(spec)] { run_launch(spec); }, name);
}

}  // namespace ampipe_gpu_emulator

using namespace ampipe_gpu_emulator;

// ---- Errors --------------------------------------------------------------------------------------
const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
  }
  return "cudaErrorUnknown";
}

// The generic text, or the detail the emulator gave the calling thread's latest error of that code.
const char* cudaGetErrorString(cudaError_t error) {
  thread_local std::string text;
  switch (error) {
    case cudaSuccess:
      text = "no error";
      break;
    case cudaErrorInvalidValue:
      text = "invalid argument";
      break;
    case cudaErrorMemoryAllocation:
      text = "out of memory";
      break;
    case cudaErrorInvalidConfiguration:
      text = "invalid configuration argument";
      break;
    case cudaErrorInvalidDevice:
      text = "invalid device ordinal";
      break;
    case cudaErrorInvalidResourceHandle:
      text = "invalid resource handle";
      break;
    case cudaErrorNotReady:
      text = "device not ready";
      break;
    case cudaErrorLaunchFailure:
      text = "unspecified launch failure";
      break;
    case cudaErrorNoDevice:
      text = "no CUDA-capable device is detected (GPU emulator: AMPIPE_GPU_EMULATOR_DEVICES=0)";
      break;
  }
  if (!t_error_text.empty() && t_error_text.compare(0, text.size(), text) == 0) text = t_error_text;
  return text.c_str();
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_last_error; }

// ---- Devices -------------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
  *count = static_cast<int>(devices().size());
  return *count == 0 ? fail(cudaErrorNoDevice) : cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= static_cast<int>(devices().size())) return fail(cudaErrorInvalidDevice);
  t_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = t_device;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  Device* d = current_device();
  if (d == nullptr) return fail(cudaErrorNoDevice);
  std::vector<Stream*> streams;
  {
    std::lock_guard<std::mutex> lock(d->mutex);
    streams = d->streams;
  }
  for (Stream* s : streams) drain(s);
  return device_status(d);
}
cudaError_t cudaDeviceReset() {
  (void)cudaDeviceSynchronize();
  Device* d = current_device();
  if (d == nullptr) return fail(cudaErrorNoDevice);
  std::lock_guard<std::mutex> lock(d->mutex);
  d->fault.clear();
  t_last_error = cudaSuccess;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device < 0 || device >= static_cast<int>(devices().size())) return fail(cudaErrorInvalidDevice);
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = kDefaultShared;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = kMaxSharedOptin;
      return cudaSuccess;
  }
  return fail(cudaErrorInvalidValue);
}
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > kMaxSharedOptin)
    return fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_attribute_mutex);
  shared_allowance()[kernel] = value;
  return cudaSuccess;
}

// ---- Streams -------------------------------------------------------------------------------------
// Every stream behaves as non-blocking: the legacy default stream's implicit ordering against
// blocking streams is not emulated (docs/GPU.md); the backend creates only non-blocking ones.
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  Device* d = current_device();
  if (d == nullptr) return fail(cudaErrorNoDevice);
  if (flags > cudaStreamNonBlocking) return fail(cudaErrorInvalidValue);
  resolve(
      nullptr);  // the legacy stream exists first, so stream ids (and launch seeds) do not depend on timing
  *stream = make_stream(d);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return fail(cudaErrorInvalidResourceHandle);
  drain(stream);
  {
    std::lock_guard<std::mutex> lock(stream->mutex);
    stream->stopping = true;
    stream->changed.notify_all();
  }
  stream->worker.join();
  Device* d = stream->device;
  {
    std::lock_guard<std::mutex> lock(d->mutex);
    d->streams.erase(std::remove(d->streams.begin(), d->streams.end(), stream), d->streams.end());
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Stream* s = resolve(stream);
  if (s == nullptr) return fail(cudaErrorNoDevice);
  drain(s);
  return device_status(s->device);
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  Stream* s = resolve(stream);
  if (s == nullptr) return fail(cudaErrorNoDevice);
  if (const cudaError_t e = device_status(s->device); e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(s->mutex);
  return s->queue.empty() && !s->busy ? cudaSuccess : cudaErrorNotReady;  // NotReady is not recorded
}

// The stream waits for the event's latest record at the time of this call (CUDA's semantics); an
// event never recorded is already complete.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
  if (event == nullptr || flags != 0) return fail(cudaErrorInvalidValue);
  Stream* s = resolve(stream);
  if (s == nullptr) return fail(cudaErrorNoDevice);
  uint64_t target = 0;
  {
    std::lock_guard<std::mutex> lock(event->mutex);
    target = event->recorded;
  }
  push(
      s,
      [event, target] {
        std::unique_lock<std::mutex> lock(event->mutex);
        event->changed.wait(lock, [&] { return event->completed >= target; });
      },
      "cudaStreamWaitEvent");
  return cudaSuccess;
}

// ---- Events --------------------------------------------------------------------------------------
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  if (flags > (cudaEventBlockingSync | cudaEventDisableTiming)) return fail(cudaErrorInvalidValue);
  auto* e = new Event;
  e->flags = flags;
  e->device = current_device();
  *event = e;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle);
  // CUDA releases an event's resources once its pending record completes.
  {
    std::unique_lock<std::mutex> lock(event->mutex);
    event->changed.wait(lock, [&] { return event->completed >= event->recorded; });
  }
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle);
  Stream* s = resolve(stream);
  if (s == nullptr) return fail(cudaErrorNoDevice);
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(event->mutex);
    generation = ++event->recorded;
    event->device = s->device;
  }
  push(
      s,
      [event, generation] {
        std::lock_guard<std::mutex> lock(event->mutex);
        event->completed = std::max(event->completed, generation);
        event->time = Clock::now();
        event->changed.notify_all();
      },
      "cudaEventRecord");
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle);
  Device* d = nullptr;
  {
    std::lock_guard<std::mutex> lock(event->mutex);
    if (event->completed < event->recorded) return cudaErrorNotReady;  // not an error: not recorded as one
    d = event->device;
  }
  return d != nullptr ? device_status(d) : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle);
  Device* d = nullptr;
  {
    std::unique_lock<std::mutex> lock(event->mutex);
    const uint64_t target = event->recorded;
    event->changed.wait(lock, [&] { return event->completed >= target; });
    d = event->device;
  }
  return d != nullptr ? device_status(d) : cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (start == nullptr || end == nullptr) return fail(cudaErrorInvalidResourceHandle);
  if ((start->flags | end->flags) & cudaEventDisableTiming) return fail(cudaErrorInvalidResourceHandle);
  std::scoped_lock lock(start->mutex, end->mutex);
  if (start->recorded == 0 || end->recorded == 0) return fail(cudaErrorInvalidResourceHandle);
  if (start->completed < start->recorded || end->completed < end->recorded) return cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}
