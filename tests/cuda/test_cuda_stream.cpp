// GPU streams (core/stream.h with Device::CUDA): tasks enqueue on the stream's own CUDA stream and
// return; events order device work across GPU streams, and a CPU stream waiting on a GPU event sees
// the device's results; synchronize waits for the device. Skipped without a GPU, except the error.
#include <gtest/gtest.h>

#include <atomic>

#include "core/stream.h"
#include "cuda/gpu_test.h"
#include "kernels/elementwise.h"

namespace ampipe {
namespace {

TEST(CudaStream, WithoutAGpuAGpuStreamIsRefusedWithTheReason) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  try {
    Stream s("gpu", nullptr, 0, Device::CUDA);
    FAIL() << "a GPU stream was made without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cuda_unavailable_reason()), std::string::npos) << e.what();
  }
}

TEST(CudaStream, EventsOrderDeviceWorkAcrossStreams) {
  AMPIPE_REQUIRE_GPU();
  // Big enough that the producer's kernels are still running when the consumer's are enqueued (the
  // emulator's kernels are that slow at 2^16 elements already).
  const int64_t n = testing::gpu_test_size(1 << 24, 1 << 16);
  Tensor x = Tensor::zeros({n}, DType::F32, Device::CUDA);
  Tensor ones = Tensor::zeros({n}, DType::F32, Device::CUDA);
  ones.fill(1.0f);
  cuda_synchronize();
  for (int round = 0; round < 3; ++round) {
    Stream producer("compute", nullptr, 0, Device::CUDA), consumer("comm", nullptr, 0, Device::CUDA);
    Event produced;
    x.zero();
    cuda_synchronize();
    producer.submit("add x50", [&] {
      for (int i = 0; i < 50; ++i) kernels::add_inplace(x, ones);
    });
    producer.record(produced);
    consumer.wait(produced);
    consumer.submit("scale", [&] { kernels::scale_inplace(x, 2.0f); });
    synchronize_all({&producer, &consumer});
    const std::vector<float> v = x.to_vector();
    EXPECT_EQ(v.front(), 100.0f) << "round " << round << ": the consumer ran before the producer finished";
    EXPECT_EQ(v.back(), 100.0f);
  }
}

TEST(CudaStream, ACpuStreamWaitingOnAGpuEventSeesTheResults) {
  AMPIPE_REQUIRE_GPU();
  const int64_t n = testing::gpu_test_size(1 << 22, 1 << 16);
  Tensor x = Tensor::zeros({n}, DType::F32, Device::CUDA);
  Tensor ones = Tensor::zeros({n}, DType::F32, Device::CUDA);
  ones.fill(1.0f);
  cuda_synchronize();
  Stream gpu("compute", nullptr, 0, Device::CUDA), host("comm");
  Event done;
  float seen = -1;
  gpu.submit("add x20", [&] {
    for (int i = 0; i < 20; ++i) kernels::add_inplace(x, ones);
  });
  gpu.record(done);
  host.wait(done);
  host.submit("read", [&] {
    // The host copy goes through the legacy stream: the data must already be final.
    seen = x.rows(n - 1, n).to_vector()[0];
  });
  synchronize_all({&gpu, &host});
  EXPECT_EQ(seen, 20.0f);
}

TEST(CudaStream, ADeviceErrorFailsTheStreamNamingIt) {
  AMPIPE_REQUIRE_GPU();
  Stream gpu("compute", nullptr, 0, Device::CUDA);
  gpu.submit("bad shapes", [] {
    Tensor a = Tensor::zeros({4, 4}, DType::F32, Device::CUDA), b = Tensor::zeros({5, 4}, DType::F32, Device::CUDA);
    kernels::add_inplace(a, b);
  });
  try {
    gpu.synchronize();
    FAIL() << "the failed task was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stream 'compute' task 'bad shapes' failed"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ampipe
