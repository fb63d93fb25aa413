// The `ampipe` binary as a user meets it: bad input is refused with a clear message and a non-zero
// exit; train / eval / sample work end to end on a tiny model.
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

namespace {

namespace fs = std::filesystem;

using ampipe::testing::RunResult;

RunResult run(const std::string& args) { return ampipe::testing::run_ampipe(args); }

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("ampipe_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    for (int i = 0; i < 300; ++i) text += "And God said, Let there be light: and there was light. ";
    std::ofstream(path("corpus.txt")) << text;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // A tiny model: flags shared by the tests that train.
  std::string tiny() const {
    return "--num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 --seq-length 16 "
           "--moe-num-experts 2 --micro-batch-size 2 --eval-iters 1 --lr-warmup-iters 0 --threads 1 --data-path " +
           path("corpus.txt");
  }
  void expect_refused(const std::string& args, const std::string& message_part) {
    RunResult r = run(args);
    EXPECT_NE(r.status, 0) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(message_part), std::string::npos) << "expected '" << message_part << "' in:\n" << r.output;
  }
  fs::path dir_;
};

TEST_F(Cli, MissingDataFileIsRefused) {
  expect_refused("train " + tiny() + " --data-path " + path("nope.txt"), "cannot open data file");
}

TEST_F(Cli, EmptyDataFileIsRefused) {
  std::ofstream(path("empty.txt")).close();
  expect_refused("train " + tiny() + " --data-path " + path("empty.txt"), "is empty");
}

TEST_F(Cli, DataShorterThanOneWindowIsRefused) {
  std::ofstream(path("short.txt")) << "In the beginning";
  expect_refused("train " + tiny() + " --data-path " + path("short.txt"), "too short for --seq-length 16");
  std::ofstream(path("short2.txt")) << "In the beginning";
  RunResult r = run("train " + tiny() + " --train-iters 1 --save " + path("c"));
  ASSERT_EQ(r.status, 0) << r.output;
  expect_refused("eval --load " + path("c") + " --data-path " + path("short2.txt") + " --seq-length 16",
                 "shorter than one window");
}

TEST_F(Cli, HiddenSizeNotDivisibleByHeadsIsRefused) {
  expect_refused("train " + tiny() + " --hidden-size 18 --num-attention-heads 4",
                 "--hidden-size 18 is not divisible by --num-attention-heads 4");
}

TEST_F(Cli, TopKAboveExpertsIsRefused) {
  expect_refused("train " + tiny() + " --moe-num-experts 2 --moe-top-k 3", "--moe-top-k 3 is not in [1, --moe-num-experts 2]");
}

TEST_F(Cli, UnknownFlagIsRefused) { expect_refused("train --hidden-sise 64", "hidden-sise"); }

TEST_F(Cli, BadNumbersAreRefused) {
  expect_refused("train " + tiny() + " --lr -1", "--lr must be positive");
  expect_refused("train " + tiny() + " --threads 0", "--threads must be at least 1");
  expect_refused("train " + tiny() + " --moe-capacity-factor -0.5", "--moe-capacity-factor must be >= 0");
}

TEST_F(Cli, CorruptAndTruncatedCheckpointsAreRefused) {
  RunResult r = run("train " + tiny() + " --train-iters 2 --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string model = path("ckpt") + "/iter_0000002/model.safetensors";
  const auto size = fs::file_size(model);
  fs::copy(path("ckpt"), path("trunc"), fs::copy_options::recursive);
  fs::resize_file(path("trunc") + "/iter_0000002/model.safetensors", size - 100);
  expect_refused("eval --load " + path("trunc") + " --data-path " + path("corpus.txt"), "model.safetensors");
  expect_refused("train " + tiny() + " --train-iters 4 --load " + path("trunc"), "model.safetensors");

  fs::copy(path("ckpt"), path("corrupt"), fs::copy_options::recursive);
  {
    std::fstream f(path("corrupt") + "/iter_0000002/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(12);
    f.write("\x01\x02\x03\x04", 4);  // inside the JSON header
  }
  expect_refused("eval --load " + path("corrupt") + " --data-path " + path("corpus.txt"), "model.safetensors");
  expect_refused("sample --load " + path("missing_dir"), "no checkpoint at");
}

TEST_F(Cli, CheckpointWhoseConfigDiffersFromTheFlagsIsRefused) {
  RunResult r = run("train " + tiny() + " --train-iters 1 --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  expect_refused("train " + tiny() + " --train-iters 2 --hidden-size 32 --load " + path("ckpt"),
                 "hidden_size: 16 vs 32");
  // Flags left out take the checkpoint's values.
  r = run("train --threads 1 --eval-iters 1 --micro-batch-size 2 --train-iters 2 --data-path " + path("corpus.txt") +
          " --load " + path("ckpt"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
}

TEST_F(Cli, TrainEvalSampleEndToEnd) {
  RunResult r = run("train " + tiny() + " --train-iters 40 --lr 1e-2 --log-interval 5 --eval-interval 10 --save " +
                    path("ckpt") + " --metrics-file " + path("m.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("iter     40/40"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tok/s"), std::string::npos);
  EXPECT_NE(r.output.find("ETA"), std::string::npos);
  EXPECT_TRUE(fs::exists(path("ckpt") + "/iter_0000040/model.safetensors"));
  EXPECT_TRUE(fs::exists(path("ckpt") + "/iter_0000040/optimizer.safetensors"));

  r = run("eval --load " + path("ckpt") + " --data-path " + path("corpus.txt"));
  ASSERT_EQ(r.status, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output);
  const auto bytes = fs::file_size(path("corpus.txt"));
  EXPECT_EQ(j["tokens"].get<int64_t>(), static_cast<int64_t>(bytes / 17 * 16));
  EXPECT_GT(j["loss"].get<double>(), 0.0);
  EXPECT_LT(j["loss"].get<double>(), 4.5);

  r = run("sample --load " + path("ckpt") + " --prompt 'And God' --tokens 12 --temperature 0 --threads 1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("And God", 0), 0u) << r.output;
  EXPECT_EQ(r.output.size(), std::string("And God").size() + 12 + 1) << r.output;
}

TEST_F(Cli, HelpExplainsEveryTrainFlag) {
  RunResult r = run("train --help");
  ASSERT_EQ(r.status, 0);
  for (const char* flag : {"--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length",
                           "--micro-batch-size", "--moe-num-experts", "--moe-top-k", "--moe-capacity-factor",
                           "--moe-aux-loss-coeff", "--lr", "--min-lr", "--lr-warmup-iters", "--weight-decay",
                           "--clip-grad", "--train-iters", "--eval-interval", "--eval-iters", "--log-interval",
                           "--save", "--save-interval", "--load", "--seed", "--data-path", "--threads",
                           "--metrics-file"})
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
}

}  // namespace
