// The sharded checkpoint format (train --ckpt-format sharded): every rank writes its own part of the
// model and of the optimizer state, in parallel, and no rank ever holds the whole model.
//
// An iteration directory (train/checkpoint.h lays those out) then holds:
//   shard_00000_of_00004.safetensors ... one per rank of the world that saved it. Each holds 1-D
//       float32 pieces named "<tensor>@<begin>": elements [begin, begin + numel) of the flattened
//       global tensor <tensor>, a parameter ("blocks.0.attention.qkv.weight", experts whole over
//       the expert dimension) or its AdamW moment ("<param>.exp_avg", "<param>.exp_avg_sq"). Which
//       rank writes which elements: the owned segments of train/distributed.h (ShardSpace), so
//       each element is written once, and with the distributed optimizer every rank writes the
//       moments it holds.
//   checkpoint_index.json, written last by rank 0 once every shard is on disk: the format, the
//       iteration, the model config and optimizer metadata (the same keys as the gathered files'),
//       the shard files with their sizes, and for each global tensor its shape and its pieces
//       (file, begin, numel), which tile it exactly.
//   tokenizer.model, for a subword tokenizer.
// The crash rules are those of the gathered format: the directory is written under a temporary
// name, every file fsynced, renamed into place, then the tracker.
//
// A reader (ShardedCheckpoint) takes any elements of any tensor, so a checkpoint loads into any
// layout: another world size, expert-parallel size, with or without the distributed optimizer.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace ampipe {

// DIR/checkpoint_index.json, and whether DIR has one.
std::string sharded_index_path(const std::string& dir);
bool is_sharded_checkpoint(const std::string& dir);
// "shard_00003_of_00004.safetensors".
std::string shard_file_name(int rank, int world);

// One rank's part: pieces named "<tensor>@<begin>" (any device; copied to the host), written
// atomically as DIR/shard_file_name(rank, world), stamped with the iteration.
void write_rank_shard(const std::string& dir, int rank, int world, int64_t iteration,
                      const std::vector<std::pair<std::string, Tensor>>& pieces);

// Rank 0, after every rank's shard is written: reads the shards' headers and writes the index
// (atomically). `shapes`: every global tensor the pieces must tile (parameters and moments); a
// tensor not tiled exactly, or a piece of a tensor not named, is refused (nothing is written).
void write_sharded_index(const std::string& dir, int world, int64_t iteration,
                         const std::map<std::string, Shape>& shapes,
                         const std::map<std::string, std::string>& model_metadata,
                         const std::map<std::string, std::string>& optimizer_metadata);

// Why DIR's sharded checkpoint cannot be read: a missing or malformed index, a missing, truncated
// or foreign shard, a tensor its pieces do not tile. Empty when complete. Reads headers only.
std::string sharded_checkpoint_problem(const std::string& dir);

class ShardedCheckpoint {
 public:
  // Opens and validates DIR (sharded_checkpoint_problem's checks); throws ampipe::Error naming
  // the problem.
  explicit ShardedCheckpoint(const std::string& dir);

  const std::string& dir() const { return dir_; }
  int64_t iteration() const { return iteration_; }
  const std::map<std::string, std::string>& model_metadata() const { return model_metadata_; }
  const std::map<std::string, std::string>& optimizer_metadata() const { return optimizer_metadata_; }
  bool has(const std::string& tensor) const { return tensors_.count(tensor) != 0; }
  // Throws naming the tensor when absent.
  const Shape& shape(const std::string& tensor) const;
  std::vector<std::string> tensor_names() const;

  // Fills `out` (float32, on the host, contiguous) with elements [begin, begin + out.numel()) of
  // the flattened tensor, reading only the bytes of the pieces that overlap them.
  void read(const std::string& tensor, int64_t begin, Tensor out) const;

 private:
  struct Piece {
    size_t file = 0;
    uint64_t offset = 0;  // byte offset of the piece's data in its file
    int64_t begin = 0, numel = 0;
  };
  struct Entry {
    Shape shape;
    std::vector<Piece> pieces;  // by begin, tiling [0, numel)
  };
  std::string dir_;
  int64_t iteration_ = -1;
  std::map<std::string, std::string> model_metadata_, optimizer_metadata_;
  std::vector<std::string> files_;
  std::map<std::string, Entry> tensors_;
};

}  // namespace ampipe
