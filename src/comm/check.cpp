#include "comm/check.h"

#include <sstream>

namespace ampipe::comm_detail {

std::string where(const char* call, int rank, int size, int world_rank, int world_size) {
  std::ostringstream s;
  s << call << " on rank " << rank << " of " << size;
  if (size != world_size || rank != world_rank) s << " (world rank " << world_rank << ")";
  return s.str();
}

std::string check_buffer(const Tensor& t, const char* name) {
  std::ostringstream s;
  if (!t.defined()) {
    s << name << " is an undefined tensor (pass an empty one, e.g. shape [0], for no elements)";
  } else if (t.dtype() != DType::F32 && t.dtype() != DType::I32 && t.dtype() != DType::BF16) {
    s << name << " has dtype " << dtype_name(t.dtype()) << "; collectives take float32, bfloat16 or int32";
  } else if (!t.is_contiguous()) {
    s << name << " (shape " << shape_string(t.shape()) << ") is not contiguous; pass a clone()";
  }
  return s.str();
}

std::string check_counts(const std::vector<int64_t>& counts, const char* name, int size, int64_t capacity,
                         const char* buffer_name) {
  std::ostringstream s;
  if (static_cast<int64_t>(counts.size()) != size) {
    s << name << " has " << counts.size() << " entries; it needs one per rank of the group (" << size << ")";
    return s.str();
  }
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0) {
      s << name << "[" << i << "] = " << counts[i] << " is negative";
      return s.str();
    }
    if (counts[i] > capacity - total) {  // no overflow: total <= capacity here
      s << name << " sum to more than " << buffer_name << " holds: " << name << "[0.." << i
        << "] already need "
        << "more than its " << capacity << " elements (" << name << "[" << i << "] = " << counts[i] << ")";
      return s.str();
    }
    total += counts[i];
  }
  return s.str();
}

std::string check_reducible(const Tensor& t, const char* name) {
  std::string error = check_buffer(t, name);
  if (error.empty() && t.dtype() == DType::BF16) {
    error = std::string(name) + " is bfloat16: reductions take float32 or int32 (bfloat16 is moved, never summed: "
            "reduce gradients in float32, as --accumulate-allreduce-grads-in-fp32)";
  }
  return error;
}

std::string check_same_dtype(const Tensor& a, const char* a_name, const Tensor& b, const char* b_name) {
  if (a.dtype() == b.dtype()) return {};
  std::ostringstream s;
  s << a_name << " is " << dtype_name(a.dtype()) << " but " << b_name << " is " << dtype_name(b.dtype())
    << "; they must match";
  return s.str();
}

std::string check_root(int root, int size) {
  if (root >= 0 && root < size) return {};
  std::ostringstream s;
  s << "root " << root << " is not a rank of this group of " << size;
  return s.str();
}

std::string check_reduce_scatter(const Tensor& send, const Tensor& recv, int size) {
  std::string error = check_reducible(send, "send");
  if (error.empty()) error = check_reducible(recv, "recv");
  if (error.empty()) error = check_same_dtype(send, "send", recv, "recv");
  if (error.empty() && send.numel() != recv.numel() * size) {
    error = "send has " + std::to_string(send.numel()) + " elements; it needs group size " +
            std::to_string(size) + " x recv's " + std::to_string(recv.numel());
  }
  return error;
}

}  // namespace ampipe::comm_detail
