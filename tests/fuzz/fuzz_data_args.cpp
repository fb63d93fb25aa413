// Fuzzes the data loader's flag parsers (train/gpt_dataset.h): parse_split (--split "969,30,1") on
// the whole text, and parse_data_path (--data-path, its items as the shell splits them) on the text
// split at whitespace.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang or unbounded
// memory; an accepted split whose fractions are not finite, in [0, 1] and summing to 1; an accepted
// blend with a weight that is not a finite positive number or with items lost.
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "train/gpt_dataset.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = fuzz::text_of(data, size);

  std::array<double, 3> split{};
  if (fuzz::accepts([&] { split = parse_split(text); })) {
    double sum = 0;
    for (double f : split) {
      if (!std::isfinite(f) || f < 0 || f > 1)
        fuzz::finding("parse_split: a fraction outside [0, 1]: " + text);
      sum += f;
    }
    if (std::abs(sum - 1.0) > 1e-9) fuzz::finding("parse_split: fractions do not sum to 1: " + text);
  }

  std::vector<std::string> items;
  std::istringstream in(text);
  for (std::string item; in >> item;) items.push_back(item);
  std::vector<WeightedPrefix> blend;
  if (fuzz::accepts([&] { blend = parse_data_path(items); })) {
    if (blend.size() != (items.size() == 1 ? 1 : items.size() / 2))
      fuzz::finding("parse_data_path lost items");
    for (const WeightedPrefix& w : blend)
      if (!std::isfinite(w.weight) || w.weight <= 0) fuzz::finding("parse_data_path: bad weight accepted");
  }
  return 0;
}
