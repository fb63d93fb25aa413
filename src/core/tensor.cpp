#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <numeric>

#include "core/bf16.h"
#include "core/host_cache.h"

namespace ampipe {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "float32";
    case DType::I32:
      return "int32";
    case DType::BF16:
      return "bfloat16";
  }
  return "?";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return sizeof(float);
    case DType::I32:
      return sizeof(int32_t);
    case DType::BF16:
      return sizeof(bf16);
  }
  return 0;
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

static Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  int64_t n = 1, extent = 1;  // extent: the product of the non-zero dimensions (the largest stride bound)
  for (int64_t d : shape) {
    AMPIPE_CHECK(d >= 0) << "negative dimension in shape " << shape_string(shape);
    const bool overflow =
        __builtin_mul_overflow(n, d, &n) || (d != 0 && __builtin_mul_overflow(extent, d, &extent));
    AMPIPE_CHECK(!overflow) << "shape " << shape_string(shape) << " has more elements than an int64 counts";
  }
  const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
  size_t capacity = 0;
  Tensor t;
  if (device == Device::CUDA) {
    void* p = device_allocate(bytes, &capacity);  // the caching device allocator (core/device.h)
    t.storage_ = std::shared_ptr<std::byte>(static_cast<std::byte*>(p),
                                            [capacity](std::byte* q) { device_release(q, capacity); });
  } else {
    void* p = host_allocate(bytes, &capacity);  // large blocks come from the cache (core/host_cache.h)
    AMPIPE_CHECK(p != nullptr) << "out of memory allocating " << bytes << " bytes for tensor "
                               << shape_string(shape);
    t.storage_ = std::shared_ptr<std::byte>(static_cast<std::byte*>(p),
                                            [capacity](std::byte* q) { host_release(q, capacity); });
  }
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero();
  return t;
}

Tensor Tensor::from(const Shape& shape, const std::vector<float>& values) {
  Tensor t = empty(shape);
  AMPIPE_CHECK(static_cast<int64_t>(values.size()) == t.numel())
      << "Tensor::from: " << values.size() << " values for shape " << shape_string(shape);
  // No copy of no values: an empty vector's data() may be null, which memcpy must not be given.
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_ints(const Shape& shape, const std::vector<int32_t>& values) {
  Tensor t = empty(shape, DType::I32);
  AMPIPE_CHECK(static_cast<int64_t>(values.size()) == t.numel())
      << "Tensor::from_ints: " << values.size() << " values for shape " << shape_string(shape);
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

int64_t Tensor::dim(int i) const {
  AMPIPE_CHECK(i >= 0 && i < ndim()) << "dimension " << i << " out of range for shape "
                                     << shape_string(shape_);
  return shape_[i];
}

int64_t shape_numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

int64_t Tensor::numel() const { return shape_numel(shape_); }

int64_t Tensor::stride(int i) const {
  AMPIPE_CHECK(i >= 0 && i < ndim()) << "dimension " << i << " out of range for shape "
                                     << shape_string(shape_);
  return strides_[i];
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

void* Tensor::raw() const {
  AMPIPE_CHECK(defined()) << "use of an undefined tensor";
  return storage_.get() + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

template <>
float* Tensor::data<float>() const {
  AMPIPE_CHECK(dtype_ == DType::F32) << "tensor is " << dtype_name(dtype_) << ", expected float32";
  AMPIPE_CHECK(device_ == Device::CPU) << "host access to a device tensor";
  return static_cast<float*>(raw());
}

template <>
int32_t* Tensor::data<int32_t>() const {
  AMPIPE_CHECK(dtype_ == DType::I32) << "tensor is " << dtype_name(dtype_) << ", expected int32";
  AMPIPE_CHECK(device_ == Device::CPU) << "host access to a device tensor";
  return static_cast<int32_t*>(raw());
}

template <>
bf16* Tensor::data<bf16>() const {
  AMPIPE_CHECK(dtype_ == DType::BF16) << "tensor is " << dtype_name(dtype_) << ", expected bfloat16";
  AMPIPE_CHECK(device_ == Device::CPU) << "host access to a device tensor";
  return static_cast<bf16*>(raw());
}

template <>
bf16* Tensor::device_data<bf16>() const {
  AMPIPE_CHECK(dtype_ == DType::BF16) << "tensor is " << dtype_name(dtype_) << ", expected bfloat16";
  AMPIPE_CHECK(device_ == Device::CUDA) << "a CUDA kernel was given a host tensor";
  return static_cast<bf16*>(raw());
}

std::byte* Tensor::bytes() const {
  AMPIPE_CHECK(device_ == Device::CPU) << "host access to a device tensor";
  return static_cast<std::byte*>(raw());
}

std::byte* Tensor::device_bytes() const {
  AMPIPE_CHECK(device_ == Device::CUDA) << "device access to a host tensor";
  return static_cast<std::byte*>(raw());
}

template <>
float* Tensor::device_data<float>() const {
  AMPIPE_CHECK(dtype_ == DType::F32) << "tensor is " << dtype_name(dtype_) << ", expected float32";
  AMPIPE_CHECK(device_ == Device::CUDA) << "a CUDA kernel was given a host tensor";
  return static_cast<float*>(raw());
}

template <>
int32_t* Tensor::device_data<int32_t>() const {
  AMPIPE_CHECK(dtype_ == DType::I32) << "tensor is " << dtype_name(dtype_) << ", expected int32";
  AMPIPE_CHECK(device_ == Device::CUDA) << "a CUDA kernel was given a host tensor";
  return static_cast<int32_t*>(raw());
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  AMPIPE_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0])
      << "rows [" << begin << ", " << end << ") out of range for shape " << shape_string(shape_);
  Tensor t = *this;
  t.offset_ += begin * strides_[0];
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::cols(int64_t begin, int64_t end) const {
  AMPIPE_CHECK(ndim() == 2 && 0 <= begin && begin <= end && end <= shape_[1])
      << "cols [" << begin << ", " << end << ") out of range for shape " << shape_string(shape_);
  Tensor t = *this;
  t.offset_ += begin;
  t.shape_[1] = end - begin;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  AMPIPE_CHECK(is_contiguous()) << "reshape of a non-contiguous tensor " << shape_string(shape_);
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  AMPIPE_CHECK(t.numel() == numel()) << "reshape " << shape_string(shape_) << " -> " << shape_string(shape);
  return t;
}

// Calls fn(row_pointer_offset_in_elements) for each contiguous innermost row.
template <class Fn>
static void for_each_row(const Shape& shape, const Shape& strides, Fn fn) {
  if (shape.empty()) {
    fn(int64_t{0});
    return;
  }
  int64_t outer = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) outer *= shape[i];
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t r = 0; r < outer; ++r) {
    int64_t off = 0;
    int64_t rem = r;
    for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) {
      idx[i] = rem % shape[i];
      rem /= shape[i];
      off += idx[i] * strides[i];
    }
    fn(off);
  }
}

// Rows and pitch of a tensor for a device copy: a contiguous tensor is one row; otherwise it is a
// 2-D column slice (only 2-D tensors have a row stride).
struct RowLayout {
  size_t row_bytes, rows, pitch;
};
static RowLayout row_layout(const Tensor& t) {
  const size_t es = dtype_size(t.dtype());
  if (t.is_contiguous()) {
    const size_t bytes = static_cast<size_t>(t.numel()) * es;
    return {bytes, 1, bytes};
  }
  return {static_cast<size_t>(t.dim(1)) * es, static_cast<size_t>(t.dim(0)),
          static_cast<size_t>(t.stride(0)) * es};
}

void Tensor::copy_from(const Tensor& src) {
  AMPIPE_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_)
      << "copy_from: shape/dtype mismatch " << shape_string(src.shape_) << " -> " << shape_string(shape_);
  if (numel() == 0 || (storage_ == src.storage_ && offset_ == src.offset_ && strides_ == src.strides_))
    return;
  if (device_ == Device::CUDA || src.device_ == Device::CUDA) {
    const RowLayout d = row_layout(*this), s = row_layout(src);
    if (d.rows == s.rows) {
      copy_rows(raw(), device_, d.pitch, src.raw(), src.device_, s.pitch, d.row_bytes, d.rows);
    } else {  // one side contiguous, the other a column slice: copy row by row in 2-D form
      const size_t es = dtype_size(dtype_);
      const size_t width = static_cast<size_t>(shape_[1]) * es;
      copy_rows(raw(), device_, d.rows == 1 ? width : d.pitch, src.raw(), src.device_,
                s.rows == 1 ? width : s.pitch, width, static_cast<size_t>(shape_[0]));
    }
    return;
  }
  const size_t es = dtype_size(dtype_);
  const int64_t width = shape_.empty() ? 1 : shape_.back();
  std::vector<int64_t> dst_offsets;
  for_each_row(shape_, strides_, [&](int64_t off) { dst_offsets.push_back(off); });
  size_t i = 0;
  auto* dst = static_cast<std::byte*>(raw());
  const auto* s = static_cast<const std::byte*>(src.raw());
  for_each_row(src.shape_, src.strides_, [&](int64_t off) {
    std::memmove(dst + dst_offsets[i++] * es, s + off * es, static_cast<size_t>(width) * es);
  });
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_from(*this);
  return t;
}

void Tensor::fill(float value) {
  if (device_ == Device::CUDA) {  // rare (initialisation): zero on the device, else through the host
    AMPIPE_CHECK(dtype_ == DType::F32 || dtype_ == DType::BF16)
        << "fill of a " << dtype_name(dtype_) << " tensor";
    if (value == 0.0f) {
      zero();
    } else {
      Tensor host = empty(shape_, dtype_, Device::CPU);
      host.fill(value);
      copy_from(host);
    }
    return;
  }
  const int64_t width = shape_.empty() ? 1 : shape_.back();
  if (dtype_ == DType::BF16) {
    bf16* p = data<bf16>();
    const bf16 v = to_bf16(value);
    for_each_row(shape_, strides_, [&](int64_t off) {
      for (int64_t j = 0; j < width; ++j) p[off + j] = v;
    });
    return;
  }
  float* p = data<float>();
  for_each_row(shape_, strides_, [&](int64_t off) {
    for (int64_t j = 0; j < width; ++j) p[off + j] = value;
  });
}

void Tensor::zero() {
  if (numel() == 0) return;
  if (device_ == Device::CUDA) {
    const RowLayout l = row_layout(*this);
    device_zero_rows(raw(), l.pitch, l.row_bytes, l.rows);
    return;
  }
  const size_t es = dtype_size(dtype_);
  auto* p = static_cast<std::byte*>(raw());
  if (is_contiguous()) {
    std::memset(p, 0, static_cast<size_t>(numel()) * es);
    return;
  }
  const int64_t width = shape_.back();
  for_each_row(shape_, strides_,
               [&](int64_t off) { std::memset(p + off * es, 0, static_cast<size_t>(width) * es); });
}

std::vector<float> Tensor::to_vector() const {
  if (device_ == Device::CUDA) return to(Device::CPU).to_vector();
  Tensor c = is_contiguous() ? *this : clone();
  if (dtype_ == DType::BF16) {
    std::vector<float> values(static_cast<size_t>(numel()));
    to_float(c.data<bf16>(), values.data(), numel());
    return values;
  }
  const float* p = c.data<float>();
  return std::vector<float>(p, p + numel());
}

}  // namespace ampipe
