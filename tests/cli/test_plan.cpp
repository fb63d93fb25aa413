// `ampipe plan`, `bench --schedule auto` and `train --pipe-degree auto` as a user meets them: the
// planner prints every schedule's prediction and a choice that follows the link (pipelined on a
// slow one, sequential on a free one), over several blocks in both pipeline scopes, bad profiles
// are refused naming the field, and `auto` runs.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "cli_util.h"

namespace {

namespace fs = std::filesystem;
using ampipe::testing::RunResult;
using Json = nlohmann::json;

RunResult run(const std::string& args) { return ampipe::testing::run_ampipe(args); }

class Plan : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("ampipe_plan_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A CPU-like profile whose one link has the given bandwidth (bytes/s per rank).
  std::string profile(const std::string& name, double bandwidth) const {
    Json j = {{"name", name},
              {"source", "test profile"},
              {"matrix_flops", 1e11},
              {"attention_efficiency", 0.8},
              {"attention_backward_efficiency", 0.9},
              {"memory_bandwidth", 2e10},
              {"intra_node", {{"bandwidth", bandwidth}, {"latency", 2e-5}}},
              {"inter_node", {{"bandwidth", bandwidth}, {"latency", 2e-5}}},
              {"ranks_per_node", 2},
              {"bytes_per_element", 4},
              {"task_overhead", 5e-6},
              {"overlap_slowdown", 1.0}};
    std::ofstream(path(name + ".json")) << j.dump(2);
    return path(name + ".json");
  }
  std::vector<Json> json_lines(const std::string& file) const {
    std::vector<Json> rows;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) rows.push_back(Json::parse(line));
    return rows;
  }
  fs::path dir_;
};

TEST_F(Plan, PredictsEverySchedulePerShapeAndChoosesByTheLink) {
  const std::string shapes = " --ranks 2 --seq-length 2048,4096 --hidden-size 512 --json-out ";
  RunResult slow = run("plan --hardware " + profile("slow", 12.5e6) + shapes + path("slow.jsonl"));
  ASSERT_EQ(slow.status, 0) << slow.output;
  RunResult fast = run("plan --hardware " + profile("fast", 1e12) + shapes + path("fast.jsonl"));
  ASSERT_EQ(fast.status, 0) << fast.output;
  const auto slow_rows = json_lines(path("slow.jsonl")), fast_rows = json_lines(path("fast.jsonl"));
  ASSERT_EQ(slow_rows.size(), 2u) << slow.output;
  ASSERT_EQ(fast_rows.size(), 2u) << fast.output;
  for (const Json& j : slow_rows) {
    std::set<std::string> kinds;
    for (const Json& s : j["schedules"]) kinds.insert(s["schedule"].get<std::string>());
    EXPECT_EQ(kinds, (std::set<std::string>{"sequential", "moe-pipe", "ampipe"})) << j.dump();
    // A 100 Mbit/s-class link: half the block's time is all-to-all, and pipelining hides it.
    EXPECT_EQ(j["choice"].get<std::string>().rfind("ampipe", 0), 0u) << j.dump();
    EXPECT_GT(j["speedup_vs_sequential"].get<double>(), 1.2) << j.dump();
    EXPECT_GE(j["speedup_vs_moe_pipe"].get<double>(), 1.0) << j.dump();
  }
  for (const Json& j : fast_rows) {  // nothing to hide: never worse than not pipelining
    EXPECT_EQ(j["choice"], "sequential") << j.dump();
    EXPECT_DOUBLE_EQ(j["speedup_vs_sequential"].get<double>(), 1.0) << j.dump();
  }
  EXPECT_NE(slow.output.find("choice: ampipe"), std::string::npos) << slow.output;
}

TEST_F(Plan, SeveralBlocks_ReportsBothPipelineScopesAndTheChoicesScope) {
  const std::string shapes = " --ranks 2 --seq-length 4096 --hidden-size 512 --num-layers 4 --json-out ";
  RunResult r = run("plan --hardware " + profile("slow", 12.5e6) + shapes + path("l4.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  auto rows = json_lines(path("l4.jsonl"));
  ASSERT_EQ(rows.size(), 1u) << r.output;
  const Json j = rows[0];
  EXPECT_EQ(j["num_layers"], 4) << j.dump();
  std::set<std::pair<std::string, std::string>> seen;  // (schedule, scope)
  for (const Json& s : j["schedules"]) {
    const std::string scope = s["pipeline_scope"];
    seen.emplace(s["schedule"], scope);
    EXPECT_EQ(s["variant"].get<std::string>().ends_with(" model-scope"), scope == "model") << s.dump();
  }
  EXPECT_EQ(seen, (std::set<std::pair<std::string, std::string>>{{"sequential", "block"},
                                                                 {"moe-pipe", "block"},
                                                                 {"moe-pipe", "model"},
                                                                 {"ampipe", "block"},
                                                                 {"ampipe", "model"}}))
      << j.dump();
  const std::string scope = j["pipeline_scope"];
  EXPECT_TRUE(scope == "block" || scope == "model") << j.dump();
  EXPECT_EQ(j["choice"].get<std::string>().ends_with(" model-scope"), scope == "model") << j.dump();
  EXPECT_LE(j["choice_ms"].get<double>(),
            1.02 * std::min(j["best_block_scope_ms"].get<double>(), j["best_model_scope_ms"].get<double>()));
  EXPECT_NE(r.output.find("a pass of 4 blocks"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pipeline scope: " + scope), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model-scope"), std::string::npos) << r.output;

  // The gradient all-reduce per block lengthens every pass; one block reports block scope only.
  r = run("plan --hardware " + profile("slow", 12.5e6) + shapes + path("l4r.jsonl") +
          " --overlap-grad-reduce");
  ASSERT_EQ(r.status, 0) << r.output;
  rows = json_lines(path("l4r.jsonl"));
  ASSERT_EQ(rows.size(), 1u) << r.output;
  EXPECT_EQ(rows[0]["overlap_grad_reduce"], true);
  EXPECT_GT(rows[0]["sequential_ms"].get<double>(), j["sequential_ms"].get<double>());
  r = run("plan --hardware " + profile("slow", 12.5e6) + " --ranks 2 --seq-length 4096 --hidden-size 512 "
          "--json-out " + path("l1.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  rows = json_lines(path("l1.jsonl"));
  ASSERT_EQ(rows.size(), 1u) << r.output;
  EXPECT_EQ(rows[0]["num_layers"], 1);
  EXPECT_EQ(rows[0]["pipeline_scope"], "block");
  EXPECT_TRUE(rows[0]["best_model_scope_ms"].is_null()) << rows[0].dump();
  for (const Json& s : rows[0]["schedules"]) EXPECT_EQ(s["pipeline_scope"], "block") << s.dump();
  EXPECT_EQ(r.output.find("model-scope"), std::string::npos) << r.output;

  r = run("plan --help");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("--num-layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--overlap-grad-reduce"), std::string::npos) << r.output;
  r = run("plan --hardware " + profile("slow", 12.5e6) + " --num-layers 0");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--num-layers"), std::string::npos) << r.output;
}

// --micro-batches: the step priced unpaired and paired; on the slow link (forward link-bound,
// backward compute-bound) pairing wins and is chosen, on a free link the two are level; the trace
// holds the paired step's merged lists.
TEST_F(Plan, MicroBatchesPriceThePairedStep) {
  const std::string shapes =
      " --ranks 2 --seq-length 4096 --hidden-size 512 --num-layers 4 --micro-batches 4 ";
  RunResult r = run("plan --hardware cpu-2rank-200mbit --delay-wgrad-compute" + shapes + "--json-out " +
                    path("slow.jsonl") + " --trace " + path("paired.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("step of 4 micro-batches, weight gradients delayed"), std::string::npos)
      << r.output;
  Json j = json_lines(path("slow.jsonl")).at(0);
  EXPECT_EQ(j["micro_batches"], 4);
  EXPECT_LT(j["step_paired_ms"].get<double>(), 0.95 * j["step_unpaired_ms"].get<double>()) << j.dump();
  EXPECT_GE(j["step_paired_ms"].get<double>(), j["paired_step_bound_ms"].get<double>()) << j.dump();
  EXPECT_EQ(j["pairing"], "paired");
  std::ifstream trace(path("paired.json"));
  const Json events = Json::parse(trace);
  size_t wgrad = 0;
  for (const Json& e : events.contains("traceEvents") ? events["traceEvents"] : events)
    wgrad += e.contains("name") && e["name"].get<std::string>().rfind("experts wgrad", 0) == 0;
  EXPECT_EQ(wgrad, 4u * 4u * 4u) << "4 micro-batches x 4 blocks x 4 MoE chunks of delayed weight gradients";
  r = run("plan --hardware " + profile("free", 1e12) + shapes + "--json-out " + path("free.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  // A free link: nothing to hide, the two steps within 1%; the choice follows the rule (ties pair).
  j = json_lines(path("free.jsonl")).at(0);
  const double unpaired = j["step_unpaired_ms"].get<double>(), paired = j["step_paired_ms"].get<double>();
  EXPECT_NEAR(paired, unpaired, 0.01 * unpaired) << j.dump();
  EXPECT_EQ(j["pairing"], paired <= unpaired ? "paired" : "unpaired");
  r = run(
      "plan --hardware cpu-2rank-200mbit --delay-wgrad-compute --ranks 2 --seq-length 512 --hidden-size 64");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("it needs --micro-batches 2 or more"), std::string::npos) << r.output;
}

TEST_F(Plan, ShippedProfilesAreFoundByName) {
  RunResult r = run("plan --hardware h100-8gpu-400gbit --ranks 8,16 --seq-length 8192 --hidden-size 2048 "
                    "--moe-num-experts 16 --summary");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("h100-8gpu-400gbit"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("8192"), std::string::npos) << r.output;
}

TEST_F(Plan, BadProfilesAndFlagsAreRefused) {
  const std::string good = profile("good", 1e9);
  Json j = Json::parse(std::ifstream(good));
  j["inter_node"]["bandwidth"] = 0;
  std::ofstream(path("zero.json")) << j.dump();
  RunResult r = run("plan --hardware " + path("zero.json"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("inter_node.bandwidth"), std::string::npos) << r.output;
  j = Json::parse(std::ifstream(good));
  j.erase("matrix_flops");
  std::ofstream(path("missing.json")) << j.dump();
  r = run("plan --hardware " + path("missing.json"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("matrix_flops"), std::string::npos) << r.output;
  r = run("plan --hardware no-such-profile");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("no-such-profile"), std::string::npos) << r.output;
  r = run("plan --seq-length 1024");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--hardware"), std::string::npos) << r.output;
  r = run("plan --hardware " + good + " --ranks 3 --moe-num-experts 4");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--ranks 3"), std::string::npos) << r.output;
}

TEST_F(Plan, BenchRunsThePlannersChoiceAndPredictsEveryCase) {
  RunResult r = run("bench --seq-length 32 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 "
                    "--moe-num-experts 2 --schedule sequential,ampipe,auto --pipe-degree 2 --stage-order stage-major "
                    "--repeats 1 --threads 1 --hardware " + profile("fast", 1e12) + " --json-out " + path("b.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto rows = json_lines(path("b.jsonl"));
  ASSERT_EQ(rows.size(), 3u) << r.output;
  for (const Json& row : rows) {
    ASSERT_TRUE(row.contains("predicted_ms")) << row.dump();
    EXPECT_GT(row["predicted_ms"].get<double>(), 0.0) << row.dump();
  }
  EXPECT_EQ(rows[2]["schedule"], "auto");
  EXPECT_EQ(rows[2]["planned_schedule"], "sequential") << "one rank moves nothing: " << rows[2].dump();
  EXPECT_NE(r.output.find("auto:sequential"), std::string::npos) << r.output;
}

TEST_F(Plan, TrainPlansItsBlockAtStartUp) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "In the beginning God created the heaven and the earth. ";
  std::ofstream(path("corpus.txt")) << text;
  const std::string tiny =
      "train --num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 --seq-length 16 "
      "--moe-num-experts 2 --micro-batch-size 2 --eval-iters 1 --threads 1 --train-iters 2 --data-path " +
      path("corpus.txt");
  RunResult r = run(tiny + " --schedule ampipe --hardware " + profile("slow", 12.5e6));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("planner: sequential"), std::string::npos) << "one rank has no all-to-all:\n" << r.output;
  r = run(tiny + " --schedule ampipe --pipe-degree two");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--pipe-degree 'two'"), std::string::npos) << r.output;
}

}  // namespace
