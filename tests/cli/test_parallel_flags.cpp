// The tensor-parallel flags on the command line (cli/parallel_flags.h): every model-running command
// takes them and explains them in --help; all run T > 1, ETP > 1 and --sequence-parallel (on one
// rank, T = 2 does not divide the world and is refused by the layout: train and bench here, eval and
// sample after reading their checkpoint; train refuses a --seq-length that T does not divide under
// --sequence-parallel before that) and accept --sequence-parallel at T = 1 with a one-line note.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "cli_util.h"

namespace {

namespace fs = std::filesystem;

using ampipe::testing::run_ampipe;
using ampipe::testing::RunResult;

// Each command with only what it needs to reach its first check (nothing it reads exists: a
// refusal before any work comes before the missing checkpoint or data).
const char* kCommands[] = {"train --data-path /nonexistent/corpus.txt", "eval --load /nonexistent/ckpt",
                           "sample --load /nonexistent/ckpt", "bench --seq-length 16 --hidden-size 16"};

void expect_refused(const std::string& args, const std::string& message_part) {
  const RunResult r = run_ampipe(args);
  EXPECT_EQ(r.status, 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(message_part), std::string::npos) << "expected '" << message_part << "' in:\n"
                                                            << r.output;
}

TEST(CliTensorParallel, HelpOfEveryModelCommandExplainsTheThreeFlags) {
  for (const char* command : {"train", "eval", "sample", "bench"}) {
    const RunResult r = run_ampipe(std::string(command) + " --help");
    ASSERT_EQ(r.status, 0) << command;
    const std::string cmd = command;
    for (const char* part :
         {"--tensor-model-parallel-size INT=1", "--sequence-parallel", "At T = 1 accepted and ignored",
          "--expert-tensor-parallel-size INT=1", "ETP must divide T",
          cmd == "train"   ? "The embedding and LM head split the vocabulary"
          : cmd == "bench" ? "the attention's collectives as comm-stream tasks"
                           : "A checkpoint saved at any T loads"})
      EXPECT_NE(r.output.find(part), std::string::npos) << command << ": " << part;
  }
}

TEST(CliTensorParallel, WhatACommandDoesNotRunIsRefusedBeforeAnyWork) {
  for (const char* command : kCommands) {
    const std::string c = command;
    if (c.rfind("train", 0) == 0) {
      expect_refused(c + " --tensor-model-parallel-size 2",
                     "--tensor-model-parallel-size 2 does not divide the 1 rank(s)");
    } else if (c.rfind("bench", 0) == 0) {
      expect_refused(c + " --tensor-model-parallel-size 2", "--tensor-model-parallel-size 2 does not divide");
    }  // eval and sample read the checkpoint first (missing here), then refuse the layout
    if (c.rfind("train", 0) == 0)  // before the layout: the positions split over the group
      expect_refused(c + " --tensor-model-parallel-size 2 --sequence-parallel --seq-length 15",
                     "--tensor-model-parallel-size 2 --sequence-parallel splits each sequence's positions "
                     "over the 2 ranks of a tensor group: --seq-length 15 is not divisible by 2");
    if (c.rfind("train", 0) == 0 || c.rfind("bench", 0) == 0)  // the layout: ETP x EP does not divide 1 rank
      expect_refused(c + " --expert-tensor-parallel-size 2", "--expert-tensor-parallel-size 2");
    expect_refused(c + " --tensor-model-parallel-size 0",
                   "--tensor-model-parallel-size must be at least 1, got 0");
  }
}

// At T = 1 the flag is accepted with a note (as Megatron-LM ignores it there), and the command runs
// as without it: here up to its next check, the missing input.
TEST(CliTensorParallel, SequenceParallelAtT1IsIgnoredWithANote) {
  for (const char* command : kCommands) {
    if (std::string(command).rfind("bench", 0) == 0) continue;  // bench would run its grid
    const RunResult r =
        run_ampipe(std::string(command) + " --sequence-parallel --tensor-model-parallel-size 1");
    EXPECT_NE(r.output.find("note: --sequence-parallel is ignored at --tensor-model-parallel-size 1"),
              std::string::npos)
        << command << "\n"
        << r.output;
    EXPECT_NE(r.output.find("nonexistent"), std::string::npos) << command << "\n" << r.output;
  }
}

// A real run at T = ETP = 1 with the flags given explicitly trains as today.
TEST(CliTensorParallel, ExplicitOnesTrain) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("ampipe_tp_flags_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; i < 100; ++i) text += "And God said, Let there be light: and there was light. ";
  std::ofstream((dir / "corpus.txt").string()) << text;
  const RunResult r = run_ampipe(
      "train --num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 32 --seq-length 16 "
      "--moe-num-experts 2 --micro-batch-size 2 --eval-iters 1 --threads 1 --train-iters 1 "
      "--tensor-model-parallel-size 1 --expert-tensor-parallel-size 1 --data-path " +
      (dir / "corpus.txt").string());
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("parallel layout"), std::string::npos) << "one rank prints no layout\n" << r.output;
  fs::remove_all(dir);
}

}  // namespace
