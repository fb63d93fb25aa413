// `ampipe bench` as a user meets it: a tiny grid finishes with a table row and a JSON object per
// case, sequential rows have speedup 1, the trace holds compute and comm slices, and bad values are
// refused naming the flag.
#include <gtest/gtest.h>

#include "cli_util.h"
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace {

namespace fs = std::filesystem;

using ampipe::testing::RunResult;

RunResult run(const std::string& args) { return ampipe::testing::run_ampipe(args); }

class Bench : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("ampipe_bench_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string tiny() {
    return "bench --seq-length 16,32 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 "
           "--moe-num-experts 2 --pipe-degree 1,2 --repeats 2 --threads 1 --link testlink";
  }
  void expect_refused(const std::string& args, const std::string& flag) {
    RunResult r = run(args);
    EXPECT_NE(r.status, 0) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(flag), std::string::npos) << "expected '" << flag << "' in:\n" << r.output;
  }
  fs::path dir_;
};

TEST_F(Bench, TinyGridWritesATableAndOneJsonObjectPerCase) {
  // Pre-existing content is replaced, not appended to.
  std::ofstream(path("b.jsonl")) << "{\"stale\": true}\n";
  RunResult r = run(tiny() + " --json-out " + path("b.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;

  std::ifstream in(path("b.jsonl"));
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  // Per N: sequential once, moe-pipe and ampipe at P = 1 (one stage order: both are the same) and
  // at P = 2 in 2 stage orders.
  ASSERT_EQ(rows.size(), 2u * (1 + 2 * (1 + 2))) << r.output;

  const char* keys[] = {"schedule",  "pipe_degree", "seq_length", "hidden_size",           "num_experts",
                        "top_k",     "ranks",       "link",       "time_ms", "speedup_vs_sequential",
                        "overlap_bound_ms", "efficiency"};
  std::set<std::string> schedules;
  for (const nlohmann::json& j : rows) {
    for (const char* k : keys) ASSERT_TRUE(j.contains(k)) << "missing " << k << " in " << j.dump();
    schedules.insert(j["schedule"].get<std::string>());
    EXPECT_EQ(j["hidden_size"], 16);
    EXPECT_EQ(j["num_experts"], 2);
    EXPECT_EQ(j["top_k"], 1);
    EXPECT_EQ(j["ranks"], 1);
    EXPECT_EQ(j["link"], "testlink");
    EXPECT_TRUE(j["seq_length"] == 16 || j["seq_length"] == 32) << j.dump();
    EXPECT_GT(j["time_ms"].get<double>(), 0.0) << j.dump();
    EXPECT_GT(j["overlap_bound_ms"].get<double>(), 0.0) << j.dump();
    const double eff = j["efficiency"].get<double>();
    EXPECT_GT(eff, 0.0) << j.dump();
    // efficiency = max(compute-stream time, comm-stream time) / wall time (src/cli/bench.cpp). Each
    // stream runs its slices one at a time inside the timed interval, so in every repeat each sum
    // is at most the wall time, and so are the medians: above 1 only by clock granularity.
    EXPECT_LE(eff, 1.05) << j.dump();
    EXPECT_NEAR(eff, j["overlap_bound_ms"].get<double>() / j["time_ms"].get<double>(), 1e-6 * eff)
        << j.dump();
    EXPECT_GT(j["speedup_vs_sequential"].get<double>(), 0.0) << j.dump();
    if (j["schedule"] == "sequential") {
      EXPECT_DOUBLE_EQ(j["speedup_vs_sequential"].get<double>(), 1.0) << j.dump();
      EXPECT_EQ(j["pipe_degree"], 1);
    } else {
      EXPECT_TRUE(j["pipe_degree"] == 1 || j["pipe_degree"] == 2) << j.dump();
    }
  }
  EXPECT_EQ(schedules, (std::set<std::string>{"sequential", "moe-pipe", "ampipe"}));

  // The table: one row per case, with the case on the row.
  int table_rows = 0;
  std::istringstream out(r.output);
  for (std::string line; std::getline(out, line);) {
    std::istringstream words(line);
    std::string schedule;
    int P = 0;
    words >> schedule >> P;
    if ((schedule == "sequential" || schedule == "moe-pipe" || schedule == "ampipe") && words &&
        line.find("testlink") != std::string::npos) {
      ++table_rows;
      EXPECT_TRUE(line.find(" 16 ") != std::string::npos) << line;  // d (and N for half the rows)
    }
  }
  EXPECT_EQ(table_rows, static_cast<int>(rows.size())) << r.output;
  for (const char* col : {"schedule", "speedup", "bound ms", "eff"})
    EXPECT_NE(r.output.find(col), std::string::npos) << r.output;
}

TEST_F(Bench, TraceHoldsComputeAndCommSlices) {
  RunResult r = run("bench --seq-length 16 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 "
                    "--moe-num-experts 2 --schedule sequential,ampipe --pipe-degree 2 --stage-order interleaved "
                    "--repeats 1 --warmup 0 --threads 1 --trace " + path("t.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(path("t.json"));
  ASSERT_TRUE(in.good());
  nlohmann::json trace = nlohmann::json::parse(in);
  ASSERT_TRUE(trace.contains("traceEvents"));
  // Thread names: tid -> track name.
  std::map<std::pair<int, int>, std::string> tracks;
  for (const nlohmann::json& e : trace["traceEvents"])
    if (e.value("ph", "") == "M" && e.value("name", "") == "thread_name")
      tracks[{e["pid"].get<int>(), e["tid"].get<int>()}] = e["args"]["name"].get<std::string>();
  int compute = 0, comm = 0;
  for (const nlohmann::json& e : trace["traceEvents"]) {
    if (e.value("ph", "") != "X") continue;
    const std::string track = tracks[{e["pid"].get<int>(), e["tid"].get<int>()}];
    compute += track == "compute";
    comm += track == "comm";
  }
  EXPECT_GT(compute, 0) << trace.dump().substr(0, 2000);
  EXPECT_GT(comm, 0) << trace.dump().substr(0, 2000);
}

TEST_F(Bench, BadValuesAreRefusedNamingTheFlag) {
  expect_refused(tiny() + " --pipe-degree 0", "--pipe-degree");
  expect_refused(tiny() + " --schedule foo", "--schedule");
  expect_refused(tiny() + " --seq-length x", "--seq-length");
  expect_refused(tiny() + " --stage-order sideways", "--stage-order");
  expect_refused(tiny() + " --repeats 0", "--repeats");
  expect_refused(tiny() + " --hidden-size 18 --num-attention-heads 4", "--hidden-size 18");
  expect_refused(tiny() + " --predict-only", "--hardware");
}

TEST_F(Bench, PredictOnlyPricesEveryCaseWithStagesAndTimesNothing) {
  RunResult r = run(tiny() + " --schedule sequential,ampipe,auto --hardware h100-8gpu-400gbit --predict-only "
                    "--json-out " + path("p.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(path("p.jsonl"));
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    ++rows;
    EXPECT_TRUE(j["time_ms"].is_null()) << line;
    EXPECT_GT(j["predicted_ms"].get<double>(), 0.0) << line;
    double stages = 0;
    for (const auto& [name, ms] : j["predicted_stage_ms"].items()) stages += ms.get<double>();
    // Each task priced alone, summed: at least the makespan's share of one stream, and positive.
    EXPECT_GT(stages, 0.0) << line;
    EXPECT_TRUE(j["stage_ms"].empty()) << "nothing measured: " << line;
  }
  // Per N: sequential, ampipe at P = 1 and at P = 2 in 2 stage orders, auto.
  EXPECT_EQ(rows, 2 * (1 + 1 + 2 + 1)) << r.output;
}

}  // namespace
