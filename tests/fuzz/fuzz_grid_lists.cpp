// Fuzzes the grid flags' list parsers (cli/grid.h): split_list and parse_int_list (every model flag
// of `ampipe bench` and `ampipe plan`, e.g. --hidden-size 256,512), on the same text.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang or unbounded
// memory; split_list returning other than one item per comma plus one, or an untrimmed item;
// parse_int_list returning a value below the minimum or a duplicate.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cli/grid.h"
#include "fuzz_util.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = fuzz::text_of(data, size);
  const std::vector<std::string> items = split_list(text);
  if (items.size() != static_cast<size_t>(std::count(text.begin(), text.end(), ',')) + 1)
    fuzz::finding("split_list: item count is not commas + 1");
  for (const std::string& item : items) {
    if (item.find(',') != std::string::npos) fuzz::finding("split_list: an item holds a comma");
    if (!item.empty() &&
        (item.front() == ' ' || item.front() == '\t' || item.back() == ' ' || item.back() == '\t'))
      fuzz::finding("split_list: an item is not trimmed");
  }
  for (int64_t min_value : {int64_t{0}, int64_t{1}}) {
    std::vector<int64_t> values;
    if (!fuzz::accepts([&] { values = parse_int_list("--hidden-size", text, min_value); })) continue;
    for (size_t i = 0; i < values.size(); ++i) {
      if (values[i] < min_value) fuzz::finding("parse_int_list: value below the minimum");
      if (std::find(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(i), values[i]) !=
          values.begin() + static_cast<std::ptrdiff_t>(i))
        fuzz::finding("parse_int_list: duplicate value");
    }
  }
  return 0;
}
