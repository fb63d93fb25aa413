#include "model/initialize.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/random.h"

namespace ampipe {
namespace {

uint64_t stream_seed(uint64_t seed, const std::string& name, int64_t part) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return mix_seed(mix_seed(seed, h), static_cast<uint64_t>(part));
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void initialize_parameters(ParameterRegistry& params, const ModelConfig& config, uint64_t seed,
                           const std::vector<TensorParallelShard>& shards) {
  const double std_default = 0.02;
  const double std_residual = 0.02 / std::sqrt(2.0 * static_cast<double>(config.num_layers));
  for (Parameter& p : params.all()) {
    p.grad.zero();
    if (ends_with(p.name, ".bias")) {
      p.value.zero();
      continue;
    }
    if (ends_with(p.name, "ln1.weight") || ends_with(p.name, "ln2.weight") || p.name == "final_ln.weight") {
      p.value.fill(1.0f);
      continue;
    }
    const bool residual = ends_with(p.name, "attn.proj.weight") || ends_with(p.name, "attn.o.weight") ||
                          ends_with(p.name, "moe.fc2.weight") || ends_with(p.name, "moe.w2.weight");
    const double std = residual ? std_residual : std_default;
    // Expert tensors [E_local, ...] draw one stream per expert slice, by global expert index.
    const int64_t parts = p.is_expert ? p.value.dim(0) : 1;
    // A tensor-parallel shard: the whole tensor is drawn, then this rank's shard kept.
    const auto shard = std::find_if(shards.begin(), shards.end(),
                                    [&p](const TensorParallelShard& s) { return s.name == p.name; });
    const Shape shape = shard != shards.end() ? shard->full_shape : p.value.shape();
    const int64_t part_size = shape_numel(shape) / parts;
    // Drawn on the host (the same values whatever the device), then copied to the parameter's device.
    const bool on_host = p.value.device() == Device::CPU && shard == shards.end();
    Tensor host = on_host ? p.value : Tensor::empty(shape);
    float* v = host.data<float>();
    for (int64_t part = 0; part < parts; ++part) {
      Rng rng(stream_seed(seed, p.name, part + p.expert_offset));
      for (int64_t i = 0; i < part_size; ++i)
        v[part * part_size + i] = static_cast<float>(rng.normal() * std);
    }
    if (shard != shards.end()) host = take_tensor_parallel_shard(host, *shard);
    if (!on_host) p.value.copy_from(host);
  }
}

}  // namespace ampipe
