// What train/checkpoint.cpp (writing, locating) and train/checkpoint_load.cpp (reading) share.
// Internal to the checkpoint files.
#pragma once

#include <string>

#include "model/parameters.h"
#include "model/tensor_parallel.h"

namespace ampipe::checkpoint_detail {

// DIR/model.safetensors, DIR/optimizer.safetensors (the gathered format).
std::string model_path(const std::string& dir);
std::string optimizer_path(const std::string& dir);
// The whole tensor's shape: an expert parameter's over all `experts`, a tensor-parallel shard's
// full (T = 1, ETP = 1) shape (its entry in `shards`, GptMoe::all_parallel_shards()).
Shape whole_shape(const Parameter& p, int64_t experts, const std::vector<TensorParallelShard>& shards = {});
// This rank's part of a whole tensor (whole_shape's): an expert parameter's slice of experts (a view),
// then a tensor-parallel parameter's shard of it (a copy), else the tensor itself.
Tensor local_part(const Parameter& p, const Tensor& whole,
                  const std::vector<TensorParallelShard>& shards = {});
// The shard named `name` in `shards`, or nullptr.
const TensorParallelShard* find_shard(const std::vector<TensorParallelShard>& shards,
                                      const std::string& name);
// Where this rank's local tensor starts in the flattened whole one (its expert slice's first
// element; 0 for a replicated parameter).
int64_t global_offset(const Parameter& p);
// An iteration root's latest checkpoint directory (its tracker's iteration, unverified), else `dir`.
std::string files_dir(const std::string& dir);

}  // namespace ampipe::checkpoint_detail
