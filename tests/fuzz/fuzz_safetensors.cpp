// Fuzzes the safetensors reader (train/safetensors.h) on whole files: read_safetensors, and
// read_safetensors_header followed by read_safetensors_tensor_f32 of every tensor the header lists.
// The input is written to a per-process temporary file, since the readers take a path.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang, an
// allocation the file's size does not justify, or an accepted file whose tensors disagree with its
// header (element count times element size != the byte range).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "train/safetensors.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::scratch_dir() + "/input.safetensors";
  fuzz::write_bytes(path, data, size);

  fuzz::accepts([&] {
    const SafetensorsFile file = read_safetensors(path);
    for (const auto& [name, t] : file.tensors)
      if (t.numel() * static_cast<int64_t>(dtype_size(t.dtype())) > static_cast<int64_t>(size))
        fuzz::finding("read_safetensors: tensor '" + name + "' is larger than the file");
  });

  SafetensorsHeader header;
  if (!fuzz::accepts([&] { header = read_safetensors_header(path); })) return 0;
  for (const auto& item : header.tensors) {
    const std::string& name = item.first;  // not a structured binding: clang 14 cannot capture those
    const SafetensorsEntry& entry = item.second;
    if (entry.end < entry.begin || header.data_begin + entry.end > header.file_size)
      fuzz::finding("read_safetensors_header: tensor '" + name + "' lies outside the file");
    fuzz::accepts([&] {
      const Tensor t = read_safetensors_tensor_f32(header, name);
      const uint64_t element_bytes = entry.dtype == "F32" ? 4 : 2;
      if (static_cast<uint64_t>(t.numel()) * element_bytes != entry.end - entry.begin)
        fuzz::finding("read_safetensors_tensor_f32: tensor '" + name + "' does not match its byte range");
    });
  }
  return 0;
}
