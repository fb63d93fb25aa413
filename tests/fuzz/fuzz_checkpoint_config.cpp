// Fuzzes the checkpoint metadata reader: the model config stored as the string-to-string
// "__metadata__" object of DIR/model.safetensors (model/config.h ModelConfig::from_metadata, reached
// by train/checkpoint.h read_checkpoint_config). The input is the metadata object's JSON text. It is
// fed (1) to from_metadata directly when it is an object of strings, and (2) through
// read_checkpoint_config on a per-process temporary checkpoint directory whose model.safetensors
// header is {"__metadata__": <input>} (no tensors).
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang or unbounded
// memory; an accepted config that validate() refuses or that does not round-trip through
// to_metadata/from_metadata; the two paths disagreeing.
#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_util.h"
#include "model/config.h"
#include "train/checkpoint.h"

using namespace ampipe;

namespace {

void check_accepted(const ModelConfig& c, const char* how) {
  if (!fuzz::accepts([&] { c.validate(); })) fuzz::finding(std::string(how) + " accepted an invalid config");
  ModelConfig again;
  if (!fuzz::accepts([&] { again = ModelConfig::from_metadata(c.to_metadata()); }))
    fuzz::finding(std::string(how) + ": to_metadata wrote metadata from_metadata refuses");
  if (const std::string diff = c.differences(again); !diff.empty())
    fuzz::finding(std::string(how) + ": config does not round-trip: " + diff);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = fuzz::text_of(data, size);

  // (1) The text directly, when it is what a reader of the header hands on: an object of strings.
  bool direct_accepted = false;
  ModelConfig direct;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    std::map<std::string, std::string> metadata;
    bool strings = true;
    for (const auto& [key, value] : j.items()) {
      if (!value.is_string()) {
        strings = false;
        break;
      }
      metadata[key] = value.get<std::string>();
    }
    if (strings) {
      direct_accepted = fuzz::accepts([&] { direct = ModelConfig::from_metadata(metadata); });
      if (direct_accepted) check_accepted(direct, "from_metadata");
    }
  }

  // (2) Through a checkpoint directory.
  const std::string dir = fuzz::scratch_dir() + "/ckpt";
  static const bool made = std::filesystem::create_directories(dir) || true;
  (void)made;
  std::string header = "{\"__metadata__\":" + text + "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i)
    file[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header;
  fuzz::write_bytes(dir + "/model.safetensors", file.data(), file.size());
  ModelConfig via_file;
  const bool file_accepted = fuzz::accepts([&] { via_file = read_checkpoint_config(dir); });
  if (file_accepted) check_accepted(via_file, "read_checkpoint_config");
  // nlohmann keeps the last of duplicate keys where the safetensors reader refuses them, so only
  // an acceptance by both is compared.
  if (file_accepted && direct_accepted && !direct.differences(via_file).empty())
    fuzz::finding("from_metadata and read_checkpoint_config disagree: " + direct.differences(via_file));
  return 0;
}
