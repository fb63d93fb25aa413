// Tensors on disk in the safetensors format (https://github.com/huggingface/safetensors).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON header
//   {"__metadata__": {"key": "value", ...}, "<name>": {"dtype": "F32", "shape": [...],
//    "data_offsets": [begin, end]}, ...}
// padded with spaces to a multiple of 8 bytes, then the data buffer; offsets are relative to the
// start of the buffer and the tensors tile it exactly (no gaps, no overlaps). Only F32 and I32 are
// supported by read_safetensors, stored little-endian and row-major; the header-level reader below
// also admits BF16 and F16 tensors and converts them to float32 on read (Hugging Face checkpoints).
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

// Writes `tensors` (CPU, F32, BF16 or I32, any strides; names unique and not "__metadata__") and
// `metadata` to `path`. Empty metadata is omitted from the header.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata);

SafetensorsFile read_safetensors(const std::string& path);

// Reading a file's header first and its tensors one at a time (large or sharded checkpoints whose
// every header is checked before any data is read).
struct SafetensorsEntry {
  std::string dtype;  // "F32", "BF16", "F16" or "I32"
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range within the data buffer
};
struct SafetensorsHeader {
  std::string path;
  std::map<std::string, std::string> metadata;
  std::map<std::string, SafetensorsEntry> tensors;
  uint64_t data_begin = 0;  // file offset of the data buffer
  uint64_t file_size = 0;
};

// Parses and validates the header of `path` (the same checks as read_safetensors; dtypes F32, BF16,
// F16 and I32) without reading tensor data.
SafetensorsHeader read_safetensors_header(const std::string& path);
// Reads tensor `name` of a header from read_safetensors_header as float32: F32 as stored, BF16 and
// F16 converted exactly. Refuses I32, a missing name, and a file whose size changed since.
Tensor read_safetensors_tensor_f32(const SafetensorsHeader& header, const std::string& name);

}  // namespace ampipe
