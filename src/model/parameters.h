// ParameterRegistry: every trainable tensor of a model, by checkpoint name, with its gradient.
//
// Layers register their parameters at construction and keep Tensor handles to value and grad
// (handles share storage with the registry). The registry owns the order (registration order),
// which is the order of the optimizer state and of the checkpoint file. Every value and gradient
// lives on the registry's device. Not thread-safe.
//
// Mixed precision (--bf16, docs/MODEL.md "Precision"): `value` and `grad` stay float32 (the main
// parameters and main gradients the optimizer and the checkpoints see). A parameter its layer marks
// `matmul` (a GEMM operand: linear weights, the LM head) also gets a compute copy in the registry's
// compute dtype, which the forward and backward GEMMs read through operand(). The copies are a cache
// of the values: refresh_compute() rewrites them, and the models call it at the start of every
// forward pass, so any writer of values (optimizer, checkpoint load, import) is seen by the next pass.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>

#include "core/tensor.h"

namespace ampipe {

struct Parameter {
  std::string name;
  Tensor value;
  Tensor grad;         // same shape; accumulated by backward passes, cleared by zero_grad
  bool weight_decay;   // AdamW decays matrices, not biases or LayerNorm gains
  // Expert tensors [E_local, ...] hold experts [expert_offset, expert_offset + E_local) of the
  // layer's E; under expert parallelism each rank holds a different slice. Others are replicas.
  bool is_expert = false;
  int64_t expert_offset = 0;
  // Set by the layer that registers it: a GEMM operand, which gets a compute copy under bf16.
  bool matmul = false;
  // Set by the layer that registers it: a tensor-parallel shard (model/tensor_parallel.h), which
  // differs between the ranks of the tensor group; the others are whole and the same on each rank.
  bool tensor_parallel = false;
  // Set by the layer that registers it, under sequence parallelism (model/parallel.h): a whole
  // parameter whose gradient each rank of the tensor group computes from its own rows only (the
  // norms, the router), so the gradients are summed over the tensor group before the data-parallel
  // reduction (Megatron-LM's sequence_parallel attribute).
  bool sequence_parallel = false;
  Tensor compute;  // the compute copy (compute dtype), undefined under float32 or when !matmul

  // What the GEMMs read: the compute copy where there is one, else the value.
  const Tensor& operand() const { return compute.defined() ? compute : value; }
};

class ParameterRegistry {
 public:
  // Parameters are allocated on `device`.
  explicit ParameterRegistry(Device device = Device::CPU) : device_(device) {}

  Device device() const { return device_; }
  // Adds a zero-initialised parameter (and zero gradient). Names must be unique.
  Parameter& add(const std::string& name, const Shape& shape, bool weight_decay);
  // An expert tensor holding experts [expert_offset, expert_offset + shape[0]).
  Parameter& add_expert(const std::string& name, const Shape& shape, bool weight_decay, int64_t expert_offset);
  Parameter& get(const std::string& name);
  const Parameter& get(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  std::deque<Parameter>& all() { return params_; }
  const std::deque<Parameter>& all() const { return params_; }
  void zero_grad();
  int64_t num_elements() const;

  // The dtype GEMM operands are used in: F32 (default; no copies) or BF16 (a copy per matmul
  // parameter, allocated here and filled from the values). Call after every layer is registered.
  // Throws ampipe::Error for any other dtype.
  void set_compute_dtype(DType dtype);
  DType compute_dtype() const { return compute_dtype_; }
  // Rewrites every compute copy from its value (round to nearest even). A no-op under F32. Const:
  // the copies are a cache of the values, not state of their own.
  void refresh_compute() const;
  // The same for one parameter of this registry (a no-op without a compute copy).
  void refresh_compute(const Parameter& p) const;

 private:
  Device device_;
  DType compute_dtype_ = DType::F32;
  std::deque<Parameter> params_;  // deque: references stay valid as parameters are added
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace ampipe
