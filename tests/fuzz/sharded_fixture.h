// The sharded checkpoint the sharded_index harness reads through fuzzed indexes, and its valid
// index (make_seeds.cpp writes that as the harness's seed): one shard of one rank, iteration 3,
// holding tensor "w" [5] in two pieces and "m" [2, 2] in one (train/sharded_checkpoint.h).
#pragma once

#include <string>

#include "core/tensor.h"
#include "train/sharded_checkpoint.h"

namespace ampipe::fuzz {

inline void write_sharded_fixture(const std::string& dir, bool with_index) {
  write_rank_shard(dir, 0, 1, 3,
                   {{"w@0", Tensor::from({3}, {1.0f, -2.0f, 0.5f})},
                    {"w@3", Tensor::from({2}, {4.0f, 8.0f})},
                    {"m@0", Tensor::from({4}, {0.25f, 0.0f, -1.0f, 3.0f})}});
  if (with_index)
    write_sharded_index(dir, 1, 3, {{"w", Shape{5}}, {"m", Shape{2, 2}}},
                        {{"family", "gpt"}, {"iteration", "3"}},
                        {{"iteration", "3"}, {"optimizer_steps", "3"}, {"seed", "1"}});
}

}  // namespace ampipe::fuzz
