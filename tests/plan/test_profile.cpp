// Hardware profiles: JSON round trip, the shipped profiles parse, bad profiles are refused with a
// message naming the file and the field, and a quick calibration on one rank gives a valid profile.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/parallel.h"
#include "plan/calibrate.h"
#include "plan/profile.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// The repository's profiles/ folder: $AMPIPE_PROFILES_DIR, else found from this source file's path
// (tests/plan/test_profile.cpp -> ../../profiles), which CMake passes as an absolute path.
fs::path profiles_dir() {
  if (const char* env = std::getenv("AMPIPE_PROFILES_DIR"); env && *env) return env;
  return fs::path(__FILE__).parent_path().parent_path().parent_path() / "profiles";
}

HardwareProfile sample_profile() {
  HardwareProfile p;
  p.name = "test-cluster";
  p.source = "made up for a test";
  p.matrix_flops = 1.234567890123e14;
  p.attention_efficiency = 0.61;
  p.attention_backward_efficiency = 0.4321;
  p.memory_bandwidth = 2.0e12;
  p.intra_node = {3.0e11, 3.5e-6};
  p.inter_node = {2.5e10, 7.0e-6};
  p.ranks_per_node = 8;
  p.bytes_per_element = 2;
  p.task_overhead = 1.5e-5;
  p.overlap_slowdown = 1.07;
  p.comm_overlap_slowdown = 37.5;
  p.cache_bytes = 16777216;
  p.cache_bandwidth = 7.5e11;
  return p;
}

Json sample_json() { return Json::parse(profile_to_json(sample_profile())); }

// The message of the Error that parsing `json` throws, or "" (and a test failure) if it parses.
std::string refusal(const Json& json, const std::string& where = "profiles/x.json") {
  try {
    parse_profile(json.dump(), where);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "the profile was accepted: " << json.dump();
  return "";
}

void expect_same(const HardwareProfile& a, const HardwareProfile& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.matrix_flops, b.matrix_flops);
  EXPECT_EQ(a.attention_efficiency, b.attention_efficiency);
  EXPECT_EQ(a.attention_backward_efficiency, b.attention_backward_efficiency);
  EXPECT_EQ(a.memory_bandwidth, b.memory_bandwidth);
  EXPECT_EQ(a.intra_node.bandwidth, b.intra_node.bandwidth);
  EXPECT_EQ(a.intra_node.latency, b.intra_node.latency);
  EXPECT_EQ(a.inter_node.bandwidth, b.inter_node.bandwidth);
  EXPECT_EQ(a.inter_node.latency, b.inter_node.latency);
  EXPECT_EQ(a.ranks_per_node, b.ranks_per_node);
  EXPECT_EQ(a.bytes_per_element, b.bytes_per_element);
  EXPECT_EQ(a.task_overhead, b.task_overhead);
  EXPECT_EQ(a.overlap_slowdown, b.overlap_slowdown);
  EXPECT_EQ(a.comm_overlap_slowdown, b.comm_overlap_slowdown);
  EXPECT_EQ(a.cache_bytes, b.cache_bytes);
  EXPECT_EQ(a.cache_bandwidth, b.cache_bandwidth);
  EXPECT_EQ(a.collectives, b.collectives);
  EXPECT_EQ(a.host_staging_bandwidth, b.host_staging_bandwidth);
  EXPECT_EQ(a.matrix_flops_bf16, b.matrix_flops_bf16);
}

TEST(Profile, RoundTripsThroughJsonExactly) {
  const HardwareProfile p = sample_profile();
  const HardwareProfile back = parse_profile(profile_to_json(p), "roundtrip");
  expect_same(p, back);
  EXPECT_EQ(profile_to_json(back), profile_to_json(p));
}

TEST(Profile, SaveAndLoadRoundTrip) {
  std::string pattern = ::testing::TempDir() + "ampipe_profile_XXXXXX";
  ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
  const std::string path = (fs::path(pattern) / "p.json").string();
  save_profile(sample_profile(), path);
  expect_same(load_profile(path), sample_profile());
  fs::remove_all(pattern);
}

TEST(Profile, LoadNamesAMissingFile) {
  try {
    load_profile("/nonexistent/dir/profile.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/profile.json"), std::string::npos) << e.what();
  }
}

TEST(Profile, OptionalFieldsDefault) {
  Json j = sample_json();
  j.erase("task_overhead");
  j.erase("overlap_slowdown");
  j.erase("comm_overlap_slowdown");
  j.erase("cache_bytes");
  j.erase("cache_bandwidth");
  const HardwareProfile p = parse_profile(j.dump(), "x");
  EXPECT_EQ(p.task_overhead, 0.0);
  EXPECT_EQ(p.overlap_slowdown, 1.0);
  EXPECT_EQ(p.comm_overlap_slowdown, 1.0);
  EXPECT_EQ(p.cache_bytes, 0.0);
  EXPECT_EQ(p.cache_bandwidth, 0.0);
  // Without a cache the profile is written without a cache bandwidth, and reads back the same.
  EXPECT_EQ(Json::parse(profile_to_json(p)).count("cache_bandwidth"), 0u);
  expect_same(parse_profile(profile_to_json(p), "again"), p);
}

TEST(Profile, NewOverlapAndCacheFieldsAreValidatedByName) {
  Json j = sample_json();
  j["comm_overlap_slowdown"] = 0.5;
  EXPECT_EQ(refusal(j), "profiles/x.json: field 'comm_overlap_slowdown' must be >= 1, got 0.5");
  j = sample_json();
  j["comm_overlap_slowdown"] = "fast";
  EXPECT_NE(refusal(j).find("field 'comm_overlap_slowdown' must be a number, got string"), std::string::npos);
  j = sample_json();
  j["cache_bytes"] = -1;
  EXPECT_EQ(refusal(j), "profiles/x.json: field 'cache_bytes' must be >= 0, got -1");
  j = sample_json();
  j.erase("cache_bandwidth");  // a cache without its rate
  EXPECT_NE(refusal(j).find("field 'cache_bandwidth' is required and must be > 0 when cache_bytes > 0"),
            std::string::npos)
      << refusal(j);
  for (const double bad : {0.0, -3.0}) {
    j = sample_json();
    j["cache_bandwidth"] = bad;
    EXPECT_NE(refusal(j).find("field 'cache_bandwidth' must be > 0"), std::string::npos) << refusal(j);
  }
  // A rate with no cache is allowed (and unused).
  j = sample_json();
  j["cache_bytes"] = 0;
  EXPECT_EQ(parse_profile(j.dump(), "x").cache_bandwidth, 7.5e11);
}

TEST(Profile, CollectivesAndHostStagingAreValidatedByName) {
  Json j = sample_json();
  EXPECT_EQ(parse_profile(j.dump(), "x").collectives, "mpi");  // the default
  j["collectives"] = "nccl";
  EXPECT_EQ(parse_profile(j.dump(), "x").collectives, "nccl");
  j["collectives"] = "gloo";
  EXPECT_EQ(refusal(j), "profiles/x.json: field 'collectives' must be \"nccl\" or \"mpi\", got \"gloo\"");
  j = sample_json();
  j["host_staging_bandwidth"] = 2.5e10;
  const HardwareProfile staged = parse_profile(j.dump(), "x");
  EXPECT_EQ(staged.host_staging_bandwidth, 2.5e10);
  expect_same(parse_profile(profile_to_json(staged), "again"), staged);
  j["host_staging_bandwidth"] = 0;
  EXPECT_NE(refusal(j).find("field 'host_staging_bandwidth' must be > 0"), std::string::npos) << refusal(j);
  j["collectives"] = "nccl";
  j["host_staging_bandwidth"] = 2.5e10;
  EXPECT_NE(refusal(j).find("'host_staging_bandwidth' is for \"collectives\": \"mpi\""), std::string::npos)
      << refusal(j);
}

// matrix_flops_bf16: optional (0, not known, when absent and then not written), a real rate when given.
TEST(Profile, Bf16MatrixRateIsOptionalAndValidatedByName) {
  Json j = sample_json();
  EXPECT_EQ(parse_profile(j.dump(), "x").matrix_flops_bf16, 0.0);
  EXPECT_EQ(Json::parse(profile_to_json(parse_profile(j.dump(), "x"))).count("matrix_flops_bf16"), 0u);
  j["matrix_flops_bf16"] = 2.5e14;
  const HardwareProfile p = parse_profile(j.dump(), "x");
  EXPECT_EQ(p.matrix_flops_bf16, 2.5e14);
  expect_same(parse_profile(profile_to_json(p), "again"), p);
  j["matrix_flops_bf16"] = 0;
  EXPECT_NE(refusal(j).find("field 'matrix_flops_bf16' must be > 0"), std::string::npos) << refusal(j);
}

TEST(Profile, IntegralFloatIsAnInteger) {
  Json j = sample_json();
  j["ranks_per_node"] = 8.0;
  EXPECT_EQ(parse_profile(j.dump(), "x").ranks_per_node, 8);
}

TEST(Profile, ShippedProfilesParse) {
  const fs::path dir = profiles_dir();
  ASSERT_TRUE(fs::is_directory(dir)) << dir << " (set AMPIPE_PROFILES_DIR)";
  int count = 0, cpu = 0, gpu = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    ++count;
    SCOPED_TRACE(entry.path().string());
    HardwareProfile p;
    ASSERT_NO_THROW(p = load_profile(entry.path().string()));
    EXPECT_EQ(p.name, entry.path().stem().string()) << "a profile's name should be its file name";
    expect_same(parse_profile(profile_to_json(p), "again"), p);
    if (p.name.rfind("cpu-", 0) == 0) {  // measured on this machine kind by `ampipe plan --calibrate`
      ++cpu;
      EXPECT_NE(p.source.find("ampipe plan --calibrate"), std::string::npos) << "source should say how it was measured";
      EXPECT_EQ(p.bytes_per_element, 4);
      EXPECT_EQ(p.collectives, "mpi");
      continue;
    }
    ++gpu;  // GPU nodes from datasheets
    EXPECT_EQ(p.ranks_per_node, 8);
    EXPECT_EQ(p.bytes_per_element, 2);
    EXPECT_GT(p.matrix_flops, 1e14);
    EXPECT_GT(p.intra_node.bandwidth, p.inter_node.bandwidth);
    EXPECT_NE(p.source.find("http"), std::string::npos) << "source should cite a datasheet URL";
    EXPECT_EQ(p.collectives, "nccl") << "GPU profiles model NCCL's collectives";
  }
  EXPECT_EQ(count, cpu + gpu);
  EXPECT_GE(gpu, 4);
}

TEST(Profile, MissingFieldIsRefusedByName) {
  for (const std::string field :
       {"name", "source", "matrix_flops", "attention_efficiency", "attention_backward_efficiency",
        "memory_bandwidth", "intra_node", "inter_node", "ranks_per_node", "bytes_per_element"}) {
    Json j = sample_json();
    j.erase(field);
    EXPECT_EQ(refusal(j),
              "profiles/x.json: field '" + field + "' is missing (required; see src/plan/profile.h)");
  }
  Json j = sample_json();
  j["inter_node"].erase("latency");
  EXPECT_EQ(refusal(j),
            "profiles/x.json: field 'inter_node.latency' is missing (required; see src/plan/profile.h)");
}

TEST(Profile, ZeroAndNegativeRatesAreRefusedByName) {
  Json j = sample_json();
  j["inter_node"]["bandwidth"] = 0;
  EXPECT_EQ(refusal(j), "profiles/x.json: field 'inter_node.bandwidth' must be > 0, got 0");

  for (const std::string field : {"matrix_flops", "memory_bandwidth"}) {
    for (const double bad : {0.0, -5.0}) {
      Json k = sample_json();
      k[field] = bad;
      const std::string message = refusal(k);
      EXPECT_NE(message.find("field '" + field + "' must be > 0"), std::string::npos) << message;
    }
  }
  Json k = sample_json();
  k["intra_node"]["bandwidth"] = -1e9;
  EXPECT_EQ(refusal(k), "profiles/x.json: field 'intra_node.bandwidth' must be > 0, got -1e+09");
  for (const std::string field : {"attention_efficiency", "attention_backward_efficiency"}) {
    for (const double bad : {0.0, -0.5, 1.6}) {
      Json e = sample_json();
      e[field] = bad;
      const std::string message = refusal(e);
      EXPECT_NE(message.find("field '" + field + "' must be in (0, 1.5]"), std::string::npos) << message;
    }
  }
  Json latency = sample_json();
  latency["intra_node"]["latency"] = -1e-6;
  EXPECT_NE(refusal(latency).find("field 'intra_node.latency' must be >= 0"), std::string::npos);
  Json slowdown = sample_json();
  slowdown["overlap_slowdown"] = 0.9;
  EXPECT_NE(refusal(slowdown).find("field 'overlap_slowdown' must be >= 1"), std::string::npos);
  Json overhead = sample_json();
  overhead["task_overhead"] = -1;
  EXPECT_NE(refusal(overhead).find("field 'task_overhead' must be >= 0"), std::string::npos);
  for (const std::string field : {"ranks_per_node", "bytes_per_element"}) {
    Json c = sample_json();
    c[field] = 0;
    EXPECT_EQ(refusal(c), "profiles/x.json: field '" + field + "' must be an integer >= 1, got 0");
  }
}

TEST(Profile, NonFiniteRatesAreRefusedByName) {
  // JSON has no NaN or infinity literal; a number too large for a double is refused by the parser.
  Json j = sample_json();
  std::string text = j.dump();
  const std::string needle = "\"matrix_flops\":" + j["matrix_flops"].dump();
  ASSERT_NE(text.find(needle), std::string::npos);
  text.replace(text.find(needle), needle.size(), "\"matrix_flops\":1e999");
  try {
    parse_profile(text, "p.json");
    FAIL() << "1e999 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("p.json"), std::string::npos) << e.what();
  }
  // And on the struct.
  HardwareProfile p = sample_profile();
  p.memory_bandwidth = std::numeric_limits<double>::quiet_NaN();
  try {
    p.validate("mine.json");
    FAIL() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "mine.json: field 'memory_bandwidth' must be a finite number, got nan");
  }
  p = sample_profile();
  p.inter_node.latency = std::numeric_limits<double>::infinity();
  EXPECT_THROW(p.validate("mine.json"), Error);
}

TEST(Profile, WrongTypeIsRefusedByName) {
  Json j = sample_json();
  j["matrix_flops"] = "312e12";
  EXPECT_EQ(refusal(j), "profiles/x.json: field 'matrix_flops' must be a number, got string \"312e12\"");
  Json b = sample_json();
  b["memory_bandwidth"] = true;
  EXPECT_NE(refusal(b).find("field 'memory_bandwidth' must be a number, got boolean"), std::string::npos);
  Json n = sample_json();
  n["name"] = 5;
  EXPECT_NE(refusal(n).find("field 'name' must be a string"), std::string::npos);
  Json link = sample_json();
  link["inter_node"] = 25e9;
  EXPECT_NE(refusal(link).find("field 'inter_node' must be an object"), std::string::npos);
  Json r = sample_json();
  r["ranks_per_node"] = 8.5;
  EXPECT_NE(refusal(r).find("field 'ranks_per_node' must be an integer, got number 8.5"), std::string::npos)
      << refusal(r);
  Json lat = sample_json();
  lat["intra_node"]["latency"] = nullptr;
  EXPECT_NE(refusal(lat).find("field 'intra_node.latency' must be a number, got null"), std::string::npos);
}

TEST(Profile, UnknownFieldIsRefusedByName) {
  Json j = sample_json();
  j["matrix_flop"] = 1e12;  // a typo
  const std::string message = refusal(j);
  EXPECT_NE(message.find("profiles/x.json: unknown field 'matrix_flop'"), std::string::npos) << message;
  EXPECT_NE(message.find("matrix_flops"), std::string::npos) << "should list the known fields: " << message;
  Json k = sample_json();
  k["inter_node"]["bandwith"] = 1e9;
  EXPECT_NE(refusal(k).find("unknown field 'inter_node.bandwith'"), std::string::npos) << refusal(k);
}

TEST(Profile, DuplicateFieldAndBadJsonAreRefused) {
  std::string text = profile_to_json(sample_profile());
  text.insert(text.find('{') + 1, "\"matrix_flops\": 1,");
  try {
    parse_profile(text, "dup.json");
    FAIL() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "dup.json: field 'matrix_flops' appears twice");
  }
  try {
    parse_profile("{\"name\": ", "broken.json");
    FAIL() << "broken JSON accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("broken.json: not a valid JSON hardware profile", 0), 0u)
        << e.what();
  }
  EXPECT_THROW(parse_profile("[1, 2]", "array.json"), Error);
}

TEST(Calibrate, QuickOnOneRankGivesAPlausibleProfile) {
  SelfCommunicator self;
  CalibrateOptions options;
  options.name = "this-machine";
  options.quick = true;
  options.threads = 1;
  options.hidden_sizes = {256, 512};
  options.link = "test-link";
  std::ostringstream log;
  options.log = &log;
  const int threads_before = num_threads();
  const HardwareProfile p = calibrate(self, options);
  EXPECT_EQ(num_threads(), threads_before) << "calibrate should restore the thread count";
  std::printf("%s\n%s\n", log.str().c_str(), profile_to_json(p).c_str());

  EXPECT_NO_THROW(p.validate("calibrated"));
  EXPECT_EQ(p.name, "this-machine");
  // Physical bounds for ONE float32 compute thread on the x86-64-v3 (AVX2 + FMA) or newer cores
  // this project targets. sgemm: peak is 16 FLOP/cycle (one 256-bit FMA port) to 64 (two 512-bit
  // ports) at 2-6 GHz, i.e. ~32-384 GFLOP/s; 10 GFLOP/s leaves 3x for a loaded machine, and nothing
  // one core does reaches 500.
  EXPECT_GT(p.matrix_flops, 1e10);
  EXPECT_LT(p.matrix_flops, 5e11);
  // Attention's rate as a share of the sgemm rate: its FLOPs are small sgemms plus exp / rescaling,
  // so well below 1 but not negligible; above 1.5 would mean the FLOP count or the rate is wrong.
  EXPECT_GT(p.attention_efficiency, 0.05);
  EXPECT_LE(p.attention_efficiency, 1.5);
  EXPECT_GT(p.attention_backward_efficiency, 0.05);
  EXPECT_LE(p.attention_backward_efficiency, 1.5);
  // Streaming tens of MB from one core: DRAM or L3, 1-200 GB/s (one core's load ports top out at
  // ~64 B/cycle, ~200 GB/s, even from cache; under 1 GB/s is no memory system of this century).
  EXPECT_GT(p.memory_bandwidth, 1e9);
  EXPECT_LT(p.memory_bandwidth, 2e11);
  EXPECT_EQ(p.inter_node.bandwidth, options.single_rank_link.bandwidth);
  EXPECT_EQ(p.inter_node.latency, options.single_rank_link.latency);
  EXPECT_EQ(p.intra_node.bandwidth, p.inter_node.bandwidth);
  EXPECT_EQ(p.ranks_per_node, 1);
  EXPECT_EQ(p.bytes_per_element, 4);
  EXPECT_EQ(p.overlap_slowdown, 1.0);
  EXPECT_EQ(p.comm_overlap_slowdown, 1.0);
  // The last-level cache per rank: no CPU has more than a few GiB of it (the largest L3s are ~1 GiB).
  EXPECT_GE(p.cache_bytes, 0.0);
  EXPECT_LT(p.cache_bytes, 4.0 * 1024 * 1024 * 1024);
  if (p.cache_bytes > 0) {
    EXPECT_GT(p.cache_bandwidth, 1e9);  // as memory_bandwidth: one core, 1-500 GB/s from any cache
    EXPECT_LT(p.cache_bandwidth, 5e11);
  }
  // A round trip to a stream's worker thread: at least a cache-line hand-off each way (~100 ns), and
  // well under a scheduler time slice even on a loaded machine (2 ms).
  EXPECT_GT(p.task_overhead, 1e-7);
  EXPECT_LT(p.task_overhead, 2e-3);
  EXPECT_EQ(p.source.rfind("ampipe plan --calibrate on ", 0), 0u) << p.source;
  EXPECT_NE(p.source.find("1 rank, link test-link"), std::string::npos) << p.source;
  EXPECT_NE(p.source.find("not measured"), std::string::npos) << p.source;
}

TEST(Calibrate, BadOptionsAreRefused) {
  SelfCommunicator self;
  CalibrateOptions options;
  options.hidden_sizes = {};
  EXPECT_THROW(calibrate(self, options), Error);
  options.hidden_sizes = {512};
  options.threads = -1;
  EXPECT_THROW(calibrate(self, options), Error);
}

}  // namespace
}  // namespace ampipe
