// Tensors on the GPU (core/tensor.h, core/device.h): copies both ways and between devices with
// column-slice views, zero and fill, the caching allocator in a steady state, kernels refusing a mix
// of devices. Where no GPU can be used, only the test of that refusal's message runs.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "cuda/gpu_test.h"
#include "kernels/elementwise.h"

namespace ampipe {
namespace {

std::vector<float> iota_values(size_t n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 1.0f);
  return v;
}

TEST(CudaTensor, WithoutAGpuAllocationFailsNamingTheReason) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: the error path is not reachable";
  try {
    Tensor::empty({4, 4}, DType::F32, Device::CUDA);
    FAIL() << "a tensor on the GPU was created without one";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(cuda_unavailable_reason()), std::string::npos) << msg;
  }
  EXPECT_FALSE(cuda_unavailable_reason().empty());
}

TEST(CudaTensor, RoundTripsAndCopiesColumnSlicesBothWays) {
  AMPIPE_REQUIRE_GPU();
  const Tensor host = Tensor::from({37, 29}, iota_values(37 * 29));
  const Tensor dev = host.to(Device::CUDA);
  EXPECT_EQ(dev.device(), Device::CUDA);
  EXPECT_EQ(dev.to_vector(), host.to_vector());
  // A column slice of a device tensor to the host, and a host slice into a device slice.
  const Tensor slice = dev.cols(3, 20);
  EXPECT_EQ(slice.to_vector(), host.cols(3, 20).to_vector());
  Tensor dst = Tensor::zeros({37, 29}, DType::F32, Device::CUDA);
  dst.cols(5, 22).copy_from(host.cols(3, 20));
  const std::vector<float> got = dst.to_vector();
  for (int64_t r = 0; r < 37; ++r)
    for (int64_t c = 0; c < 29; ++c) {
      const float want = (c >= 5 && c < 22) ? host.data<float>()[r * 29 + c - 2] : 0.0f;
      ASSERT_EQ(got[r * 29 + c], want) << r << "," << c;
    }
  // Device to device, slice to contiguous.
  Tensor packed = Tensor::empty({37, 17}, DType::F32, Device::CUDA);
  packed.copy_from(dev.cols(3, 20));
  EXPECT_EQ(packed.to_vector(), host.cols(3, 20).to_vector());
  EXPECT_EQ(dev.clone().to_vector(), host.to_vector());
  // int32 too.
  const Tensor ints = Tensor::from_ints({5}, {1, -2, 3, -4, 5});
  const Tensor back = ints.to(Device::CUDA).to(Device::CPU);
  EXPECT_EQ(std::vector<int32_t>(back.data<int32_t>(), back.data<int32_t>() + 5),
            std::vector<int32_t>({1, -2, 3, -4, 5}));
}

TEST(CudaTensor, ZeroAndFillTouchOnlyTheView) {
  AMPIPE_REQUIRE_GPU();
  Tensor dev = Tensor::from({8, 10}, iota_values(80)).to(Device::CUDA);
  dev.cols(2, 5).zero();
  dev.cols(6, 7).fill(-1.5f);
  const std::vector<float> got = dev.to_vector();
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 10; ++c) {
      const float want = (c >= 2 && c < 5) ? 0.0f : c == 6 ? -1.5f : float(r * 10 + c + 1);
      ASSERT_EQ(got[r * 10 + c], want) << r << "," << c;
    }
}

TEST(CudaTensor, TheSteadyStateAllocatesNothingFromTheDevice) {
  AMPIPE_REQUIRE_GPU();
  for (int i = 0; i < 2; ++i) {  // warm the cache
    Tensor a = Tensor::empty({1024, 1024}, DType::F32, Device::CUDA);
    Tensor b = Tensor::empty({333, 77}, DType::F32, Device::CUDA);
    a.zero();
    cuda_synchronize();
  }
  const DeviceCacheStats before = device_cache_stats();
  for (int i = 0; i < 5; ++i) {
    Tensor a = Tensor::empty({1024, 1024}, DType::F32, Device::CUDA);
    Tensor b = Tensor::empty({333, 77}, DType::F32, Device::CUDA);
    a.zero();
    cuda_synchronize();  // the fences of the blocks released last round have passed
  }
  const DeviceCacheStats after = device_cache_stats();
  EXPECT_EQ(after.device_allocations, before.device_allocations);
  EXPECT_EQ(after.hits - before.hits, 10);
}

TEST(CudaTensor, KernelsRefuseTensorsOnDifferentDevices) {
  AMPIPE_REQUIRE_GPU();
  Tensor y = Tensor::zeros({4, 4}, DType::F32, Device::CUDA);
  const Tensor x = Tensor::zeros({4, 4});
  try {
    kernels::add_inplace(y, x);
    FAIL() << "a mix of devices was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different devices"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ampipe
