// The normalization of a block's two halves and of the model's output: LayerNorm (weight and bias)
// or RMSNorm (weight only), as ModelConfig::normalization says, with ModelConfig::norm_epsilon.
//
// Parameters: `name`.weight [d], and `name`.bias [d] for LayerNorm. The statistics backward needs
// live in a NormStats owned by the caller (mean is left undefined for RMSNorm).
#pragma once

#include <string>

#include "model/config.h"
#include "model/parameters.h"

namespace ampipe {

struct NormStats {
  Tensor mean;  // [T] LayerNorm only
  Tensor rstd;  // [T]
};

class Norm {
 public:
  // name: e.g. "blocks.0.ln1" or "final_ln".
  Norm(const ModelConfig& config, ParameterRegistry& params, const std::string& name);

  // x [T, d] -> y [T, d] (written); fills stats.
  void forward(const Tensor& x, Tensor y, NormStats& stats) const;
  // dx [T, d] written; the gain's (and bias') gradients accumulated.
  void backward(const Tensor& dy, const Tensor& x, const NormStats& stats, Tensor dx) const;
  // Sequence parallelism: its parameters' gradients are partial on each rank of the tensor group
  // (model/parameters.h, Parameter::sequence_parallel).
  void mark_sequence_parallel() {
    weight_->sequence_parallel = true;
    if (bias_) bias_->sequence_parallel = true;
  }

 private:
  bool rms_;
  float eps_;
  Parameter *weight_, *bias_ = nullptr;
};

}  // namespace ampipe
