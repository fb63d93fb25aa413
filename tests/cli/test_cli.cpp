// The `ampipe` binary as a user meets it: bad input is refused with a clear message and a non-zero
// exit; train / eval / sample work end to end on a tiny model.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_util.h"

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
    // Lines, for SentencePiece (which skips lines longer than 4192 bytes).
    std::ofstream lines(path("lines.txt"));
    for (int i = 0; i < 200; ++i)
      lines << "Line " << i << ": And God said, Let there be light: and there was light.\n";
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

// --bf16 end to end on the command line: a bf16 run's checkpoint exports in bf16 by default (and in
// float32 when asked), and eval and sample run it in either precision.
TEST_F(Cli, Bf16TrainExportEvalAndSample) {
  RunResult r = run("train " + tiny() + " --model-family mixtral --train-iters 2 --bf16 --save " + path("bf16"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("precision: bf16"), std::string::npos) << r.output;
  r = run("export --load " + path("bf16") + " --save " + path("hf16"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("bf16 tensors"), std::string::npos) << r.output;
  std::ifstream config(path("hf16") + "/config.json");
  const std::string json((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>());
  EXPECT_NE(json.find("\"dtype\": \"bfloat16\""), std::string::npos) << json;
  r = run("export --load " + path("bf16") + " --save " + path("hf32") + " --dtype float32");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("float32 tensors"), std::string::npos) << r.output;
  for (const std::string& how : {std::string(""), std::string(" --bf16")}) {
    r = run("eval --load " + path("bf16") + " --data-path " + path("corpus.txt") + " --threads 1" + how);
    EXPECT_EQ(r.status, 0) << how << "\n" << r.output;
    EXPECT_NE(r.output.find("\"loss\""), std::string::npos) << r.output;
    r = run("sample --load " + path("hf16") + " --tokens 4 --threads 1" + how);
    EXPECT_EQ(r.status, 0) << how << "\n" << r.output;
  }
  expect_refused("export --load " + path("bf16") + " --save " + path("hf8") + " --dtype fp8", "--dtype");
}

// Recomputation's flags: Megatron's pairing (granularity needs a method), nothing silently ignored,
// selective named as not built, the layer count checked; a valid combination trains.
TEST_F(Cli, RecomputeFlagsAreCheckedByName) {
  expect_refused("train " + tiny() + " --train-iters 1 --recompute-granularity full",
                 "--recompute-granularity full needs --recompute-method uniform or block");
  expect_refused("train " + tiny() + " --train-iters 1 --recompute-method uniform",
                 "--recompute-method uniform has no effect without --recompute-granularity full");
  expect_refused("train " + tiny() + " --train-iters 1 --recompute-num-layers 1",
                 "--recompute-num-layers 1 has no effect without --recompute-granularity full");
  expect_refused("train " + tiny() + " --train-iters 1 --recompute-granularity selective --recompute-method uniform",
                 "--recompute-method uniform has no effect without --recompute-granularity full");
  expect_refused("train " + tiny() + " --train-iters 1 --recompute-granularity selective --recompute-num-layers 1",
                 "--recompute-num-layers 1 has no effect without --recompute-granularity full");
  expect_refused("train " + tiny() + " --train-iters 1 --recompute-granularity full --recompute-method block "
                 "--recompute-num-layers 2",
                 "--recompute-num-layers 2 is not in [1, 1]");
  RunResult r = run("train " + tiny() + " --train-iters 1 --recompute-granularity full --recompute-method uniform");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("recompute: full, method uniform"), std::string::npos) << r.output;
  r = run("train " + tiny() + " --train-iters 1 --recompute-granularity selective");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("recompute: selective"), std::string::npos) << r.output;
}

// The chunked schedules' flags with a schedule that has no such chunks would do nothing: refused.
TEST_F(Cli, ChunkFlagsWithoutChunksAreRefused) {
  expect_refused("train " + tiny() + " --train-iters 1 --moe-pipe-degree 2",
                 "--moe-pipe-degree has no effect with --schedule sequential");
  expect_refused("train " + tiny() + " --train-iters 1 --schedule moe-pipe --chunk-policy balanced",
                 "--chunk-policy has no effect with --schedule moe-pipe");
  expect_refused("train " + tiny() + " --train-iters 1 --chunk-boundaries 0,8,16", "--chunk-boundaries has no effect");
  expect_refused("train " + tiny() + " --train-iters 1 --stage-order interleaved",
                 "--stage-order has no effect with --schedule sequential");
  RunResult r = run("train " + tiny() + " --train-iters 1 --schedule ampipe --pipe-degree 2 --chunk-policy balanced "
                    "--moe-pipe-degree 2 --stage-order interleaved");
  EXPECT_EQ(r.status, 0) << r.output;
}

// A flag that would do nothing is refused, saying what it needs: the planner's profile without the
// planner (a bad path would otherwise go unnoticed too).
TEST_F(Cli, HardwareProfileWithoutThePlannerIsRefused) {
  // The default schedule is sequential: nothing to plan.
  expect_refused("train " + tiny() + " --train-iters 1 --hardware " + path("no_such_profile.json"),
                 "has no effect with --schedule sequential");
  expect_refused("train " + tiny() + " --train-iters 1 --schedule ampipe --pipe-degree 2 --hardware cpu-2rank-200mbit",
                 "has no effect with --pipe-degree 2; give --pipe-degree auto");
  expect_refused("train " + tiny() + " --train-iters 1 --schedule ampipe --chunk-boundaries 0,8,16 --hardware "
                 "cpu-2rank-200mbit",
                 "has no effect with --chunk-boundaries");
  // With the planner a missing profile is an error naming it.
  expect_refused("train " + tiny() + " --train-iters 1 --schedule ampipe --hardware " + path("no_such_profile.json"),
                 "no_such_profile.json");
}

// --overlap-moe-expert-parallel-comm alone is "on", =auto asks the planner; --hardware is read by
// the paired step's merge (so accepted with the sequential schedule); the refusals name the flags.
TEST_F(Cli, PairingFlags) {
  RunResult r =
      run("train " + tiny() +
          " --train-iters 1 --global-batch-size 4 --overlap-moe-expert-parallel-comm --delay-wgrad-compute "
          "--hardware cpu-2rank-200mbit");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("micro-batches: paired"), std::string::npos) << r.output;
  r = run("train " + tiny() +
          " --train-iters 1 --global-batch-size 4 --overlap-moe-expert-parallel-comm=auto "
          "--schedule ampipe --pipe-degree 2 --hardware cpu-2rank-200mbit");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("planner: micro-batches"), std::string::npos) << r.output;
  expect_refused("train " + tiny() + " --train-iters 1 --delay-wgrad-compute",
                 "--delay-wgrad-compute delays the experts' weight gradients of a paired step");
  expect_refused(
      "train " + tiny() + " --train-iters 1 --overlap-moe-expert-parallel-comm --hardware cpu-2rank-200mbit",
      "give --global-batch-size of at least 4");
  expect_refused("train " + tiny() + " --train-iters 1 --overlap-moe-expert-parallel-comm=always",
                 "--overlap-moe-expert-parallel-comm 'always' is not one of");
  expect_refused("train " + tiny() +
                     " --train-iters 1 --global-batch-size 4 --overlap-moe-expert-parallel-comm "
                     "--hardware " +
                     path("no_such_profile.json"),
                 "no_such_profile.json");
}

TEST_F(Cli, DistributedBackendIsCheckedByName) {
  expect_refused("train " + tiny() + " --distributed-backend gloo", "--distributed-backend");
  expect_refused("bench --distributed-backend nccl --seq-length 16 --hidden-size 16 --num-attention-heads 2",
                 "--distributed-backend nccl moves GPU buffers: it needs --device cuda");
  expect_refused("train " + tiny() + " --train-iters 1 --distributed-backend nccl",
                 "--distributed-backend nccl moves GPU buffers: it needs --device cuda");
  // mpi on the CPU is what the CPU uses anyway: accepted.
  RunResult r = run("train " + tiny() + " --train-iters 1 --distributed-backend mpi");
  EXPECT_EQ(r.status, 0) << r.output;
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
  r = run(
      "train --threads 1 --eval-iters 1 --micro-batch-size 2 --train-iters 2 --override-opt_param-scheduler "
      "--data-path " +
      path("corpus.txt") + " --load " + path("ckpt"));
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

// --- Output paths (issue 28, item 2): created or checked before any work, a failure naming the path.

TEST_F(Cli, OutputFilesInMissingDirectoriesAreWrittenThere) {
  RunResult r = run("train " + tiny() + " --train-iters 4 --log-interval 1 --trace " +
                    path("new1/deeper/t.json") + " --metrics-file " + path("new2/m.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(path("new1/deeper/t.json")));
  EXPECT_TRUE(fs::exists(path("new2/m.jsonl")));
  r = run("preprocess --input " + path("corpus.txt") + " --output-prefix " + path("new3/kjv") +
          " --workers 1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(path("new3/kjv_text_document.idx")));
  r = run("tokenizer train --input " + path("lines.txt") + " --vocab-size 300 --threads 1 --output-prefix " +
          path("new4/bpe"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(path("new4/bpe.model")));
}

TEST_F(Cli, UnwritableOutputPathIsRefusedBeforeAnyWorkNamingIt) {
  // A regular file where a directory must be: no directory can be made there, even by root.
  const std::string blocked = path("corpus.txt") + "/sub/";
  RunResult r = run("train " + tiny() + " --train-iters 2 --log-interval 1 --trace " + blocked + "t.json");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--trace '" + blocked + "t.json'"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("iter "), std::string::npos) << "refused only after training:\n" << r.output;
  r = run("train " + tiny() + " --train-iters 2 --log-interval 1 --metrics-file " + blocked + "m.jsonl");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--metrics-file '" + blocked + "m.jsonl'"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("iter "), std::string::npos) << r.output;
  r = run("tokenizer train --input " + path("lines.txt") + " --vocab-size 300 --output-prefix " + blocked +
          "bpe");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--output-prefix '" + blocked + "bpe.model'"), std::string::npos) << r.output;
  r = run("preprocess --input " + path("corpus.txt") + " --output-prefix " + blocked + "kjv");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--output-prefix '" + blocked + "kjv_text_document.bin'"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("preprocess: "), std::string::npos) << "refused only after the work:\n" << r.output;
  r = run("bench --repeats 1 --warmup 0 --threads 1 --json-out " + blocked + "b.jsonl");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--json-out '" + blocked + "b.jsonl'"), std::string::npos) << r.output;
}

// --- Resume keeps the schedule (item 3).

// A model and schedule without --lr-warmup-iters (tiny() gives it).
std::string scheduled_flags(const std::string& corpus) {
  return "--num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 --seq-length 16 "
         "--moe-num-experts 2 --micro-batch-size 2 --eval-iters 1 --threads 1 --log-interval 1 --data-path " +
         corpus;
}

std::vector<double> learning_rates(const std::string& metrics_file) {
  std::vector<double> lrs;
  std::ifstream in(metrics_file);
  for (std::string line; std::getline(in, line);)
    lrs.push_back(nlohmann::json::parse(line)["lr"].get<double>());
  return lrs;
}

TEST_F(Cli, ResumeWithScheduleFlagsLeftOutContinuesTheCheckpointsSchedule) {
  const std::string flags = scheduled_flags(path("corpus.txt"));
  RunResult r =
      run("train " + flags + " --lr 2e-3 --min-lr 1e-4 --lr-warmup-iters 4 --train-iters 8 --metrics-file " +
          path("full.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("train " + flags +
          " --lr 2e-3 --min-lr 1e-4 --lr-warmup-iters 4 --train-iters 8 --exit-interval 3 --save " +
          path("ckpt") + " --metrics-file " + path("resumed.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  // Resumed with none of the schedule flags: the checkpoint's lr, min-lr, warm-up and train-iters.
  r = run("train " + flags + " --load " + path("ckpt") + " --metrics-file " + path("resumed.jsonl"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("iter      8/8"), std::string::npos) << r.output;
  const std::vector<double> full = learning_rates(path("full.jsonl")),
                            resumed = learning_rates(path("resumed.jsonl"));
  ASSERT_EQ(full.size(), 8u);
  EXPECT_EQ(resumed, full) << "the resumed run's learning rates differ from the uninterrupted run's";
}

TEST_F(Cli, ResumeWithAScheduleFlagThatDiffersIsRefusedUnlessOverridden) {
  const std::string flags = scheduled_flags(path("corpus.txt"));
  RunResult r =
      run("train " + flags + " --lr-warmup-iters 4 --train-iters 6 --exit-interval 3 --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  expect_refused("train " + flags + " --lr-warmup-iters 0 --load " + path("ckpt"),
                 "--lr-warmup-iters 0 (checkpoint 4)");
  expect_refused("train " + flags + " --micro-batch-size 4 --load " + path("ckpt"),
                 "--micro-batch-size 4 x 1 rank(s) (checkpoint global batch 2)");
  expect_refused("train " + flags +
                     " --override-opt_param-scheduler --use-checkpoint-opt_param-scheduler --load " +
                     path("ckpt"),
                 "exclude each other");
  // Override: the flag's value wins, and says so.
  r = run("train " + flags + " --lr-warmup-iters 0 --override-opt_param-scheduler --metrics-file " +
          path("o.jsonl") + " --load " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("the flags' values replace the checkpoint's: --lr-warmup-iters 0 (checkpoint 4)"),
            std::string::npos)
      << r.output;
  // Use-checkpoint: the checkpoint's warm-up (4) whatever the flag says: iteration 4 at the peak lr.
  r = run("train " + flags +
          " --lr-warmup-iters 0 --lr 2e-3 --use-checkpoint-opt_param-scheduler --metrics-file " +
          path("c.jsonl") + " --load " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::vector<double> over = learning_rates(path("o.jsonl")), kept = learning_rates(path("c.jsonl"));
  ASSERT_EQ(over.size(), 3u);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_DOUBLE_EQ(kept[0], 3e-3)
      << "iteration 4 ends the checkpoint's warm-up at its --lr (the default 3e-3)";
  EXPECT_LT(over[0], 3e-3) << "without warm-up iteration 4 is already decaying";
}

TEST_F(Cli, ResumingAFinishedRunSaysThereIsNothingToDo) {
  RunResult r = run("train " + tiny() + " --train-iters 2 --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("train " + tiny() + " --train-iters 2 --save " + path("ckpt") + " --load " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("nothing to do: the checkpoint is at iteration 2 of 2"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("done:"), std::string::npos) << r.output;
}

// --- Refusals a new user meets (items 8, 10, 11, 13).

TEST_F(Cli, EvalSeqLengthBelowOneAndNegativeSeedsAreRefused) {
  RunResult r = run("train " + tiny() + " --train-iters 1 --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  expect_refused("eval --load " + path("ckpt") + " --data-path " + path("corpus.txt") + " --seq-length 0",
                 "--seq-length must be at least 1, got 0");
  expect_refused("eval --load " + path("ckpt") + " --data-path " + path("corpus.txt") + " --seq-length -4",
                 "--seq-length must be at least 1, got -4");
  expect_refused("sample --load " + path("ckpt") + " --seed -1", "must be an integer >= 0, got '-1'");
  expect_refused("train " + tiny() + " --seed -1", "must be an integer >= 0, got '-1'");
}

TEST_F(Cli, EveryRefusalExitsOneAndAnUnknownFlagOrCommandGetsASuggestion) {
  RunResult r = run("train --num-layer 2");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("unknown flag '--num-layer'; did you mean --num-layers?"), std::string::npos)
      << r.output;
  r = run("trian");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("unknown command 'trian'; did you mean train?"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("train, eval, sample"), std::string::npos) << r.output;
  r = run("");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("a command is needed: train, eval"), std::string::npos) << r.output;
  r = run("train --num-layers two");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--num-layers"), std::string::npos) << r.output;
  r = run("eval");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--load is required"), std::string::npos) << r.output;
  r = run("--version");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("ampipe ", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("CUDA backend"), std::string::npos) << r.output;
}

TEST_F(Cli, PathMistakesAreNamedOnceWithWhatToGiveInstead) {
  RunResult r = run("sample --load " + path("mixx"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("no checkpoint at '" + path("mixx") + "' (it does not exist)"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("no checkpoint", r.output.find("no checkpoint") + 1), std::string::npos)
      << "said twice:\n"
      << r.output;
  r = run("train " + tiny() + " --train-iters 1 --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string file = path("ckpt") + "/iter_0000001/model.safetensors";
  expect_refused("eval --load " + file + " --data-path " + path("corpus.txt"), "give the directory");
  expect_refused("train " + tiny() + " --train-iters 2 --load " + file, "give the directory");
  expect_refused("train " + tiny() + " --data-path " + dir_.string(),
                 "'" + dir_.string() + "' is a directory");
  expect_refused("eval --load " + path("ckpt") + " --data-path " + dir_.string(),
                 "'" + dir_.string() + "' is a directory");
}

TEST_F(Cli, TokenizerVocabularyLargerThanTheInputAllowsNamesTheLimit) {
  RunResult r =
      run("tokenizer train --input " + path("lines.txt") + " --threads 1 --output-prefix " + path("bpe"));
  EXPECT_EQ(r.status, 1) << r.output;
  const std::string most = "--vocab-size 32000 is more than the training input supports: at most ";
  const size_t at = r.output.find(most);
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string limit =
      r.output.substr(at + most.size(), r.output.find(' ', at + most.size()) - at - most.size());
  EXPECT_NE(r.output.find("give --vocab-size " + limit + " or less"), std::string::npos) << r.output;
  // The limit it names works.
  r = run("tokenizer train --input " + path("lines.txt") + " --threads 1 --vocab-size " + limit +
          " --output-prefix " + path("bpe"));
  EXPECT_EQ(r.status, 0) << r.output;
  // Too small a vocabulary names the least.
  expect_refused("tokenizer train --input " + path("lines.txt") +
                     " --threads 1 --vocab-size 40 --output-prefix " + path("bpe2"),
                 "--vocab-size 40 is below the ");
}

// --- eval on indexed datasets (item 7).

TEST_F(Cli, EvalOnIndexedDatasetsAndBlendsReadsTheHeldOutPartOfSplit) {
  RunResult r =
      run("preprocess --input " + path("lines.txt") + " --output-prefix " + path("lines") + " --workers 1");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string prefix = path("lines_text_document");
  r = run(
      "train --num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 --seq-length 16 "
      "--moe-num-experts 2 --micro-batch-size 2 --eval-iters 1 --lr-warmup-iters 0 --threads 1 --train-iters "
      "2 "
      "--split 80,10,10 --data-path " +
      prefix + " --save " + path("ckpt"));
  ASSERT_EQ(r.status, 0) << r.output;
  // 200 documents (one per line) at 80,10,10: validation is documents [160, 180), test [180, 200).
  auto part_targets = [](int first, int last) {
    int64_t bytes = 0;
    for (int i = first; i < last; ++i)
      bytes += static_cast<int64_t>(("Line " + std::to_string(i) +
                                     ": And God said, Let there be light: and there "
                                     "was light.")
                                        .size());
    return bytes / 17 * 16;  // whole windows of seq-length + 1 = 17, 16 targets each
  };
  r = run("eval --load " + path("ckpt") + " --threads 1 --split 80,10,10 --data-path " + prefix);
  ASSERT_EQ(r.status, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["part"], "validation");
  EXPECT_EQ(j["tokens"].get<int64_t>(), part_targets(160, 180)) << r.output;
  EXPECT_GT(j["loss"].get<double>(), 0.0);
  r = run("eval --load " + path("ckpt") + " --threads 1 --split 80,10,10 --eval-part test --data-path " +
          prefix);
  ASSERT_EQ(r.status, 0) << r.output;
  j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["part"], "test");
  EXPECT_EQ(j["tokens"].get<int64_t>(), part_targets(180, 200)) << r.output;
  // A blend: each dataset's part, the loss their weighted mean.
  r = run("eval --load " + path("ckpt") + " --threads 1 --split 80,10,10 --data-path 3 " + prefix + " 1 " +
          prefix);
  ASSERT_EQ(r.status, 0) << r.output;
  j = nlohmann::json::parse(r.output);
  ASSERT_EQ(j["datasets"].size(), 2u) << r.output;
  EXPECT_NEAR(j["loss"].get<double>(),
              0.75 * j["datasets"][0]["loss"].get<double>() + 0.25 * j["datasets"][1]["loss"].get<double>(),
              1e-12);
  expect_refused("eval --load " + path("ckpt") + " --split 100,0,0 --data-path " + prefix,
                 "validation part of --split holds no document");
  expect_refused("eval --load " + path("ckpt") + " --eval-part train --data-path " + prefix,
                 "--eval-part 'train' is not one of: validation, test");
}

// --- Help agrees with the docs (item 12).

TEST_F(Cli, HelpShowsEachFlagOnceWithDefaultsAsTheDocsWriteThem) {
  for (const char* command : {"train", "eval", "sample", "bench"}) {
    RunResult r = run(std::string(command) + " --help");
    ASSERT_EQ(r.status, 0) << command;
    size_t count = 0;
    for (size_t at = r.output.find("\n  --device "); at != std::string::npos;
         at = r.output.find("\n  --device ", at + 1))
      ++count;
    EXPECT_EQ(count, 1u) << command << " --help shows --device " << count << " times";
  }
  RunResult r = run("train --help");
  EXPECT_NE(r.output.find("--exit-on-save-failure BOOLEAN=true"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("indexed datasets"), std::string::npos);
  for (const char* flag :
       {"--exit-signal-handler", "--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"})
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
  r = run("eval --help");
  for (const char* flag : {"--split", "--eval-part", "indexed datasets"})
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag;
}

}  // namespace
