// Tensors on disk in the safetensors format (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON header
//   {"__metadata__": {"key": "value", ...}, "<name>": {"dtype": "F32", "shape": [...],
//    "data_offsets": [begin, end]}, ...}
// padded with spaces to a multiple of 8 bytes, then the data buffer; offsets are relative to the
// start of the buffer and the tensors tile it exactly (no gaps, no overlaps). Only F32 and I32 are
// supported, stored little-endian and row-major.
//
// write_safetensors commits the file atomically (see core/atomic_file.h), laying the tensors out in
// the order given. read_safetensors validates the whole header against the file before it reads
// any data, and refuses anything malformed with an ampipe::Error naming the file and the problem, so
// a truncated or hostile file never causes an out-of-bounds read or an absurd allocation.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace ampipe {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // contiguous CPU tensors owning their storage
  std::map<std::string, std::string> metadata;
};

// Writes `tensors` (CPU, F32 or I32, any strides; names unique and not "__metadata__") and
// `metadata` to `path`. Empty metadata is omitted from the header.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata);

SafetensorsFile read_safetensors(const std::string& path);

}  // namespace ampipe
