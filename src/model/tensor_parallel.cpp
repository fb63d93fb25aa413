// Tensor-parallel linear layers (model/tensor_parallel.h): model/linear.h's local math between the
// group's all_gather, all_reduce_sum and reduce_scatter_sum.
#include "model/tensor_parallel.h"

#include <functional>
#include <string>

#include "core/error.h"
#include "kernels/elementwise.h"
#include "model/linear.h"

namespace ampipe {
namespace {

std::string describe(const Tensor& t) {
  return t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_string(t.shape())
                     : "an undefined tensor";
}

// A float32 CPU matrix [rows, cols] (rows < 0: any); contiguous when the collectives write it.
void check_matrix(const char* call, const char* name, const Tensor& t, int64_t rows, int64_t cols,
                  bool contiguous = false) {
  AMPIPE_CHECK(t.defined() && t.dtype() == DType::F32 && t.device() == Device::CPU && t.ndim() == 2 &&
               (rows < 0 || t.dim(0) == rows) && t.dim(1) == cols && (!contiguous || t.is_contiguous()))
      << call << ": " << name << " must be a " << (contiguous ? "contiguous " : "") << "float32 CPU tensor ["
      << (rows < 0 ? std::string("N") : std::to_string(rows)) << ", " << cols << "], got " << describe(t);
}

// bias (or dbias) [size] float32 CPU, or undefined.
void check_bias(const char* call, const char* name, const Tensor& b, int64_t size) {
  if (!b.defined()) return;
  AMPIPE_CHECK(b.dtype() == DType::F32 && b.device() == Device::CPU && b.ndim() == 1 && b.dim(0) == size)
      << call << ": " << name << " must be a float32 CPU tensor [" << size << "] or undefined, got "
      << describe(b);
}

void check_weight(const char* call, const Tensor& w) {
  AMPIPE_CHECK(w.defined() && w.dtype() == DType::F32 && w.device() == Device::CPU && w.ndim() == 2 &&
               w.dim(0) >= 1 && w.dim(1) >= 1)
      << call << ": weight_shard must be a float32 CPU tensor [out >= 1, in >= 1], got " << describe(w);
}

void check_divisible(const char* call, const char* what, int64_t n, int ranks) {
  AMPIPE_CHECK(n % ranks == 0) << call << ": " << what << " (" << n
                               << ") must be divisible by the tensor-parallel size " << ranks
                               << " (remainder " << n % ranks << ")";
}

// Rows [rank S, (rank+1) S) of every rank, gathered: [T S, cols], rank-major.
Tensor gather_rows(Communicator& group, const Tensor& local) {
  const Tensor send = local.is_contiguous() ? local : local.clone();
  Tensor full = Tensor::empty({local.dim(0) * group.size(), local.dim(1)});
  group.all_gather(send, full);
  return full;
}

// The sum over the group of each rank's partial [rows, cols], which `partial` writes: into `out`
// whole (all_reduce_sum), or under sequence parallelism into this rank's rows of it
// (reduce_scatter_sum; out is [rows / T, cols]).
void sum_partials(Communicator& group, bool sequence_parallel, int64_t rows, int64_t cols,
                  const std::function<void(Tensor)>& partial, Tensor out) {
  if (!sequence_parallel) {
    partial(out);
    group.all_reduce_sum(out);
    return;
  }
  Tensor whole = Tensor::empty({rows, cols});
  partial(whole);
  group.reduce_scatter_sum(whole, out);
}

// The slice [begin, begin + size) of t along dim, a view: rows or columns of a matrix; of a
// contiguous 3-D tensor (the expert tensors [E, out, in]), columns of it seen as [outer, rest].
Tensor slice(const Tensor& t, int dim, int64_t begin, int64_t size) {
  if (t.ndim() <= 2) return dim == 0 ? t.rows(begin, begin + size) : t.cols(begin, begin + size);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= t.dim(i);
  for (int i = dim + 1; i < t.ndim(); ++i) inner *= t.dim(i);
  return t.reshape({outer, t.numel() / outer}).cols(begin * inner, (begin + size) * inner);
}

// The shard's shape: full_shape with dim's extent the pieces' total; refuses pieces outside full.
Shape shard_shape(const TensorParallelShard& shard) {
  const Shape& full = shard.full_shape;
  AMPIPE_CHECK(shard.dim >= 0 && shard.dim < static_cast<int>(full.size()) && full.size() <= 3)
      << "tensor-parallel shard of " << shard.name << ": dim " << shard.dim << " of a tensor "
      << shape_string(full);
  int64_t total = 0;
  for (const TensorParallelShard::Piece& p : shard.pieces) {
    AMPIPE_CHECK(p.local_begin == total && p.size >= 0 && p.full_begin >= 0 &&
                 p.full_begin + p.size <= full[shard.dim])
        << "tensor-parallel shard of " << shard.name << ": piece [" << p.full_begin << ", "
        << p.full_begin + p.size << ") at " << p.local_begin << " does not fit " << shape_string(full);
    total += p.size;
  }
  Shape shape = full;
  shape[shard.dim] = total;
  return shape;
}

}  // namespace

Tensor take_tensor_parallel_shard(const Tensor& full, const TensorParallelShard& shard) {
  const Shape shape = shard_shape(shard);
  AMPIPE_CHECK(full.shape() == shard.full_shape)
      << "take_tensor_parallel_shard of " << shard.name << ": the full tensor is "
      << shape_string(full.shape()) << ", not " << shape_string(shard.full_shape);
  Tensor out = Tensor::empty(shape, full.dtype(), full.device());
  for (const TensorParallelShard::Piece& p : shard.pieces)
    slice(out, shard.dim, p.local_begin, p.size).copy_from(slice(full, shard.dim, p.full_begin, p.size));
  return out;
}

void place_tensor_parallel_shard(const Tensor& shard_value, const TensorParallelShard& shard, Tensor full) {
  const Shape shape = shard_shape(shard);
  AMPIPE_CHECK(full.shape() == shard.full_shape && shard_value.shape() == shape)
      << "place_tensor_parallel_shard of " << shard.name << ": a shard " << shape_string(shard_value.shape())
      << " into " << shape_string(full.shape()) << ", expected " << shape_string(shape) << " into "
      << shape_string(shard.full_shape);
  for (const TensorParallelShard::Piece& p : shard.pieces)
    slice(full, shard.dim, p.full_begin, p.size)
        .copy_from(slice(shard_value, shard.dim, p.local_begin, p.size));
}

Tensor tensor_parallel_weight_shard(const Tensor& weight, TensorParallelKind kind, int rank, int ranks) {
  constexpr const char* kCall = "tensor_parallel_weight_shard";
  AMPIPE_CHECK(ranks >= 1 && rank >= 0 && rank < ranks)
      << kCall << ": rank " << rank << " must be in [0, " << ranks << ")";
  AMPIPE_CHECK(weight.defined() && weight.dtype() == DType::F32 && weight.device() == Device::CPU &&
               weight.ndim() == 2)
      << kCall << ": weight must be a float32 CPU tensor [out, in], got " << describe(weight);
  if (kind == TensorParallelKind::Column) {
    check_divisible(kCall, "out (the weight's rows, column-parallel)", weight.dim(0), ranks);
    const int64_t size = weight.dim(0) / ranks;
    return weight.rows(rank * size, (rank + 1) * size).clone();
  }
  check_divisible(kCall, "in (the weight's columns, row-parallel)", weight.dim(1), ranks);
  const int64_t size = weight.dim(1) / ranks;
  return weight.cols(rank * size, (rank + 1) * size).clone();
}

Tensor tensor_parallel_bias_shard(const Tensor& bias, TensorParallelKind kind, int rank, int ranks) {
  constexpr const char* kCall = "tensor_parallel_bias_shard";
  if (!bias.defined()) return Tensor();
  AMPIPE_CHECK(ranks >= 1 && rank >= 0 && rank < ranks)
      << kCall << ": rank " << rank << " must be in [0, " << ranks << ")";
  AMPIPE_CHECK(bias.dtype() == DType::F32 && bias.device() == Device::CPU && bias.ndim() == 1)
      << kCall << ": bias must be a float32 CPU tensor [out] or undefined, got " << describe(bias);
  if (kind == TensorParallelKind::Row) return bias.clone();
  check_divisible(kCall, "out (the bias's size, column-parallel)", bias.dim(0), ranks);
  const int64_t size = bias.dim(0) / ranks;
  return bias.reshape({bias.dim(0), 1}).rows(rank * size, (rank + 1) * size).clone().reshape({size});
}

void column_parallel_forward(const Tensor& x, const Tensor& weight_shard, const Tensor& bias_shard,
                             Communicator& group, bool sequence_parallel, Tensor y_shard) {
  constexpr const char* kCall = "column_parallel_forward";
  check_weight(kCall, weight_shard);
  const int64_t out_shard = weight_shard.dim(0), in = weight_shard.dim(1);
  check_matrix(kCall, "x", x, -1, in);
  const int64_t rows = sequence_parallel ? x.dim(0) * group.size() : x.dim(0);
  check_bias(kCall, "bias_shard", bias_shard, out_shard);
  check_matrix(kCall, "y_shard", y_shard, rows, out_shard);
  const Tensor input = sequence_parallel ? gather_rows(group, x) : x;
  linear_forward(input, weight_shard, bias_shard, y_shard);
}

void column_parallel_backward(const Tensor& x, const Tensor& weight_shard, const Tensor& dy_shard,
                              Communicator& group, bool sequence_parallel, Tensor dx, Tensor dweight_shard,
                              Tensor dbias_shard) {
  constexpr const char* kCall = "column_parallel_backward";
  check_weight(kCall, weight_shard);
  const int64_t out_shard = weight_shard.dim(0), in = weight_shard.dim(1);
  const int ranks = group.size();
  check_matrix(kCall, "dy_shard", dy_shard, -1, out_shard);
  const int64_t rows = dy_shard.dim(0);
  if (sequence_parallel) check_divisible(kCall, "the rows N of dy_shard (sequence parallel)", rows, ranks);
  const int64_t local_rows = sequence_parallel ? rows / ranks : rows;
  check_matrix(kCall, "x", x, local_rows, in);
  check_matrix(kCall, "dx", dx, local_rows, in, true);
  check_matrix(kCall, "dweight_shard", dweight_shard, out_shard, in);
  check_bias(kCall, "dbias_shard", dbias_shard, out_shard);

  const Tensor input = sequence_parallel ? gather_rows(group, x) : x;
  linear_backward_weight(input, weight_shard, dy_shard, dweight_shard, dbias_shard);
  sum_partials(
      group, sequence_parallel, rows, in,
      [&](Tensor partial) { linear_backward_input(weight_shard, dy_shard, partial); }, dx);
}

void row_parallel_forward(const Tensor& x_shard, const Tensor& weight_shard, const Tensor& bias,
                          Communicator& group, bool sequence_parallel, Tensor y) {
  constexpr const char* kCall = "row_parallel_forward";
  check_weight(kCall, weight_shard);
  const int64_t out = weight_shard.dim(0), in_shard = weight_shard.dim(1);
  const int ranks = group.size();
  check_matrix(kCall, "x_shard", x_shard, -1, in_shard);
  const int64_t rows = x_shard.dim(0);
  if (sequence_parallel) check_divisible(kCall, "the rows N of x_shard (sequence parallel)", rows, ranks);
  check_bias(kCall, "bias", bias, out);
  check_matrix(kCall, "y", y, sequence_parallel ? rows / ranks : rows, out, true);

  sum_partials(
      group, sequence_parallel, rows, out,
      [&](Tensor partial) { linear_forward(x_shard, weight_shard, Tensor(), partial); }, y);
  if (bias.defined()) kernels::add_bias(y, bias);
}

void row_parallel_backward(const Tensor& x_shard, const Tensor& weight_shard, const Tensor& dy,
                           Communicator& group, bool sequence_parallel, Tensor dx_shard, Tensor dweight_shard,
                           Tensor dbias) {
  constexpr const char* kCall = "row_parallel_backward";
  check_weight(kCall, weight_shard);
  const int64_t out = weight_shard.dim(0), in_shard = weight_shard.dim(1);
  check_matrix(kCall, "x_shard", x_shard, -1, in_shard);
  const int64_t rows = x_shard.dim(0);
  if (sequence_parallel)
    check_divisible(kCall, "the rows N of x_shard (sequence parallel)", rows, group.size());
  check_matrix(kCall, "dy", dy, sequence_parallel ? rows / group.size() : rows, out);
  check_matrix(kCall, "dx_shard", dx_shard, rows, in_shard);
  check_matrix(kCall, "dweight_shard", dweight_shard, out, in_shard);
  check_bias(kCall, "dbias", dbias, out);

  const Tensor grad = sequence_parallel ? gather_rows(group, dy) : dy;
  linear_backward_input(weight_shard, grad, dx_shard);
  linear_backward_weight(x_shard, weight_shard, grad, dweight_shard, dbias);
}

}  // namespace ampipe
