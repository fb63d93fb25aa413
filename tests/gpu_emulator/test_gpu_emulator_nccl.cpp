// The GPU emulator's NCCL (docs/GPU.md, "The emulator"; src/gpu_emulator/include/nccl.h): data moves
// between ranks as NCCL moves it, in stream order, with NCCL's collective semantics and errors.
// Ranks run as threads of this process (one emulated device each), and, for the cross-process
// path, as copies of this binary started with posix_spawn (AMPIPE_NCCL_TEST_CHILD names what the
// copy does; it then runs only GpuEmulatorNcclChild.Rank). Built in every configuration; runs in
// -DAMPIPE_CUDA=EMULATE.
#include <gtest/gtest.h>

#if AMPIPE_GPU_EMULATOR

#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "gpu_emulator/nccl_ranks.h"
#include "kernels/cuda/launch.cuh"

namespace {

using ampipe::kernels::gpu::launch;
using namespace ampipe::testing::nccl_ranks;
using namespace std::chrono_literals;

// Four emulated devices unless the environment chose (read by the emulator at its first call).
const bool g_devices_chosen = [] { return ::setenv("AMPIPE_GPU_EMULATOR_DEVICES", "4", 0) == 0; }();

// ---- What the ranks check (shared by the thread and process tests) -----------------------------
size_t a2a_count(int from, int to, int nranks) {
  if (from == 0 && to == nranks - 1) return 300000;           // over the socket buffer: partial writes
  return static_cast<size_t>((from * 7 + to * 3) % 5) * 997;  // zero for some pairs
}
int32_t a2a_value(int from, int to, size_t i) {
  return static_cast<int32_t>(static_cast<uint32_t>(from) << 28 | static_cast<uint32_t>(to) << 24 |
                              (i & 0xffffff));
}

// An all-to-all with a count per pair (self and zero included) as one group of sends and receives.
void all_to_all_v(Rank& me) {
  const int n = me.nranks;
  std::vector<size_t> send_at(n + 1, 0), recv_at(n + 1, 0);
  for (int p = 0; p < n; ++p) {
    send_at[p + 1] = send_at[p] + a2a_count(me.rank, p, n);
    recv_at[p + 1] = recv_at[p] + a2a_count(p, me.rank, n);
  }
  std::vector<int32_t> host(send_at[n]);
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < a2a_count(me.rank, p, n); ++i) host[send_at[p] + i] = a2a_value(me.rank, p, i);
  }
  DeviceBuffer<int32_t> send(send_at[n]), recv(recv_at[n]);
  send.upload(host);
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  for (int p = 0; p < n; ++p) {
    ASSERT_EQ(ncclSend(send.data + send_at[p], a2a_count(me.rank, p, n), ncclInt32, p, me.comm, me.stream),
              ncclSuccess);
    ASSERT_EQ(ncclRecv(recv.data + recv_at[p], a2a_count(p, me.rank, n), ncclInt32, p, me.comm, me.stream),
              ncclSuccess);
  }
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  ASSERT_TRUE(finishes_within(me.stream, 60s));
  EXPECT_EQ(me.async_error(), ncclSuccess) << ncclGetLastError(me.comm);
  const std::vector<int32_t> got = recv.download();
  for (int p = 0; p < n; ++p) {
    size_t wrong = 0;
    for (size_t i = 0; i < a2a_count(p, me.rank, n); ++i)
      wrong += got[recv_at[p] + i] != a2a_value(p, me.rank, i);
    EXPECT_EQ(wrong, 0u) << "rank " << me.rank << " from rank " << p;
  }
}

// Inputs whose float sums depend on the order of the additions.
float input(int rank, size_t i) {
  return 1.0f / static_cast<float>(1 + (rank * 131 + i) % 97) + rank * 0.37f;
}

// a op b as NCCL reduces; integers wrap.
template <class T>
T combine(ncclRedOp_t op, T a, T b) {
  if (op == ncclMax) return std::max(a, b);
  if (op == ncclMin) return std::min(a, b);
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(op == ncclProd ? static_cast<U>(a) * static_cast<U>(b)
                                         : static_cast<U>(a) + static_cast<U>(b));
  } else {
    return op == ncclProd ? a * b : a + b;
  }
}

// Element i reduced over ranks 0..n-1 in that order.
template <class T>
T reference(ncclRedOp_t op, int nranks, size_t i, const std::function<T(int, size_t)>& in) {
  T acc = in(0, i);
  for (int p = 1; p < nranks; ++p) acc = combine(op, acc, in(p, i));
  return op == ncclAvg ? static_cast<T>(acc / static_cast<T>(nranks)) : acc;
}

// AllReduce of `count` elements, in place or not, against the rank-order host reference.
template <class T>
void check_all_reduce(Rank& me, ncclDataType_t type, ncclRedOp_t op, size_t count, bool in_place,
                      const std::function<T(int, size_t)>& in) {
  std::vector<T> mine(count);
  for (size_t i = 0; i < count; ++i) mine[i] = in(me.rank, i);
  DeviceBuffer<T> send(count), recv(count);
  send.upload(mine);
  T* out = in_place ? send.data : recv.data;
  ASSERT_EQ(ncclAllReduce(send.data, out, count, type, op, me.comm, me.stream), ncclSuccess);
  ASSERT_TRUE(finishes_within(me.stream, 60s));
  const std::vector<T> got = in_place ? send.download() : recv.download();
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) wrong += !(got[i] == reference<T>(op, me.nranks, i, in));
  EXPECT_EQ(wrong, 0u) << "AllReduce op " << op << " type " << type << " count " << count << " rank "
                       << me.rank;
}

// Small integers as IEEE half and bfloat16 (exact), to check the 16-bit reductions.
uint16_t half_of(int k) {
  if (k == 0) return 0;
  int e = 0;
  while ((2 << e) <= k) ++e;
  return static_cast<uint16_t>((e + 15) << 10 | (k - (1 << e)) << (10 - e));
}
uint16_t bfloat16_of(int k) {
  const float f = static_cast<float>(k);
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>(bits >> 16);
}

void check_sixteen_bit_sums(Rank& me) {
  const size_t count = 301;
  for (const ncclDataType_t type : {ncclFloat16, ncclBfloat16}) {
    auto encode = type == ncclFloat16 ? half_of : bfloat16_of;
    std::vector<uint16_t> mine(count);
    for (size_t i = 0; i < count; ++i) mine[i] = encode(static_cast<int>((i + me.rank) % 8));
    DeviceBuffer<uint16_t> buffer(count);
    buffer.upload(mine);
    ASSERT_EQ(ncclAllReduce(buffer.data, buffer.data, count, type, ncclSum, me.comm, me.stream), ncclSuccess);
    ASSERT_TRUE(finishes_within(me.stream, 60s));
    const std::vector<uint16_t> got = buffer.download();
    for (size_t i = 0; i < count; ++i) {
      int sum = 0;
      for (int p = 0; p < me.nranks; ++p) sum += static_cast<int>((i + p) % 8);
      ASSERT_EQ(got[i], encode(sum)) << "type " << type << " element " << i;
    }
  }
}

void check_all_reduces(Rank& me) {
  const std::function<float(int, size_t)> f = input;
  const std::function<double(int, size_t)> d = [](int r, size_t i) { return input(r, i) * 1.000001; };
  const std::function<int32_t(int, size_t)> i32 = [](int r, size_t i) {
    return static_cast<int32_t>(i * 7) - r * 1000;
  };
  const std::function<int64_t(int, size_t)> i64 = [](int r, size_t i) {
    return (int64_t{1} << 40) * r - int64_t(i);
  };
  for (const size_t count : {size_t{0}, size_t{1}, size_t{5}, size_t{100003}}) {
    for (const ncclRedOp_t op : {ncclSum, ncclProd, ncclMax, ncclMin, ncclAvg}) {
      check_all_reduce<float>(me, ncclFloat32, op, count, false, f);
      check_all_reduce<int32_t>(me, ncclInt32, op, count, false, i32);
    }
    check_all_reduce<double>(me, ncclFloat64, ncclSum, count, false, d);
    check_all_reduce<int64_t>(me, ncclInt64, ncclMax, count, false, i64);
    check_all_reduce<float>(me, ncclFloat32, ncclSum, count, true, f);
  }
  check_sixteen_bit_sums(me);
}

// Broadcast, AllGather and ReduceScatter of `count` floats (per rank), against the host.
void check_other_collectives(Rank& me, size_t count, bool in_place) {
  const int n = me.nranks;
  const int root = n - 1;
  const size_t total = count * static_cast<size_t>(n);
  std::vector<float> all(total);  // every rank's input, rank-major: rank p's elements at p * count
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < count; ++i) all[p * count + i] = input(p, i);
  }
  std::vector<float> mine(all.begin() + me.rank * count, all.begin() + (me.rank + 1) * count);
  DeviceBuffer<float> small(count), big(total);
  // Broadcast: in place, the root's buffer is both.
  small.upload(me.rank == root ? std::vector<float>(all.begin() + root * count, all.end()) : mine);
  DeviceBuffer<float> out(count);
  ASSERT_EQ(ncclBroadcast(small.data, in_place ? small.data : out.data, count, ncclFloat32, root, me.comm,
                          me.stream),
            ncclSuccess);
  ASSERT_TRUE(finishes_within(me.stream, 60s));
  EXPECT_EQ(in_place ? small.download() : out.download(),
            std::vector<float>(all.begin() + root * count, all.end()));
  // AllGather: in place, each rank's part of the output is its input.
  std::vector<float> before(total, -1.0f);
  if (in_place) std::copy(mine.begin(), mine.end(), before.begin() + me.rank * count);
  big.upload(before);
  small.upload(mine);
  ASSERT_EQ(ncclAllGather(in_place ? big.data + me.rank * count : small.data, big.data, count, ncclFloat32,
                          me.comm, me.stream),
            ncclSuccess);
  ASSERT_TRUE(finishes_within(me.stream, 60s));
  EXPECT_EQ(big.download(), all);
  // ReduceScatter: rank r gets the rank-order sum of everyone's part r; in place, the output is
  // the rank's part of the input.
  std::vector<float> everyone_mine(total);
  for (size_t i = 0; i < total; ++i) everyone_mine[i] = input(me.rank, i);
  big.upload(everyone_mine);
  float* result = in_place ? big.data + me.rank * count : out.data;
  ASSERT_EQ(ncclReduceScatter(big.data, result, count, ncclFloat32, ncclSum, me.comm, me.stream),
            ncclSuccess);
  ASSERT_TRUE(finishes_within(me.stream, 60s));
  std::vector<float> got(count);
  ASSERT_EQ(cudaMemcpy(got.data(), result, count * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  const std::function<float(int, size_t)> f = input;
  for (size_t i = 0; i < count; ++i)
    ASSERT_EQ(got[i], reference<float>(ncclSum, n, me.rank * count + i, f)) << i;
}

void expect_duplicate_refused(ncclResult_t r) {
  EXPECT_EQ(r, ncclInvalidUsage);
  const std::string text = ncclGetLastError(nullptr);
  EXPECT_NE(text.find("ranks 0 and 1 are both on device 0"), std::string::npos) << text;
}

// What a spawned rank does; its test result is the process's exit status.
void run_child() {
  const std::string scenario = std::getenv("AMPIPE_NCCL_TEST_CHILD");
  const ncclUniqueId id = id_of(std::getenv("AMPIPE_NCCL_TEST_ID"));
  const int rank = std::atoi(std::getenv("AMPIPE_NCCL_TEST_RANK"));
  const int nranks = std::atoi(std::getenv("AMPIPE_NCCL_TEST_NRANKS"));
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  if (scenario == "duplicate") {
    ncclComm_t comm = nullptr;
    expect_duplicate_refused(ncclCommInitRank(&comm, nranks, id, rank));
    return;
  }
  as_rank(rank, nranks, id, rank % devices, [&](Rank& me) {
    if (scenario == "exit") ::_exit(0);  // as a crash: no destroy, the kernel closes the sockets
    if (scenario == "collectives") {
      all_to_all_v(me);
      check_all_reduce<float>(me, ncclFloat32, ncclSum, 1001, false, input);
      check_other_collectives(me, 333, false);
    }
    if (scenario == "inject") {  // unit 1 works; unit 2 is the injected failure
      check_all_reduce<float>(me, ncclFloat32, ncclSum, 1000, false, input);
      DeviceBuffer<float> x(1000);
      ASSERT_EQ(ncclAllReduce(x.data, x.data, 1000, ncclFloat32, ncclSum, me.comm, me.stream), ncclSuccess);
      ASSERT_TRUE(finishes_within(me.stream, 30s));
      EXPECT_EQ(me.async_error(), ncclSystemError);
      EXPECT_NE(std::string(ncclGetLastError(me.comm)).find("injected by AMPIPE_GPU_EMULATOR_NCCL_ERROR=2"),
                std::string::npos)
          << ncclGetLastError(me.comm);
    }
  });
}

class ChildRank : public testing::Test {
  void TestBody() override { run_child(); }
};
const bool g_child_registered = [] {
  if (std::getenv("AMPIPE_NCCL_TEST_CHILD") == nullptr) return false;
  testing::RegisterTest("GpuEmulatorNcclChild", "Rank", nullptr, nullptr, __FILE__, __LINE__,
                        []() -> ChildRank* { return new ChildRank; });
  return true;
}();

// ---- Kernels ----------------------------------------------------------------------------------
__global__ void fill_kernel(float* out, float value) { out[threadIdx.x] = value; }
__global__ void double_kernel(float* x) { x[threadIdx.x] *= 2.0f; }

// ---- Tests ------------------------------------------------------------------------------------
TEST(GpuEmulatorNccl, GroupsOfSendsAndReceivesMoveVaryingCountsIncludingZeroAndSelf) {
  REQUIRE_DEVICES(4);
  for (const int n : {2, 3, 4}) run_ranks(n, all_to_all_v);
}

TEST(GpuEmulatorNccl, AllReduceMatchesTheRankOrderHostReferenceOnEveryRank) {
  REQUIRE_DEVICES(4);
  run_ranks(4, check_all_reduces);
  run_ranks(3, [](Rank& me) { check_all_reduce<float>(me, ncclFloat32, ncclSum, 100003, true, input); });
}

TEST(GpuEmulatorNccl, BroadcastAllGatherAndReduceScatterMatchTheHostInAndOutOfPlace) {
  REQUIRE_DEVICES(3);
  run_ranks(3, [](Rank& me) {
    for (const size_t count : {size_t{0}, size_t{1}, size_t{4099}, size_t{70001}}) {
      check_other_collectives(me, count, false);
      check_other_collectives(me, count, true);
    }
  });
}

TEST(GpuEmulatorNccl, AnOperationSendsWhatItsStreamWroteBeforeItAndNotAfter) {
  REQUIRE_DEVICES(2);
  std::atomic<bool> release{false};
  run_ranks(2, [&](Rank& me) {
    DeviceBuffer<float> x(256);
    if (me.rank == 0) {
      ampipe_gpu_emulator::enqueue(
          me.stream,
          [&] {
            while (!release) std::this_thread::sleep_for(1ms);
          },
          "hold");
      launch("fill_kernel", fill_kernel, 1, 256, 0, me.stream, x.data, 7.0f);
      ASSERT_EQ(ncclSend(x.data, 256, ncclFloat32, 1, me.comm, me.stream), ncclSuccess);
      launch("fill_kernel", fill_kernel, 1, 256, 0, me.stream, x.data, 9.0f);
      std::this_thread::sleep_for(50ms);
      EXPECT_EQ(cudaStreamQuery(me.stream), cudaErrorNotReady);
      release = true;
      ASSERT_TRUE(finishes_within(me.stream, 30s));
    } else {
      std::vector<float> host(256, 0.0f);
      ASSERT_EQ(ncclRecv(x.data, 256, ncclFloat32, 0, me.comm, me.stream), ncclSuccess);
      launch("double_kernel", double_kernel, 1, 256, 0, me.stream, x.data);
      ASSERT_EQ(cudaMemcpyAsync(host.data(), x.data, 256 * sizeof(float), cudaMemcpyDeviceToHost, me.stream),
                cudaSuccess);
      ASSERT_TRUE(finishes_within(me.stream, 30s));
      EXPECT_EQ(host, std::vector<float>(256, 14.0f));
    }
  });
}

TEST(GpuEmulatorNccl, AGroupOnTwoStreamsOfOneCommunicatorRunsAsOneUnit) {
  REQUIRE_DEVICES(2);
  run_ranks(2, [](Rank& me) {
    const size_t count = 1 << 20;  // both ranks send first: only one unit for the group avoids a deadlock
    cudaStream_t second = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&second, cudaStreamNonBlocking), cudaSuccess);
    DeviceBuffer<float> send(count), recv(count);
    send.upload(std::vector<float>(count, static_cast<float>(me.rank + 1)));
    ASSERT_EQ(ncclGroupStart(), ncclSuccess);
    ASSERT_EQ(ncclSend(send.data, count, ncclFloat32, 1 - me.rank, me.comm, me.stream), ncclSuccess);
    ASSERT_EQ(ncclRecv(recv.data, count, ncclFloat32, 1 - me.rank, me.comm, second), ncclSuccess);
    ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
    ASSERT_TRUE(finishes_within(second, 30s));
    ASSERT_TRUE(finishes_within(me.stream, 30s));
    EXPECT_EQ(recv.download(), std::vector<float>(count, static_cast<float>(2 - me.rank)));
    cudaStreamDestroy(second);
  });
}

TEST(GpuEmulatorNccl, NonBlockingInitReturnsInProgressThenConnects) {
  REQUIRE_DEVICES(2);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::atomic<bool> rank0_checked{false};
  std::thread rank1([&] {
    while (!rank0_checked) std::this_thread::sleep_for(1ms);
    as_rank(1, 2, id, 1,
            [](Rank& me) { check_all_reduce<float>(me, ncclFloat32, ncclSum, 777, false, input); });
  });
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  Rank me{0, 2};
  ASSERT_EQ(cudaStreamCreateWithFlags(&me.stream, cudaStreamNonBlocking), cudaSuccess);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  EXPECT_EQ(config.blocking, 1);
  config.blocking = 0;
  ASSERT_EQ(ncclCommInitRankConfig(&me.comm, 2, id, 0, &config), ncclInProgress);
  ASSERT_NE(me.comm, nullptr);
  EXPECT_EQ(me.async_error(), ncclInProgress);  // rank 1 has not started
  DeviceBuffer<float> x(4);
  EXPECT_EQ(ncclAllReduce(x.data, x.data, 4, ncclFloat32, ncclSum, me.comm, me.stream), ncclInvalidArgument);
  rank0_checked = true;
  const auto deadline = Clock::now() + 30s;
  while (me.async_error() == ncclInProgress && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(me.async_error(), ncclSuccess) << ncclGetLastError(me.comm);
  check_all_reduce<float>(me, ncclFloat32, ncclSum, 777, false, input);
  rank1.join();
  EXPECT_EQ(ncclCommDestroy(me.comm), ncclSuccess);
  cudaStreamDestroy(me.stream);
}

TEST(GpuEmulatorNccl, TwoRanksOnOneDeviceAreRefusedAsNcclDoes) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
      ncclComm_t comm = nullptr;
      expect_duplicate_refused(ncclCommInitRank(&comm, 2, id, r));
      EXPECT_EQ(comm, nullptr);
    });
  }
  for (std::thread& t : ranks) t.join();
}

TEST(GpuEmulatorNccl, MismatchedSizesAreAnAsyncInvalidUsageNamingBoth) {
  REQUIRE_DEVICES(2);
  run_ranks(2, [](Rank& me) {
    DeviceBuffer<float> x(100);
    if (me.rank == 0) {
      ASSERT_EQ(ncclSend(x.data, 100, ncclFloat32, 1, me.comm, me.stream), ncclSuccess);
    } else {
      ASSERT_EQ(ncclRecv(x.data, 50, ncclFloat32, 0, me.comm, me.stream), ncclSuccess);
    }
    ASSERT_TRUE(finishes_within(me.stream, 30s));  // the stream goes on: the error is the communicator's
    if (me.rank == 0) return;
    EXPECT_EQ(me.async_error(), ncclInvalidUsage);
    const std::string text = ncclGetLastError(me.comm);
    EXPECT_NE(text.find("of 200 bytes from rank 0, but rank 0 sent message #0 of 400 bytes"),
              std::string::npos)
        << text;
    // Later operations fail at once with the same error.
    EXPECT_EQ(ncclAllReduce(x.data, x.data, 1, ncclFloat32, ncclSum, me.comm, me.stream), ncclInvalidUsage);
  });
}

TEST(GpuEmulatorNccl, AbortEndsAStuckReceivePromptly) {
  REQUIRE_DEVICES(2);
  std::atomic<bool> aborted{false};
  run_ranks(2, [&](Rank& me) {
    if (me.rank == 1) {  // never sends; closes only after rank 0 has aborted
      while (!aborted) std::this_thread::sleep_for(1ms);
      return;
    }
    DeviceBuffer<float> x(10);
    ASSERT_EQ(ncclRecv(x.data, 10, ncclFloat32, 1, me.comm, me.stream), ncclSuccess);
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(cudaStreamQuery(me.stream), cudaErrorNotReady);
    const auto start = Clock::now();
    EXPECT_EQ(ncclCommAbort(me.comm), ncclSuccess);
    me.comm = nullptr;
    EXPECT_TRUE(finishes_within(me.stream, 5s));
    EXPECT_LT(Clock::now() - start, 1s);
    aborted = true;
  });
}

TEST(GpuEmulatorNccl, ArgumentsAreCheckedAsNcclChecksThem) {
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  int version = 0;
  EXPECT_EQ(ncclGetVersion(&version), ncclSuccess);
  EXPECT_EQ(version, NCCL_VERSION_CODE);
  EXPECT_EQ(NCCL_VERSION_CODE, 22809);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclComm_t comm = nullptr;
  EXPECT_EQ(ncclCommInitRank(&comm, 1, id, 1), ncclInvalidArgument);
  ncclUniqueId bad{};
  EXPECT_EQ(ncclCommInitRank(&comm, 1, bad, 0), ncclInvalidArgument);
  ASSERT_EQ(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
  int value = -1;
  EXPECT_EQ(ncclCommCount(comm, &value), ncclSuccess);
  EXPECT_EQ(value, 1);
  EXPECT_EQ(ncclCommUserRank(comm, &value), ncclSuccess);
  EXPECT_EQ(value, 0);
  EXPECT_EQ(ncclCommCuDevice(comm, &value), ncclSuccess);
  EXPECT_EQ(value, 0);
  DeviceBuffer<float> x(8), y(8);
  auto refused = [&](ncclResult_t r, ncclResult_t expected, const char* says) {
    EXPECT_EQ(r, expected);
    EXPECT_NE(std::string(ncclGetLastError(comm)).find(says), std::string::npos) << ncclGetLastError(comm);
  };
  refused(ncclSend(x.data, 8, ncclFloat32, 1, comm, nullptr), ncclInvalidArgument,
          "ncclSend: peer 1 is not a rank");
  refused(ncclAllReduce(x.data, y.data, 8, static_cast<ncclDataType_t>(42), ncclSum, comm, nullptr),
          ncclInvalidArgument, "unknown datatype 42");
  refused(ncclAllReduce(x.data, y.data, 8, ncclFloat32, static_cast<ncclRedOp_t>(9), comm, nullptr),
          ncclInvalidArgument, "unknown reduction 9");
  refused(ncclBroadcast(x.data, y.data, 8, ncclFloat32, -1, comm, nullptr), ncclInvalidArgument, "root -1");
  refused(ncclAllGather(x.data, y.data, 8, ncclFloat32, nullptr, nullptr), ncclInvalidArgument,
          "comm is NULL");
  refused(ncclGroupEnd(), ncclInvalidUsage, "without ncclGroupStart");
  // A refused call makes its group issue nothing.
  y.upload(std::vector<float>(8, 0.0f));
  x.upload(std::vector<float>(8, 3.0f));
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  EXPECT_EQ(ncclSend(x.data, 8, ncclFloat32, 0, comm, nullptr), ncclSuccess);
  EXPECT_EQ(ncclRecv(y.data, 8, ncclFloat32, 0, comm, nullptr), ncclSuccess);
  EXPECT_EQ(ncclSend(x.data, 8, ncclFloat32, 5, comm, nullptr), ncclInvalidArgument);
  refused(ncclGroupEnd(), ncclInvalidArgument, "peer 5");
  EXPECT_EQ(y.download(), std::vector<float>(8, 0.0f));
  // A one-rank communicator: self send and receive in a group, and an all-reduce, are copies.
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);  // nested: issued at the outer end
  EXPECT_EQ(ncclSend(x.data, 8, ncclFloat32, 0, comm, nullptr), ncclSuccess);
  EXPECT_EQ(ncclRecv(y.data, 8, ncclFloat32, 0, comm, nullptr), ncclSuccess);
  EXPECT_EQ(ncclGroupEnd(), ncclSuccess);
  EXPECT_EQ(ncclGroupEnd(), ncclSuccess);
  EXPECT_EQ(y.download(), std::vector<float>(8, 3.0f));
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
}

// ---- Across processes ---------------------------------------------------------------------------
TEST(GpuEmulatorNccl, RanksInSeparateProcessesExchangeAndReduce) {
  REQUIRE_DEVICES(1);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  const pid_t one = spawn_rank("collectives", id, 1, 3, 3);
  const pid_t two = spawn_rank("collectives", id, 2, 3, 3);
  as_rank(0, 3, id, 0, [](Rank& me) {
    all_to_all_v(me);
    check_all_reduce<float>(me, ncclFloat32, ncclSum, 1001, false, input);
    check_other_collectives(me, 333, false);
  });
  EXPECT_EQ(exit_status(one, 120s), 0);
  EXPECT_EQ(exit_status(two, 120s), 0);
}

TEST(GpuEmulatorNccl, TwoProcessesOnOneDeviceAreRefused) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  const pid_t child = spawn_rank("duplicate", id, 1, 2, 1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ncclComm_t comm = nullptr;
  expect_duplicate_refused(ncclCommInitRank(&comm, 2, id, 0));
  EXPECT_EQ(exit_status(child, 120s), 0);
}

TEST(GpuEmulatorNccl, APeerProcessThatExitsIsARemoteErrorNotAHang) {
  REQUIRE_DEVICES(1);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  const pid_t child = spawn_rank("exit", id, 1, 2, 2);
  as_rank(0, 2, id, 0, [](Rank& me) {
    DeviceBuffer<float> x(1000);
    ASSERT_EQ(ncclRecv(x.data, 1000, ncclFloat32, 1, me.comm, me.stream), ncclSuccess);
    const auto start = Clock::now();
    ASSERT_TRUE(finishes_within(me.stream, 30s));
    EXPECT_LT(Clock::now() - start, 10s);
    EXPECT_EQ(me.async_error(), ncclRemoteError);
    EXPECT_NE(std::string(ncclGetLastError(me.comm)).find("rank 1 closed its connection"), std::string::npos)
        << ncclGetLastError(me.comm);
    EXPECT_EQ(ncclRecv(x.data, 1000, ncclFloat32, 1, me.comm, me.stream), ncclRemoteError);
  });
  EXPECT_EQ(exit_status(child, 60s), 0);
}

TEST(GpuEmulatorNccl, TheInjectionHookFailsTheChosenUnitOfItsProcess) {
  REQUIRE_DEVICES(1);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  const pid_t child = spawn_rank("inject", id, 1, 2, 2, "2");
  as_rank(0, 2, id, 0, [](Rank& me) {
    check_all_reduce<float>(me, ncclFloat32, ncclSum, 1000, false, input);
    DeviceBuffer<float> x(1000);
    ASSERT_EQ(ncclAllReduce(x.data, x.data, 1000, ncclFloat32, ncclSum, me.comm, me.stream), ncclSuccess);
    ASSERT_TRUE(finishes_within(me.stream, 30s));
    EXPECT_EQ(me.async_error(), ncclRemoteError);  // the failed rank moved nothing, then left
  });
  EXPECT_EQ(exit_status(child, 60s), 0);
}

}  // namespace

#else

TEST(GpuEmulatorNccl, NeedsTheEmulatedBuild) {
  GTEST_SKIP() << "configure with -DAMPIPE_CUDA=EMULATE to run the emulated NCCL's tests";
}

#endif
