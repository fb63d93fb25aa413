#include "model/sequence_parallel.h"

#include <cstring>

#include "core/error.h"

namespace ampipe {
namespace {

// The host bytes of a float32 or int32 CPU tensor (the dtypes this layout moves).
char* bytes_of(const Tensor& t) {
  AMPIPE_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::I32)
      << "sequence parallelism moves float32 or int32 rows, got " << dtype_name(t.dtype());
  return t.dtype() == DType::F32 ? reinterpret_cast<char*>(t.data<float>())
                                 : reinterpret_cast<char*>(t.data<int32_t>());
}

void check_rows(const Tensor& t, const char* call, const char* name) {
  AMPIPE_CHECK(t.defined() && t.dtype() == DType::F32 && t.device() == Device::CPU && t.ndim() == 2 &&
               t.is_contiguous())
      << call << ": " << name << " must be a contiguous float32 CPU matrix, got "
      << (t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_string(t.shape())
                      : "an undefined tensor");
}

// out row q*T + t = in row t*R + q (interleave), or the reverse (de-interleave), for R = rows / T.
void permute_rows(const Tensor& in, Tensor out, int64_t ranks, bool interleave) {
  const int64_t rows = in.dim(0), R = rows / ranks;
  const size_t bytes = static_cast<size_t>(in.numel() / rows) * dtype_size(in.dtype());
  const char* src = bytes_of(in);
  char* dst = bytes_of(out);
  for (int64_t t = 0; t < ranks; ++t)
    for (int64_t q = 0; q < R; ++q) {
      const int64_t strided = q * ranks + t, blocked = t * R + q;
      std::memcpy(dst + (interleave ? strided : blocked) * bytes,
                  src + (interleave ? blocked : strided) * bytes, bytes);
    }
}

}  // namespace

Tensor sequence_gather(Communicator& group, const Tensor& local) {
  const char* call = "sequence_gather";
  const Tensor send = local.is_contiguous() ? local : local.clone();
  check_rows(send, call, "the local rows");
  const int64_t T = group.size();
  Tensor blocked = Tensor::empty({T * send.dim(0), send.dim(1)});
  group.all_gather(send, blocked);
  if (T == 1) return blocked;
  Tensor whole = Tensor::empty(blocked.shape());
  permute_rows(blocked, whole, T, /*interleave=*/true);
  return whole;
}

void sequence_reduce_scatter(Communicator& group, const Tensor& whole, Tensor local) {
  const char* call = "sequence_reduce_scatter";
  check_rows(whole, call, "the whole rows");
  check_rows(local, call, "the local rows");
  const int64_t T = group.size();
  AMPIPE_CHECK(whole.dim(0) == T * local.dim(0) && whole.dim(1) == local.dim(1))
      << call << ": whole rows " << shape_string(whole.shape()) << " are not the tensor-parallel size " << T
      << " times the local rows " << shape_string(local.shape());
  if (T == 1) {
    local.copy_from(whole);
    return;
  }
  Tensor blocked = Tensor::empty(whole.shape());
  permute_rows(whole, blocked, T, /*interleave=*/false);
  group.reduce_scatter_sum(blocked, local);
}

Tensor sequence_slice(const Tensor& whole, int rank, int ranks) {
  AMPIPE_CHECK(ranks >= 1 && rank >= 0 && rank < ranks && whole.defined() && whole.ndim() >= 1 &&
               whole.dim(0) % ranks == 0 && whole.device() == Device::CPU)
      << "sequence_slice: rank " << rank << " of " << ranks << " of a CPU tensor whose rows the ranks divide, got "
      << (whole.defined() ? shape_string(whole.shape()) : std::string("an undefined tensor"));
  const Tensor in = whole.is_contiguous() ? whole : whole.clone();
  Tensor blocked = Tensor::empty(in.shape(), in.dtype());
  permute_rows(in, blocked, ranks, /*interleave=*/false);  // rank-major: this rank's rows are one block
  const int64_t R = in.dim(0) / ranks;
  Shape shape = in.shape();
  shape[0] = R;
  return blocked.reshape({in.dim(0), in.numel() / in.dim(0)}).rows(rank * R, (rank + 1) * R).clone().reshape(shape);
}

}  // namespace ampipe
