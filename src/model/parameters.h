// ParameterRegistry: every trainable tensor of a model, by checkpoint name, with its gradient.
//
// Layers register their parameters at construction and keep Tensor handles to value and grad
// (handles share storage with the registry). The registry owns the order (registration order),
// which is the order of the optimizer state and of the checkpoint file. Every value and gradient
// lives on the registry's device. Not thread-safe.
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

 private:
  Device device_;
  std::deque<Parameter> params_;  // deque: references stay valid as parameters are added
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace ampipe
