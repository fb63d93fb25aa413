#include "model/parameters.h"

#include "kernels/elementwise.h"

namespace ampipe {

Parameter& ParameterRegistry::add(const std::string& name, const Shape& shape, bool weight_decay) {
  AMPIPE_CHECK(!contains(name)) << "parameter '" << name << "' registered twice";
  index_[name] = params_.size();
  Tensor value = Tensor::zeros(shape, DType::F32, device_), grad = Tensor::zeros(shape, DType::F32, device_);
  params_.push_back(Parameter{name, value, grad, weight_decay, false, 0, false, false, false, Tensor()});
  return params_.back();
}

Parameter& ParameterRegistry::add_expert(const std::string& name, const Shape& shape, bool weight_decay,
                                         int64_t expert_offset) {
  Parameter& p = add(name, shape, weight_decay);
  p.is_expert = true;
  p.expert_offset = expert_offset;
  return p;
}

Parameter& ParameterRegistry::get(const std::string& name) {
  auto it = index_.find(name);
  AMPIPE_CHECK(it != index_.end()) << "no parameter named '" << name << "'";
  return params_[it->second];
}

const Parameter& ParameterRegistry::get(const std::string& name) const {
  auto it = index_.find(name);
  AMPIPE_CHECK(it != index_.end()) << "no parameter named '" << name << "'";
  return params_[it->second];
}

void ParameterRegistry::zero_grad() {
  for (Parameter& p : params_) p.grad.zero();
}

int64_t ParameterRegistry::num_elements() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.value.numel();
  return n;
}

void ParameterRegistry::set_compute_dtype(DType dtype) {
  AMPIPE_CHECK(dtype == DType::F32 || dtype == DType::BF16)
      << "the compute dtype of parameters is float32 or bf16, got " << dtype_name(dtype);
  compute_dtype_ = dtype;
  for (Parameter& p : params_)
    p.compute =
        dtype == DType::BF16 && p.matmul ? Tensor::empty(p.value.shape(), DType::BF16, device_) : Tensor();
  refresh_compute();
}

void ParameterRegistry::refresh_compute() const {
  for (const Parameter& p : params_) refresh_compute(p);
}

void ParameterRegistry::refresh_compute(const Parameter& p) const {
  if (p.compute.defined())  // both contiguous: converted as one row of every element
    kernels::convert(p.value.reshape({p.value.numel()}), p.compute.reshape({p.compute.numel()}));
}

}  // namespace ampipe
