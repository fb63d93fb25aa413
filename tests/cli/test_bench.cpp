// `ampipe bench` as a user meets it: a tiny grid finishes with a table row and a JSON object per
// case, sequential rows have speedup 1, the trace holds compute and comm slices, a step of several
// blocks runs in both pipeline scopes, a step of several micro-batches runs unpaired, paired and
// with delayed weight gradients, and bad values are refused naming the flag.
#include <gtest/gtest.h>

#include "cli_util.h"
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
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
    EXPECT_EQ(j["expert_model_parallel_size"], 1);
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
    // The per-pass bound (forward and backward each overlapped, one after the other) is the
    // stricter one: at least the step's bound, and no more than the wall time either.
    EXPECT_GE(j["pass_overlap_bound_ms"].get<double>(), j["overlap_bound_ms"].get<double>() * (1 - 1e-9)) << j.dump();
    EXPECT_LE(j["pass_efficiency"].get<double>(), 1.05) << j.dump();
    EXPECT_GE(j["pass_efficiency"].get<double>(), eff * (1 - 1e-9)) << j.dump();
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

namespace {

std::vector<nlohmann::json> read_rows(const std::string& file) {
  std::ifstream in(file);
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace

TEST_F(Bench, SeveralBlocksRunAsOneStepInBothScopes) {
  RunResult r = run("bench --seq-length 16 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 "
                    "--moe-num-experts 2 --schedule sequential,ampipe --pipe-degree 2 --stage-order stage-major "
                    "--num-layers 2 --pipeline-scope block,model --repeats 1 --warmup 0 --threads 1 --json-out " +
                    path("l.jsonl") + " --trace " + path("l.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::vector<nlohmann::json> rows = read_rows(path("l.jsonl"));
  // sequential once (one chunk: block scope only), ampipe P = 2 in each scope.
  ASSERT_EQ(rows.size(), 3u) << r.output;
  std::set<std::string> scopes;
  for (const nlohmann::json& j : rows) {
    ASSERT_TRUE(j.contains("num_layers") && j.contains("pipeline_scope")) << j.dump();
    EXPECT_EQ(j["num_layers"], 2) << j.dump();
    scopes.insert(j["pipeline_scope"].get<std::string>());
    EXPECT_GT(j["time_ms"].get<double>(), 0.0) << j.dump();
    // The bound is over the whole step: each stream's slices of both blocks fit in the wall time.
    EXPECT_GT(j["overlap_bound_ms"].get<double>(), 0.0) << j.dump();
    EXPECT_LE(j["efficiency"].get<double>(), 1.05) << j.dump();
    const nlohmann::json& stages = j["stage_ms"];
    if (j["pipeline_scope"] == "model") {
      EXPECT_EQ(j["schedule"], "ampipe") << j.dump();
      EXPECT_GT(j["speedup_vs_block_scope"].get<double>(), 0.0) << j.dump();
      EXPECT_TRUE(stages.contains("ln1+qkv chunk") && stages.contains("qkv+ln1 bwd chunk")) << j.dump();
      EXPECT_FALSE(stages.contains("ln1+qkv")) << j.dump();
      EXPECT_GT(stages["ln1+qkv chunk"].get<double>(), 0.0) << j.dump();
    } else {
      EXPECT_TRUE(j["speedup_vs_block_scope"].is_null()) << j.dump();
      EXPECT_TRUE(stages.contains("ln1+qkv") && !stages.contains("ln1+qkv chunk")) << j.dump();
      EXPECT_GT(stages["qkv+ln1 bwd"].get<double>(), 0.0) << j.dump();
    }
    EXPECT_FALSE(stages.contains("grad reduce")) << j.dump();
  }
  EXPECT_EQ(scopes, (std::set<std::string>{"block", "model"}));
  for (const char* col : {"scope", "vs block", " L "})
    EXPECT_NE(r.output.find(col), std::string::npos) << r.output;

  // The trace: every stage slice names its block, and both blocks are there in each case.
  std::ifstream in(path("l.json"));
  ASSERT_TRUE(in.good());
  const nlohmann::json trace = nlohmann::json::parse(in);
  int block0 = 0, block1 = 0, unlabelled = 0, wavefront = 0;
  for (const nlohmann::json& e : trace["traceEvents"]) {
    if (e.value("ph", "") != "X") continue;
    const std::string name = e["name"].get<std::string>();
    if (name.find("N=16") != std::string::npos) continue;  // the case slice
    const bool l0 = name.size() > 3 && name.compare(name.size() - 3, 3, " L0") == 0;
    const bool l1 = name.size() > 3 && name.compare(name.size() - 3, 3, " L1") == 0;
    block0 += l0;
    block1 += l1;
    unlabelled += !l0 && !l1;
    wavefront += name.rfind("ln1+qkv chunk", 0) == 0;
  }
  EXPECT_GT(block0, 0) << trace.dump().substr(0, 2000);
  EXPECT_GT(block1, 0) << trace.dump().substr(0, 2000);
  EXPECT_EQ(unlabelled, 0) << trace.dump().substr(0, 2000);
  EXPECT_EQ(wavefront, 2 * 2) << "model scope: LN1 + QKV per chunk (2) and block (2)";
}

TEST_F(Bench, ModelScopeIsTheDefaultSecondScopeOnlyWhereThereAreSeveralBlocksAndChunks) {
  RunResult r = run(tiny() + " --seq-length 32 --schedule sequential,moe-pipe,auto --pipe-degree 1,2 "
                    "--stage-order stage-major --num-layers 1,2 --hardware h100-8gpu-400gbit --predict-only "
                    "--json-out " + path("d.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<nlohmann::json> rows = read_rows(path("d.jsonl"));
  // `auto` once per L: the planner's choice of schedule, order and scope for that many blocks.
  int autos[3] = {0, 0, 0};
  std::erase_if(rows, [&](const nlohmann::json& j) {
    if (j["schedule"] != "auto") return false;
    ++autos[j["num_layers"].get<int>()];
    EXPECT_TRUE(j["pipeline_scope"] == "block" || j["pipeline_scope"] == "model") << j.dump();
    return true;
  });
  EXPECT_EQ(autos[1], 1) << r.output;
  EXPECT_EQ(autos[2], 1) << r.output;
  // L = 1: sequential, moe-pipe P = 1 and 2 (block); L = 2: the same, and moe-pipe P = 2 in model
  // scope too (one chunk, P = 1, is the same schedule in both scopes).
  ASSERT_EQ(rows.size(), 3u + 4u) << r.output;
  std::map<std::string, double> predicted;  // "<schedule> P<p> <scope> L<l>" -> ms
  for (const nlohmann::json& j : rows)
    predicted[j["schedule"].get<std::string>() + " P" + std::to_string(j["pipe_degree"].get<int>()) + " " +
              j["pipeline_scope"].get<std::string>() + " L" + std::to_string(j["num_layers"].get<int>())] =
        j["predicted_ms"].get<double>();
  ASSERT_EQ(predicted.size(), 7u) << r.output;
  EXPECT_EQ(predicted.count("moe-pipe P1 model L2"), 0u) << r.output;
  EXPECT_EQ(predicted.count("moe-pipe P2 model L1"), 0u) << r.output;
  EXPECT_EQ(predicted.count("sequential P1 model L2"), 0u) << r.output;
  // Block scope drains between blocks: two blocks take about twice one block's time.
  EXPECT_NEAR(predicted["sequential P1 block L2"] / predicted["sequential P1 block L1"], 2.0, 0.05) << r.output;
  EXPECT_NEAR(predicted["moe-pipe P2 block L2"] / predicted["moe-pipe P2 block L1"], 2.0, 0.2) << r.output;
  EXPECT_GT(predicted["moe-pipe P2 model L2"], 0.0) << r.output;
}

TEST_F(Bench, BadValuesAreRefusedNamingTheFlag) {
  expect_refused(tiny() + " --pipeline-scope sideways", "--pipeline-scope 'sideways': 'sideways' is not one of: block, model");
  expect_refused(tiny() + " --pipeline-scope block,", "--pipeline-scope");
  expect_refused(tiny() + " --num-layers 0", "--num-layers");
  expect_refused(tiny() + " --num-layers 2,x", "--num-layers");
  expect_refused(tiny() + " --pipe-degree 0", "--pipe-degree");
  expect_refused(tiny() + " --schedule foo", "--schedule");
  expect_refused(tiny() + " --seq-length x", "--seq-length");
  expect_refused(tiny() + " --stage-order sideways", "--stage-order");
  expect_refused(tiny() + " --repeats 0", "--repeats");
  expect_refused(tiny() + " --hidden-size 18 --num-attention-heads 4", "--hidden-size 18");
  expect_refused(tiny() + " --predict-only", "--hardware");
}

TEST_F(Bench, MicroBatchFlagsAreRefusedNamingWhatTheyNeed) {
  expect_refused(tiny() + " --micro-batches 0", "--micro-batches must be at least 1, got 0");
  // Pairing needs a next micro-batch.
  expect_refused(
      tiny() + " --overlap-moe-expert-parallel-comm true",
      "--overlap-moe-expert-parallel-comm 'true': pairing merges one micro-batch's backward with the "
      "next one's forward, so it needs --micro-batches 2 or more, got 1");
  expect_refused(tiny() + " --overlap-moe-expert-parallel-comm false,true",
                 "needs --micro-batches 2 or more");
  // Delayed weight gradients need pairing somewhere in the grid (none would run otherwise).
  expect_refused(
      tiny() + " --micro-batches 2 --delay-wgrad-compute true",
      "--delay-wgrad-compute 'true': delayed weight gradients need paired micro-batches (true in "
      "--overlap-moe-expert-parallel-comm, as in Megatron-LM), got --overlap-moe-expert-parallel-comm "
      "'false'");
  expect_refused(tiny() +
                     " --micro-batches 2 --overlap-moe-expert-parallel-comm false --delay-wgrad-compute "
                     "false,true",
                 "--delay-wgrad-compute 'false,true'");
  // Only the two words.
  expect_refused(tiny() + " --micro-batches 2 --overlap-moe-expert-parallel-comm yes",
                 "--overlap-moe-expert-parallel-comm 'yes': 'yes' is not one of: false, true");
  expect_refused(
      tiny() + " --micro-batches 2 --overlap-moe-expert-parallel-comm true --delay-wgrad-compute 1",
      "--delay-wgrad-compute '1': '1' is not one of: false, true");
  expect_refused(tiny() + " --micro-batches 2 --overlap-moe-expert-parallel-comm true,",
                 "--overlap-moe-expert-parallel-comm 'true,'");
}

// Two micro-batches unpaired, paired, and paired with delayed weight gradients: three cases (delay
// without pairing is no case), each with its settings, the paired ones with their speedup over the
// unpaired twin and no per-pass bound, "experts wgrad" only where delayed; the merge is by a
// profile (a quick calibration here, there being no --hardware), so every case is predicted too.
TEST_F(Bench, PairedAndDelayedMicroBatchesAreCasesOfTheirOwn) {
  RunResult r =
      run("bench --seq-length 16 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 "
          "--moe-num-experts 2 --schedule ampipe --pipe-degree 2 --stage-order interleaved "
          "--micro-batches 2 --overlap-moe-expert-parallel-comm false,true --delay-wgrad-compute "
          "false,true --repeats 1 --warmup 0 --threads 1 --json-out " +
          path("m.jsonl") + " --trace " + path("m.json"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::vector<nlohmann::json> rows = read_rows(path("m.jsonl"));
  ASSERT_EQ(rows.size(), 3u) << r.output;
  std::set<std::pair<bool, bool>> settings;
  for (const nlohmann::json& j : rows) {
    const bool paired = j["overlap_moe_expert_parallel_comm"].get<bool>();
    const bool delayed = j["delay_wgrad_compute"].get<bool>();
    settings.insert({paired, delayed});
    EXPECT_EQ(j["micro_batches"], 2) << j.dump();
    EXPECT_EQ(j["schedule"], "ampipe") << j.dump();
    EXPECT_GT(j["time_ms"].get<double>(), 0.0) << j.dump();
    EXPECT_GT(j["step_bound_ms"].get<double>(), 0.0) << j.dump();
    EXPECT_EQ(j["step_bound_ms"], j["overlap_bound_ms"]) << j.dump();
    EXPECT_LE(j["efficiency"].get<double>(), 1.05) << j.dump();
    EXPECT_NEAR(j["efficiency"].get<double>(), j["step_bound_ms"].get<double>() / j["time_ms"].get<double>(),
                1e-6)
        << j.dump();
    EXPECT_GT(j["predicted_ms"].get<double>(), 0.0) << j.dump();
    EXPECT_TRUE(j.contains("profile")) << j.dump();
    const nlohmann::json& stages = j["stage_ms"];
    EXPECT_EQ(stages.contains("experts wgrad"), delayed) << j.dump();
    EXPECT_EQ(j["predicted_stage_ms"].contains("experts wgrad"), delayed) << j.dump();
    if (delayed) {
      EXPECT_GT(stages["experts wgrad"].get<double>(), 0.0) << j.dump();
    }
    EXPECT_GT(stages["experts bwd"].get<double>(), 0.0) << j.dump();
    if (paired) {
      EXPECT_GT(j["speedup_vs_unpaired"].get<double>(), 0.0) << j.dump();
      EXPECT_TRUE(j["pass_overlap_bound_ms"].is_null() && j["pass_efficiency"].is_null()) << j.dump();
    } else {
      EXPECT_TRUE(j["speedup_vs_unpaired"].is_null()) << j.dump();
      // Per pass (four: F0 B0 F1 B1), each overlapped in itself: at least the step's bound.
      EXPECT_GE(j["pass_overlap_bound_ms"].get<double>(), j["step_bound_ms"].get<double>() * (1 - 1e-9))
          << j.dump();
    }
  }
  EXPECT_EQ(settings, (std::set<std::pair<bool, bool>>{{false, false}, {true, false}, {true, true}}))
      << r.output;
  for (const char* col : {" M ", "paired", "dwgrad", "vs unpaired", "pass eff"})
    EXPECT_NE(r.output.find(col), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("paired micro-batches merged by the cost model with profile"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("M=2 paired delay-wgrad N=16"), std::string::npos) << "progress line:\n"
                                                                             << r.output;

  // The trace: the delayed case's weight-gradient tasks, and one case slice per case.
  std::ifstream in(path("m.json"));
  ASSERT_TRUE(in.good());
  const nlohmann::json trace = nlohmann::json::parse(in);
  int wgrad = 0, case_slices = 0;
  for (const nlohmann::json& e : trace["traceEvents"]) {
    if (e.value("ph", "") != "X") continue;
    const std::string name = e["name"].get<std::string>();
    wgrad += name.rfind("experts wgrad c", 0) == 0;
    case_slices += name.find("N=16") != std::string::npos;
  }
  EXPECT_EQ(wgrad, 2 * 2) << "2 MoE chunks x 2 micro-batches";
  EXPECT_EQ(case_slices, 3);
}

// A step of M micro-batches is priced by predict_step: unpaired, M = 2 is twice M = 1 (the host
// waits between lists either way), as are the stages' prices; no pairing columns where no case pairs.
TEST_F(Bench, PredictionsAndStagesAreOfTheWholeStep) {
  const std::string args =
      "bench --seq-length 64 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 "
      "--moe-num-experts 2 --schedule ampipe --pipe-degree 2 --stage-order stage-major "
      "--hardware h100-8gpu-400gbit --predict-only --json-out ";
  RunResult one = run(args + path("one.jsonl"));
  RunResult two = run(args + path("two.jsonl") + " --micro-batches 2");
  ASSERT_EQ(one.status, 0) << one.output;
  ASSERT_EQ(two.status, 0) << two.output;
  const std::vector<nlohmann::json> a = read_rows(path("one.jsonl")), b = read_rows(path("two.jsonl"));
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0]["micro_batches"], 1);
  EXPECT_EQ(b[0]["micro_batches"], 2);
  EXPECT_FALSE(b[0]["overlap_moe_expert_parallel_comm"].get<bool>());
  EXPECT_NEAR(b[0]["predicted_ms"].get<double>(), 2 * a[0]["predicted_ms"].get<double>(),
              1e-9 * b[0]["predicted_ms"].get<double>());
  for (const auto& [name, ms] : a[0]["predicted_stage_ms"].items())
    EXPECT_NEAR(b[0]["predicted_stage_ms"][name].get<double>(), 2 * ms.get<double>(),
                1e-9 + 1e-9 * ms.get<double>())
        << name;
  EXPECT_EQ(one.output.find(" M "), std::string::npos) << one.output;
  EXPECT_NE(two.output.find(" M "), std::string::npos) << two.output;
  EXPECT_EQ(two.output.find("paired"), std::string::npos) << two.output;
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
