// Fuzzes parse_byte_size (train/hf_checkpoint.h, the --max-shard-size flag: "1048576", "500MB",
// "1.5GiB").
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang; an accepted
// size below 1 byte, or one that differs from the number times its unit by more than rounding (e.g. a
// wrapped-around conversion).
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "train/hf_checkpoint.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = fuzz::text_of(data, size);
  uint64_t bytes = 0;
  if (!fuzz::accepts([&] { bytes = parse_byte_size(text); })) return 0;
  if (bytes < 1) fuzz::finding("parse_byte_size accepted " + std::to_string(bytes) + " bytes");
  // The number's value, by an independent route (strtod on the digits), against the result.
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  const double number = std::strtod(text.substr(0, i).c_str(), nullptr);
  std::string unit = text.substr(i);
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  double scale = 1;
  if (unit == "KB") scale = 1e3;
  if (unit == "MB") scale = 1e6;
  if (unit == "GB") scale = 1e9;
  if (unit == "TB") scale = 1e12;
  if (unit == "KIB") scale = 0x1p10;
  if (unit == "MIB") scale = 0x1p20;
  if (unit == "GIB") scale = 0x1p30;
  if (unit == "TIB") scale = 0x1p40;
  const double expected = number * scale;
  if (std::abs(static_cast<double>(bytes) - expected) > 1.0 + expected * 1e-12)
    fuzz::finding("parse_byte_size('" + text + "') = " + std::to_string(bytes) + ", expected about " +
                  std::to_string(expected));
  return 0;
}
