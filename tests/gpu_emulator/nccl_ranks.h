// Ranks of an emulated-NCCL test (tests/gpu_emulator/test_gpu_emulator_nccl.cpp): device buffers,
// ranks as threads of this process (one emulated device each) or as spawned copies of the test
// binary, and waits with limits, so that a hang fails a test instead of stopping it.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ampipe::testing::nccl_ranks {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

#define REQUIRE_DEVICES(n)                                                                                   \
  do {                                                                                                       \
    int count_ = 0;                                                                                          \
    if (cudaGetDeviceCount(&count_) != cudaSuccess || count_ < (n)) {                                        \
      (void)cudaGetLastError();                                                                              \
      GTEST_SKIP() << "needs " << (n) << " emulated devices (AMPIPE_GPU_EMULATOR_DEVICES=" << count_ << ")"; \
    }                                                                                                        \
  } while (0)

template <class T>
struct DeviceBuffer {
  T* data = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n) : count(n) {
    EXPECT_EQ(cudaMalloc(&data, (n + 1) * sizeof(T)), cudaSuccess);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data); }
  void upload(const std::vector<T>& h) {
    EXPECT_EQ(cudaMemcpy(data, h.data(), count * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> h(count);
    EXPECT_EQ(cudaMemcpy(h.data(), data, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
};

struct Rank {
  int rank = 0;
  int nranks = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  ncclResult_t async_error() const {
    ncclResult_t r = ncclInternalError;
    EXPECT_EQ(ncclCommGetAsyncError(comm, &r), ncclSuccess);
    return r;
  }
};

// Waits for the stream with a limit, so a hang fails the test instead of stopping it.
inline bool finishes_within(cudaStream_t stream, Clock::duration limit) {
  const auto deadline = Clock::now() + limit;
  while (cudaStreamQuery(stream) == cudaErrorNotReady) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return cudaStreamSynchronize(stream) == cudaSuccess;
}

// Opens rank `rank` of `id` on `device` with its own stream, runs `body`, then destroys the
// communicator (unless `body` aborted it and reset me.comm).
inline void as_rank(int rank, int nranks, const ncclUniqueId& id, int device,
                    const std::function<void(Rank&)>& body) {
  Rank me{rank, nranks};
  ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&me.stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(ncclCommInitRank(&me.comm, nranks, id, rank), ncclSuccess) << ncclGetLastError(nullptr);
  body(me);
  EXPECT_EQ(ncclCommDestroy(me.comm), ncclSuccess);
  EXPECT_EQ(cudaStreamDestroy(me.stream), cudaSuccess);
}

// Runs `body` as ranks 0..n-1 on threads, rank r on device r.
inline void run_ranks(int nranks, const std::function<void(Rank&)>& body) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::vector<std::thread> threads;
  for (int r = 0; r < nranks; ++r) threads.emplace_back([&, r] { as_rank(r, nranks, id, r, body); });
  for (std::thread& t : threads) t.join();
}
inline std::string hex_of(const ncclUniqueId& id) {
  std::string s;
  char two[3];
  for (const char c : id.internal) {
    std::snprintf(two, sizeof two, "%02x", static_cast<unsigned char>(c));
    s += two;
  }
  return s;
}
inline ncclUniqueId id_of(const std::string& hex) {
  ncclUniqueId id{};
  for (size_t i = 0; i < sizeof id.internal && 2 * i + 1 < hex.size(); ++i) {
    id.internal[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  }
  return id;
}

// Starts a copy of this binary as rank `rank` doing `scenario`, with `devices` emulated devices.
inline pid_t spawn_rank(const std::string& scenario, const ncclUniqueId& id, int rank, int nranks,
                        int devices, const std::string& inject = "") {
  std::vector<std::string> env = {"AMPIPE_NCCL_TEST_CHILD=" + scenario, "AMPIPE_NCCL_TEST_ID=" + hex_of(id),
                                  "AMPIPE_NCCL_TEST_RANK=" + std::to_string(rank),
                                  "AMPIPE_NCCL_TEST_NRANKS=" + std::to_string(nranks),
                                  "AMPIPE_GPU_EMULATOR_DEVICES=" + std::to_string(devices)};
  if (!inject.empty()) env.push_back("AMPIPE_GPU_EMULATOR_NCCL_ERROR=" + inject);
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const bool ours = entry.rfind("AMPIPE_NCCL_TEST_", 0) == 0 ||
                      entry.rfind("AMPIPE_GPU_EMULATOR_DEVICES=", 0) == 0 ||
                      entry.rfind("AMPIPE_GPU_EMULATOR_NCCL_ERROR=", 0) == 0;
    if (!ours) env.push_back(entry);
  }
  std::vector<char*> envp, argv;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=GpuEmulatorNcclChild.Rank";
  argv = {exe.data(), filter.data(), nullptr};
  pid_t pid = -1;
  EXPECT_EQ(::posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
  return pid;
}

// The child's exit status, or -1 if it ran past `limit` (then it is killed).
inline int exit_status(pid_t pid, Clock::duration limit) {
  const auto deadline = Clock::now() + limit;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace ampipe::testing::nccl_ranks
