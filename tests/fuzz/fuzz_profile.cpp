// Fuzzes the hardware-profile parser (plan/profile.h, parse_profile) on JSON text.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report, a hang or unbounded
// memory; and an accepted profile that fails validate() or does not round-trip through
// profile_to_json and parse_profile unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "plan/profile.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  HardwareProfile profile;
  if (!fuzz::accepts([&] { profile = parse_profile(fuzz::text_of(data, size), "fuzz.json"); })) return 0;
  if (!fuzz::accepts([&] { profile.validate("fuzz.json"); }))
    fuzz::finding("parse_profile accepted a profile that validate() refuses");
  const std::string json = profile_to_json(profile);
  HardwareProfile again;
  if (!fuzz::accepts([&] { again = parse_profile(json, "round-trip.json"); }))
    fuzz::finding("profile_to_json wrote a profile parse_profile refuses:\n" + json);
  if (profile_to_json(again) != json) fuzz::finding("profile does not round-trip:\n" + json);
  return 0;
}
