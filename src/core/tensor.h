// Tensor: a typed, shaped view of a reference-counted buffer on one device.
//
// A Tensor is cheap to copy: copies share storage (like a shared_ptr). Views (`rows`, `cols`,
// `reshape`) share storage too; `clone` makes an independent copy. Shapes are row-major; the last
// dimension is always contiguous (stride 1) and a 2-D tensor may have a row stride larger than its
// width (a column slice, e.g. Q out of a fused QKV buffer). Kernels read `stride(0)`.
//
// Storage is 64-byte aligned host memory for Device::CPU, and GPU memory from the caching device
// allocator (core/device.h) for Device::CUDA, which only a build with the CUDA backend on a machine
// with a GPU can create. `data()` is host access and checks the device, so host code never
// dereferences device memory by accident; `device_data()` is for the CUDA kernels. `copy_from`,
// `clone`, `fill`, `zero`, `to` and `to_vector` work on either device (and across them); on the GPU
// they enqueue on the calling thread's current CUDA stream, and a copy to the host waits for it.
// Thread-safety: a Tensor object is not synchronised; distinct threads may write disjoint elements.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/error.h"

namespace ampipe {

// bf16 (core/bf16.h): bfloat16, 2 bytes; tensors hold it for activations and the wire, and
// kernels accumulate in float32 (docs/MODEL.md, precision).
enum class DType { F32, I32, BF16 };
struct bf16;

const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

using Shape = std::vector<int64_t>;
std::string shape_string(const Shape& shape);
// The number of elements of a tensor of `shape` (1 for a scalar's empty shape).
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised / zero-filled tensors that own fresh storage.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  // A float tensor holding a copy of `values` (numel must match the shape).
  static Tensor from(const Shape& shape, const std::vector<float>& values);
  static Tensor from_ints(const Shape& shape, const std::vector<int32_t>& values);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;
  int64_t numel() const;
  int64_t stride(int i) const;
  bool is_contiguous() const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // Typed element pointer (checks dtype and host residency).
  template <class T>
  T* data() const;
  // Typed pointer into GPU memory (checks dtype and that the tensor is on Device::CUDA).
  template <class T>
  T* device_data() const;
  // The first element's bytes, whatever the dtype, for code that moves elements without reading
  // them (communicators): on the host (checks host residency) or on the GPU (checks CUDA).
  std::byte* bytes() const;
  std::byte* device_bytes() const;

  // This tensor on `device`: itself when it is there already, else a contiguous copy.
  Tensor to(Device device) const;

  // View of rows [begin, end) along the first dimension.
  Tensor rows(int64_t begin, int64_t end) const;
  // View of columns [begin, end) of a 2-D tensor (keeps the row stride).
  Tensor cols(int64_t begin, int64_t end) const;
  // Same elements, new shape; requires a contiguous tensor.
  Tensor reshape(const Shape& shape) const;
  // Independent contiguous copy.
  Tensor clone() const;
  // Copies the elements of `src` (same shape and dtype) into this tensor; nothing to do when `src`
  // is this very view (same storage, offset and strides).
  void copy_from(const Tensor& src);
  void fill(float value);  // float32, or bfloat16 (value rounded to nearest even)
  void zero();

  // Flattened contiguous copy of the values, for tests and I/O (bfloat16 widened exactly).
  std::vector<float> to_vector() const;

 private:
  std::shared_ptr<std::byte> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;

  void* raw() const;
};

template <>
float* Tensor::data<float>() const;
template <>
int32_t* Tensor::data<int32_t>() const;
template <>
float* Tensor::device_data<float>() const;
template <>
int32_t* Tensor::device_data<int32_t>() const;
template <>
bf16* Tensor::data<bf16>() const;
template <>
bf16* Tensor::device_data<bf16>() const;

}  // namespace ampipe
