// The GPU emulator itself (docs/GPU.md, "The emulator"): kernels run as CUDA runs them, its checks
// catch what CUDA leaves undefined, the thread order follows the seed, events order streams, and
// the libraries keep their contracts. Built in every configuration; runs in -DAMPIPE_CUDA=EMULATE.
#include <gtest/gtest.h>

#if AMPIPE_GPU_EMULATOR

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cub/device/device_radix_sort.cuh>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/launch.cuh"

namespace {

using ampipe::kernels::gpu::launch;

template <class T>
T* device_array(size_t n) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return p;
}

template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// The error the stream reports for a failed launch, with the emulator's detail; then the device is
// reset (the failure is sticky, as a CUDA context's), so the next test starts clean.
std::string launch_failure(cudaStream_t stream = nullptr) {
  const cudaError_t e = cudaStreamSynchronize(stream);
  std::string text = e == cudaErrorLaunchFailure ? cudaGetErrorString(e)
                                                 : std::string("no launch failure: ") + cudaGetErrorName(e);
  EXPECT_EQ(cudaDeviceReset(), cudaSuccess);
  return text;
}

// ---- Kernels ----------------------------------------------------------------------------------

__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x < 32) return;  // these threads never reach the barrier
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void two_barriers_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void missing_lane_shuffle_kernel(int* out) {
  if (threadIdx.x == 31) return;  // lane 31 is named by the mask but never arrives
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void foreign_mask_shuffle_kernel(int* out) {
  // Lanes 16-31 name only lanes 0-15: a mask without the calling lane.
  const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0x0000ffffu;
  out[threadIdx.x] = __shfl_xor_sync(mask, static_cast<int>(threadIdx.x), 1);
}

__global__ void shuffles_kernel(int* xor_out, int* up_out, int* down_out, int* index_out, int* half_xor_out) {
  const int lane = static_cast<int>(threadIdx.x);
  xor_out[lane] = __shfl_xor_sync(0xffffffffu, lane * 10, 5);
  up_out[lane] = __shfl_up_sync(0xffffffffu, lane * 10, 3);
  down_out[lane] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
  index_out[lane] = __shfl_sync(0xffffffffu, lane * 10, 7);
  half_xor_out[lane] = __shfl_xor_sync(0xffffffffu, lane * 10, 8, 16);
}

// Each thread appends its index to `order` as it runs.
__global__ void order_kernel(int* order, int* next) {
  order[atomicAdd(next, 1)] = static_cast<int>(threadIdx.x);
}

// Every thread writes its slot and reads its neighbour's: right only with the barrier between.
__global__ void neighbour_kernel(int* out, bool with_barrier) {
  __shared__ int slots[256];
  slots[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  if (with_barrier) __syncthreads();
  out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void dynamic_shared_kernel(float* out) {
  AMPIPE_DYNAMIC_SHARED(float, buffer);
  buffer[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = buffer[blockDim.x - 1 - threadIdx.x];
}

__global__ void fill_kernel(int* out, int value) { out[threadIdx.x] = value; }

__global__ void grid_kernel(int* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned t = threadIdx.x + blockDim.x * threadIdx.y;
  out[block * blockDim.x * blockDim.y + t] = static_cast<int>(block * 1000 + t);
}

// ---- Checks the emulator makes -------------------------------------------------------------------

TEST(GpuEmulator, ThreadsExitingWhileOthersWaitAtABarrierFailTheLaunchNamingTheKernel) {
  int* out = device_array<int>(64);
  launch("early_exit_kernel", early_exit_kernel, 1, 64, 0, nullptr, out);
  const std::string error = launch_failure();
  EXPECT_NE(error.find("early_exit_kernel"), std::string::npos) << error;
  EXPECT_NE(error.find("threads 0-31 exited while threads 32-63 wait at __syncthreads"), std::string::npos)
      << error;
}

TEST(GpuEmulator, ThreadsAtDifferentBarriersFailTheLaunch) {
  int* out = device_array<int>(64);
  launch("two_barriers_kernel", two_barriers_kernel, 1, 64, 0, nullptr, out);
  const std::string error = launch_failure();
  EXPECT_NE(error.find("two_barriers_kernel"), std::string::npos) << error;
  EXPECT_NE(error.find("different __syncthreads"), std::string::npos) << error;
}

TEST(GpuEmulator, AShuffleWhoseMaskNamesALaneThatNeverArrivesFails) {
  int* out = device_array<int>(32);
  launch("missing_lane_shuffle_kernel", missing_lane_shuffle_kernel, 1, 32, 0, nullptr, out);
  const std::string error = launch_failure();
  EXPECT_NE(error.find("missing_lane_shuffle_kernel"), std::string::npos) << error;
  EXPECT_NE(error.find("lane 31 (thread 31) does not arrive: it has exited"), std::string::npos) << error;
}

TEST(GpuEmulator, AShuffleMaskWithoutTheCallingLaneFails) {
  int* out = device_array<int>(32);
  launch("foreign_mask_shuffle_kernel", foreign_mask_shuffle_kernel, 1, 32, 0, nullptr, out);
  const std::string error = launch_failure();
  EXPECT_NE(error.find("which does not name its own lane"), std::string::npos) << error;
}

TEST(GpuEmulator, AFailedLaunchIsStickyLikeACudaContext) {
  int* out = device_array<int>(64);
  launch("early_exit_kernel", early_exit_kernel, 1, 64, 0, nullptr, out);
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  int* host = nullptr;
  EXPECT_EQ(cudaMemcpy(&host, out, sizeof host, cudaMemcpyDeviceToHost), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaDeviceReset(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(GpuEmulator, BadLaunchConfigurationsAreRefusedAtLaunch) {
  int* out = device_array<int>(2048);
  EXPECT_THROW(launch("fill_kernel", fill_kernel, 1, 1025, 0, nullptr, out, 1), std::exception);
  EXPECT_THROW(launch("fill_kernel", fill_kernel, 0, 32, 0, nullptr, out, 1), std::exception);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // check_launch consumed each error
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
}

TEST(GpuEmulator, DynamicSharedMemoryOverTheKernelsAllowanceIsRefusedUntilRaised) {
  float* out = device_array<float>(256);
  const size_t bytes = 64 * 1024;  // over the default 48 KiB
  try {
    launch("dynamic_shared_kernel", dynamic_shared_kernel, 1, 256, bytes, nullptr, out);
    FAIL() << "a launch over the allowance was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("dynamic_shared_kernel"), std::string::npos) << e.what();
  }
  ASSERT_EQ(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes)),
            cudaSuccess);
  launch("dynamic_shared_kernel", dynamic_shared_kernel, 1, 256, bytes, nullptr, out);
  const std::vector<float> h = to_host(out, 256);
  for (int i = 0; i < 256; ++i) ASSERT_EQ(h[i], 255 - i);
}

// ---- Kernels run as CUDA runs them ------------------------------------------------------------------

TEST(GpuEmulator, ShufflesMoveValuesAsCudaDefines) {
  int* d = device_array<int>(5 * 32);
  launch("shuffles_kernel", shuffles_kernel, 1, 32, 0, nullptr, d, d + 32, d + 64, d + 96, d + 128);
  const std::vector<int> h = to_host(d, 5 * 32);
  for (int lane = 0; lane < 32; ++lane) {
    EXPECT_EQ(h[lane], (lane ^ 5) * 10) << lane;
    EXPECT_EQ(h[32 + lane], (lane >= 3 ? lane - 3 : lane) * 10) << lane;
    EXPECT_EQ(h[64 + lane], (lane + 3 < 32 ? lane + 3 : lane) * 10) << lane;
    EXPECT_EQ(h[96 + lane], 70) << lane;
    EXPECT_EQ(h[128 + lane], (lane ^ 8) * 10) << lane;  // stays inside its 16-lane segment
  }
}

TEST(GpuEmulator, EveryBlockAndThreadOfA3DLaunchRunsOnce) {
  const dim3 grid(3, 2, 2), block(8, 4);
  const size_t n = 12 * 32;
  int* out = device_array<int>(n);
  launch("grid_kernel", grid_kernel, grid, block, 0, nullptr, out);
  const std::vector<int> h = to_host(out, n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(h[i], static_cast<int>((i / 32) * 1000 + i % 32)) << i;
}

std::vector<int> thread_order(uint64_t seed) {
  ampipe_gpu_emulator::set_seed(seed);
  int* order = device_array<int>(128);
  int* next = device_array<int>(1);
  EXPECT_EQ(cudaMemset(next, 0, sizeof(int)), cudaSuccess);
  launch("order_kernel", order_kernel, 1, 128, 0, nullptr, order, next);
  std::vector<int> h = to_host(order, 128);
  cudaFree(order);
  cudaFree(next);
  return h;
}

TEST(GpuEmulator, TheThreadOrderIsShuffledAndFollowsTheSeed) {
  const uint64_t before = ampipe_gpu_emulator::seed();
  const std::vector<int> a = thread_order(11), b = thread_order(12), again = thread_order(11);
  ampipe_gpu_emulator::set_seed(before);
  std::vector<int> identity(128);
  std::iota(identity.begin(), identity.end(), 0);
  std::vector<int> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, identity) << "every thread ran once";
  EXPECT_NE(a, identity) << "threads ran in launch order";
  EXPECT_NE(a, b) << "two seeds gave the same order";
  EXPECT_EQ(a, again) << "one seed gave two orders";
}

TEST(GpuEmulator, AMissingSyncthreadsGivesAWrongResult) {
  int* out = device_array<int>(256);
  bool any_wrong = false;
  for (int attempt = 0; attempt < 4 && !any_wrong; ++attempt) {
    launch("neighbour_kernel", neighbour_kernel, 1, 256, 0, nullptr, out, false);
    const std::vector<int> h = to_host(out, 256);
    for (int i = 0; i < 256; ++i) any_wrong |= h[i] != (i + 1) % 256 + 1;
  }
  EXPECT_TRUE(any_wrong) << "the race went unseen in 4 launches";
  launch("neighbour_kernel", neighbour_kernel, 1, 256, 0, nullptr, out, true);
  const std::vector<int> h = to_host(out, 256);
  for (int i = 0; i < 256; ++i) ASSERT_EQ(h[i], (i + 1) % 256 + 1) << i;
}

TEST(GpuEmulator, FreshDeviceMemoryReadsAsNaN) {
  float* p = device_array<float>(4);
  const std::vector<float> h = to_host(p, 4);
  for (float v : h) EXPECT_TRUE(std::isnan(v));
}

// ---- Streams and events ------------------------------------------------------------------------------

TEST(GpuEmulator, StreamsRunAsynchronouslyAndAnEventOrdersThem) {
  cudaStream_t a = nullptr, b = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
  int* x = device_array<int>(32);
  int* y = device_array<int>(32);
  ASSERT_EQ(cudaMemset(x, 0, 32 * sizeof(int)), cudaSuccess);
  std::atomic<bool> release{false};
  // Stream a is held until the test releases it: then it writes 7s into x and records the event.
  ampipe_gpu_emulator::enqueue(
      a,
      [&] {
        while (!release) std::this_thread::yield();
      },
      "hold");
  launch("fill_kernel", fill_kernel, 1, 32, 0, a, x, 7);
  cudaEvent_t written = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&written, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(written, a), cudaSuccess);
  // Without the event, stream b runs at once, ahead of a: it copies x's zeros.
  ASSERT_EQ(cudaMemcpyAsync(y, x, 32 * sizeof(int), cudaMemcpyDeviceToDevice, b), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(written), cudaErrorNotReady);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // "not ready" is not an error
  EXPECT_EQ(to_host(y, 32)[0], 0);
  // With the event, b waits for a's kernel.
  ASSERT_EQ(cudaStreamWaitEvent(b, written, 0), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(y, x, 32 * sizeof(int), cudaMemcpyDeviceToDevice, b), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(b), cudaErrorNotReady);
  release = true;
  ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(written), cudaSuccess);
  for (int v : to_host(y, 32)) EXPECT_EQ(v, 7);
  cudaEventDestroy(written);
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
}

TEST(GpuEmulator, CopiesCheckTheirDirectionAgainstThePointers) {
  int* d = device_array<int>(4);
  int host[4] = {1, 2, 3, 4};
  EXPECT_EQ(cudaMemcpy(host, d, sizeof host, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice), cudaSuccess);
  int back[4] = {};
  EXPECT_EQ(cudaMemcpy(back, d, sizeof back, cudaMemcpyDefault), cudaSuccess);
  EXPECT_EQ(back[3], 4);
  EXPECT_EQ(cudaFree(host), cudaErrorInvalidValue);
}

// ---- Libraries --------------------------------------------------------------------------------------

TEST(GpuEmulator, SgemmFollowsCublasColumnMajorContract) {
  // C (2x3) = A^T B with A stored 4x2 (lda 4... k x m = 3 x 2, padded to lda 4), B 3x3, column-major.
  const int m = 2, n = 3, k = 3, lda = 4, ldb = 3, ldc = 2;
  std::vector<float> A(lda * m), B(ldb * n), C(ldc * n, 1.0f);
  for (size_t i = 0; i < A.size(); ++i) A[i] = static_cast<float>(i + 1);
  for (size_t i = 0; i < B.size(); ++i) B[i] = static_cast<float>(2 * i - 3);
  float* dA = device_array<float>(A.size());
  float* dB = device_array<float>(B.size());
  float* dC = device_array<float>(C.size());
  cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dC, C.data(), C.size() * 4, cudaMemcpyHostToDevice);
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const float alpha = 2.0f, beta = 0.5f;
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, lda, dB, ldb, &beta, dC, ldc),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, dA, 2, dB, ldb, &beta, dC, ldc),
            CUBLAS_STATUS_INVALID_VALUE);  // lda below op(A)'s stored rows
  const std::vector<float> got = to_host(dC, C.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double want = beta * C[i + j * ldc];
      for (int t = 0; t < k; ++t) want += alpha * A[t + i * lda] * B[t + j * ldb];
      EXPECT_FLOAT_EQ(got[i + j * ldc], static_cast<float>(want)) << i << "," << j;
    }
  cublasDestroy(h);
}

TEST(GpuEmulator, RadixSortPairsIsStableOnTheGivenBitsAndQueriesItsStorage) {
  const std::vector<uint32_t> keys = {5, 3, 5, 1, 3, 0x105, 2};
  const int n = static_cast<int>(keys.size());
  uint32_t* kin = device_array<uint32_t>(n);
  uint32_t* kout = device_array<uint32_t>(n);
  int64_t* vin = device_array<int64_t>(n);
  int64_t* vout = device_array<int64_t>(n);
  std::vector<int64_t> values(n);
  std::iota(values.begin(), values.end(), 0);
  cudaMemcpy(kin, keys.data(), n * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(vin, values.data(), n * 8, cudaMemcpyHostToDevice);
  size_t temp_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, kin, kout, vin, vout, n, 0, 8), cudaSuccess);
  ASSERT_GT(temp_bytes, 0u);
  void* temp = device_array<unsigned char>(temp_bytes);
  size_t too_small = temp_bytes - 1;
  EXPECT_EQ(cub::DeviceRadixSort::SortPairs(temp, too_small, kin, kout, vin, vout, n, 0, 8),
            cudaErrorInvalidValue);
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, kin, kout, vin, vout, n, 0, 8), cudaSuccess);
  // Bits 0-7 only: 0x105 sorts as 5, after the two 5s that came before it.
  EXPECT_EQ(to_host(kout, n), (std::vector<uint32_t>{1, 2, 3, 3, 5, 5, 0x105}));
  EXPECT_EQ(to_host(vout, n), (std::vector<int64_t>{3, 6, 1, 4, 0, 2, 5}));
}

TEST(GpuEmulator, TheDeviceCountComesFromTheEnvironment) {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  const char* v = std::getenv("AMPIPE_GPU_EMULATOR_DEVICES");
  EXPECT_EQ(count, v != nullptr ? std::atoi(v) : 1);
  EXPECT_EQ(cudaSetDevice(count), cudaErrorInvalidDevice);
}

}  // namespace

#else

TEST(GpuEmulator, NeedsTheEmulatedBuild) {
  GTEST_SKIP() << "configure with -DAMPIPE_CUDA=EMULATE to run the GPU emulator's tests";
}

#endif
