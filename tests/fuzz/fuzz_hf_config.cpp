// Fuzzes the Hugging Face config.json reader (train/hf_checkpoint.h, read_hf_config): the input is
// written as config.json into a per-process temporary directory, which is then read.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang or unbounded
// memory; an accepted config that ModelConfig::validate() refuses or that is not of the Mixtral family.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "fuzz_util.h"
#include "train/hf_checkpoint.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::scratch_dir() + "/hf";
  static const bool made = std::filesystem::create_directories(dir) || true;
  (void)made;
  fuzz::write_bytes(dir + "/config.json", data, size);
  ModelConfig c;
  if (!fuzz::accepts([&] { c = read_hf_config(dir); })) return 0;
  if (!fuzz::accepts([&] { c.validate(); })) fuzz::finding("read_hf_config accepted an invalid config");
  if (!c.mixtral()) fuzz::finding("read_hf_config returned a config outside the Mixtral family");
  if (!hf_export_refusal(c).empty()) fuzz::finding("read_hf_config returned a config export refuses");
  return 0;
}
