// The model's initialisation rule (docs/MODEL.md, "Initialisation"), over any registry that holds
// the model's parameter names: a whole model (GptMoe::initialize) or one block standing alone
// (StandaloneBlock, model/block.h).
//
// Weights N(0, 0.02); residual output projections (attn.proj / attn.o, moe.fc2 / moe.w2)
// N(0, 0.02 / sqrt(2 L)); biases 0; norm gains 1. Each tensor (each expert's slice of the expert
// tensors) draws from its own stream seeded by (seed, name, global expert index), so the result does
// not depend on registration order or on which experts a rank holds. Gradients are zeroed.
// The values are drawn on the host, so a registry on any device gets the same weights.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/parameters.h"
#include "model/tensor_parallel.h"

namespace ampipe {

// `shards` (tensor parallelism): the registry's sharded parameters (GptMoe::tensor_parallel_shards);
// each is drawn whole, as at T = 1, and this rank's shard taken, so a model initialises to the same
// weights whatever its tensor-parallel size.
void initialize_parameters(ParameterRegistry& params, const ModelConfig& config, uint64_t seed,
                           const std::vector<TensorParallelShard>& shards = {});

}  // namespace ampipe
