// Megatron-style checkpoint roots (train/checkpoint.h): DIR/iter_NNNNNNN/ and
// DIR/latest_checkpointed_iteration.txt, --ckpt-keep, --ckpt-step, incomplete checkpoints refused
// naming the previous complete one, a root without a checkpoint starting fresh, old single-directory
// checkpoints still loading, and failed saves leaving the previous checkpoint intact.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "cli_util.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/resume_schedule.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) { return testing::fresh_temp_dir("ckdirs_" + name); }

std::string write_corpus(const std::string& dir) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "In the beginning God created the heaven and the earth. ";
  const std::string path = dir + "/corpus.txt";
  std::ofstream(path) << text;
  return path;
}

TrainOptions tiny(const std::string& data) {
  TrainOptions o;
  o.model.max_seq_len = 16;
  o.model.hidden_size = 16;
  o.model.num_attention_heads = 2;
  o.model.num_layers = 1;
  o.model.num_experts = 2;
  o.model.ffn_hidden_size = 16;
  o.model.top_k = 1;
  o.micro_batch_size = 2;
  o.lr.warmup_iters = 0;
  o.train_iters = 6;
  o.eval_interval = 0;
  o.eval_iters = 1;
  o.log_interval = 100;
  o.data_path = {data};
  return o;
}

std::vector<std::string> run(const TrainOptions& o) {
  std::vector<std::string> log;
  run_training(o, [&](const std::string& line) { log.push_back(line); });
  return log;
}

bool logged(const std::vector<std::string>& log, const std::string& text) {
  for (const std::string& line : log)
    if (line.find(text) != std::string::npos) return true;
  return false;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Runs a shell command line and collects its output (stdout and stderr).
testing::RunResult run_shell(const std::string& line) {
  testing::RunResult r;
  FILE* pipe = popen(("(" + line + ") 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::map<std::string, Tensor> weights(const std::string& dir) {
  return read_safetensors(dir + "/model.safetensors").tensors;
}

void expect_same_weights(const std::string& a, const std::string& b) {
  const auto x = weights(a), y = weights(b);
  ASSERT_EQ(x.size(), y.size());
  for (const auto& [name, t] : x) {
    ASSERT_TRUE(y.count(name)) << name;
    const Tensor& u = y.at(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    EXPECT_EQ(0,
              std::memcmp(t.data<float>(), u.data<float>(), sizeof(float) * static_cast<size_t>(t.numel())))
        << name;
  }
}

TEST(CheckpointDirs, LayoutTrackerAndKeep) {
  const std::string dir = temp_dir("layout");
  TrainOptions o = tiny(write_corpus(dir));
  o.save = dir + "/ckpt";
  o.save_interval = 2;
  run(o);
  EXPECT_EQ(iteration_dir_name(500), "iter_0000500");
  EXPECT_EQ(read_file(tracker_path(o.save)), "6");  // as Megatron writes it
  for (const char* it : {"iter_0000002", "iter_0000004", "iter_0000006"}) {
    EXPECT_TRUE(fs::exists(o.save + "/" + it + "/model.safetensors")) << it;
    EXPECT_TRUE(fs::exists(o.save + "/" + it + "/optimizer.safetensors")) << it;
    EXPECT_EQ(checkpoint_problem(o.save + "/" + it), "") << it;
  }
  for (const auto& e : fs::directory_iterator(o.save))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  EXPECT_EQ(locate_checkpoint(o.save).path, o.save + "/iter_0000006");
  EXPECT_EQ(locate_checkpoint(o.save, 4).path, o.save + "/iter_0000004");
  // The readers accept the root (its latest) and an iteration directory itself.
  EXPECT_EQ(read_checkpoint_config(o.save).hidden_size, 16);
  EXPECT_EQ(read_checkpoint_config(o.save + "/iter_0000002").hidden_size, 16);
  EXPECT_TRUE(has_training_state(o.save));

  TrainOptions k = o;
  k.save = dir + "/keep";
  k.ckpt_keep = 2;
  k.save_interval = 1;
  run(k);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(k.save)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{".ampipe-save.lock", "iter_0000005", "iter_0000006",
                                             "latest_checkpointed_iteration.txt"}));
  expect_same_weights(o.save + "/iter_0000006", k.save + "/iter_0000006");
}

TEST(CheckpointDirs, ResumeLatestAndCkptStepReproduceTheUninterruptedRun) {
  const std::string dir = temp_dir("resume");
  TrainOptions o = tiny(write_corpus(dir));
  o.save = dir + "/full";
  run(o);
  // The same command line, stopped at 2 and 4 (--exit-interval), restarted: --save DIR --load DIR.
  TrainOptions r = o;
  r.save = r.load = dir + "/job";
  r.save_interval = 1;
  r.exit_interval = 2;
  std::vector<std::string> log = run(r);
  EXPECT_TRUE(logged(log, "starting from scratch")) << "a root without a checkpoint starts fresh";
  log = run(r);
  EXPECT_TRUE(logged(log, "resumed from " + r.save + "/iter_0000002"));
  r.exit_interval = 0;
  run(r);
  expect_same_weights(o.save + "/iter_0000006", r.save + "/iter_0000006");
  // --ckpt-step: back to iteration 3, on to the end again: the same parameters.
  TrainOptions s = r;
  s.ckpt_step = 3;
  log = run(s);
  EXPECT_TRUE(logged(log, "resumed from " + r.save + "/iter_0000003"));
  expect_same_weights(o.save + "/iter_0000006", r.save + "/iter_0000006");
  EXPECT_EQ(read_file(tracker_path(r.save)), "6");
  s.ckpt_step = 9;
  EXPECT_NE(error_of([&] { run(s); }).find("iter_0000009 is incomplete"), std::string::npos);
}

TEST(CheckpointDirs, IncompleteNewestIsRefusedNamingThePrevious) {
  const std::string dir = temp_dir("incomplete");
  TrainOptions o = tiny(write_corpus(dir));
  o.save = dir + "/ckpt";
  o.save_interval = 2;
  run(o);
  TrainOptions r = o;
  r.load = o.save;
  r.train_iters = 8;  // longer than the checkpoint's schedule: allowed by the override
  r.opt_param_scheduler = OptParamScheduler::Override;
  // A missing file.
  fs::rename(o.save + "/iter_0000006/optimizer.safetensors", dir + "/opt6");
  std::string e = error_of([&] { run(r); });
  EXPECT_NE(e.find("iter_0000006 is incomplete (optimizer.safetensors: missing)"), std::string::npos) << e;
  EXPECT_NE(e.find("the previous complete checkpoint is iter_0000004: resume with --ckpt-step 4"),
            std::string::npos)
      << e;
  // An unreadable (truncated) file; the previous one also broken: the one before.
  fs::rename(dir + "/opt6", o.save + "/iter_0000006/optimizer.safetensors");
  const std::string m6 = o.save + "/iter_0000006/model.safetensors";
  fs::resize_file(m6, fs::file_size(m6) - 10);
  fs::remove(o.save + "/iter_0000004/model.safetensors");
  e = error_of([&] { run(r); });
  EXPECT_NE(e.find("iter_0000006 is incomplete (model.safetensors: "), std::string::npos) << e;
  EXPECT_NE(e.find("resume with --ckpt-step 2"), std::string::npos) << e;
  // Mismatched iteration stamps.
  fs::create_directories(dir + "/mixed");
  fs::copy_file(o.save + "/iter_0000002/model.safetensors", dir + "/mixed/model.safetensors");
  fs::copy_file(o.save + "/iter_0000006/optimizer.safetensors", dir + "/mixed/optimizer.safetensors");
  EXPECT_EQ(checkpoint_problem(dir + "/mixed"),
            "model.safetensors is stamped iteration 2, optimizer.safetensors 6");
  // The resume it names works.
  r.ckpt_step = 2;
  EXPECT_TRUE(logged(run(r), "resumed from " + o.save + "/iter_0000002"));
}

TEST(CheckpointDirs, NoCheckpointYetStartsFresh) {
  const std::string dir = temp_dir("fresh");
  TrainOptions o = tiny(write_corpus(dir));
  o.train_iters = 1;
  for (const std::string& load : {dir + "/missing", dir + "/empty", dir + "/untracked"}) {
    fs::create_directories(dir + "/empty");
    fs::create_directories(dir + "/untracked/iter_0000003");
    o.load = load;
    EXPECT_EQ(locate_checkpoint(load).path, "");
    EXPECT_TRUE(logged(run(o), "starting from scratch")) << load;
  }
  // Said once, with the reason, and no "starting from scratch" (a reader does not start anything).
  EXPECT_EQ(
      error_of([&] { checkpoint_to_read(dir + "/empty"); }),
      "no checkpoint in '" + dir + "/empty' (no latest_checkpointed_iteration.txt and no model.safetensors)");
  EXPECT_EQ(error_of([&] { checkpoint_to_read(dir + "/missing"); }),
            "no checkpoint at '" + dir + "/missing' (it does not exist)");
}

TEST(CheckpointDirs, SingleDirectoryCheckpointsStillLoad) {
  const std::string dir = temp_dir("single");
  TrainOptions o = tiny(write_corpus(dir));
  o.exit_interval = 3;  // the same schedule as the full run (decay over 6), stopped at 3
  o.save = dir + "/layout";
  run(o);
  // Today's single-checkpoint directory: the files directly in DIR.
  fs::create_directories(dir + "/old");
  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    fs::copy_file(o.save + "/iter_0000003/" + f, dir + "/old/" + f);
  EXPECT_EQ(locate_checkpoint(dir + "/old").path, dir + "/old");
  TrainOptions r = tiny(o.data_path[0]);
  r.load = dir + "/old";
  r.save = dir + "/new";
  EXPECT_TRUE(logged(run(r), "resumed from " + dir + "/old at iteration 3"));
  TrainOptions full = tiny(o.data_path[0]);
  full.save = dir + "/full";
  run(full);
  expect_same_weights(dir + "/full/iter_0000006", dir + "/new/iter_0000006");
  // A --save root must not be a single-checkpoint directory (its model.safetensors would shadow).
  r.save = dir + "/old";
  EXPECT_NE(error_of([&] { run(r); }).find("single-directory"), std::string::npos);
}

TEST(CheckpointDirs, FailedSaveLeavesThePreviousIntact) {
  const std::string dir = temp_dir("fail");
  TrainOptions o = tiny(write_corpus(dir));
  o.train_iters = 2;
  o.save = dir + "/ckpt";
  run(o);
  const std::string before = read_file(o.save + "/iter_0000002/model.safetensors");
  // A file where the temporary directory would go.
  TrainOptions r = o;
  r.load = o.save;
  r.train_iters = 4;  // longer than the checkpoint's schedule: allowed by the override
  r.opt_param_scheduler = OptParamScheduler::Override;
  std::ofstream(o.save + "/iter_0000004.tmp") << "in the way";
  const std::string e = error_of([&] { run(r); });
  EXPECT_NE(e.find("saving checkpoint iter_0000004"), std::string::npos) << e;
  EXPECT_EQ(read_file(tracker_path(o.save)), "2");
  EXPECT_EQ(read_file(o.save + "/iter_0000002/model.safetensors"), before);
  EXPECT_FALSE(fs::exists(o.save + "/iter_0000004"));
  // --exit-on-save-failure false: training goes on, warns, and the next save succeeds.
  r.exit_on_save_failure = false;
  r.save_interval = 3;  // saves at 3 (fine) and 4 (blocked)
  std::vector<std::string> log = run(r);
  EXPECT_TRUE(logged(log, "warning: saving checkpoint iter_0000004")) << "no warning";
  EXPECT_EQ(read_file(tracker_path(o.save)), "3");
  fs::remove(o.save + "/iter_0000004.tmp");

  // A file-size limit (a full disk, ulimit -f 8: 8 KiB) on the command: the save fails, reported, and
  // nothing else changes. (A child process, not fork(): this process has threads.)
  const testing::RunResult res = run_shell(
      "ulimit -f 8 && exec " + testing::ampipe_binary() +
      " train --num-layers 1 --hidden-size 16 --num-attention-heads 2 --ffn-hidden-size 16 --seq-length 16"
      " --moe-num-experts 2 --moe-top-k 1 --micro-batch-size 2 --lr-warmup-iters 0 --eval-iters 1 "
      "--eval-interval 0"
      " --train-iters 4 --override-opt_param-scheduler --threads 1 --data-path " +
      o.data_path[0] + " --save " + o.save + " --load " + o.save + " --ckpt-step 2");
  EXPECT_EQ(res.status, 1) << res.output;
  EXPECT_NE(res.output.find("saving checkpoint iter_0000004"), std::string::npos) << res.output;
  EXPECT_EQ(read_file(tracker_path(o.save)), "3");
  EXPECT_FALSE(fs::exists(o.save + "/iter_0000004"));
  EXPECT_FALSE(fs::exists(o.save + "/iter_0000004.tmp"));
  EXPECT_EQ(read_file(o.save + "/iter_0000002/model.safetensors"), before);
  EXPECT_EQ(locate_checkpoint(o.save).path, o.save + "/iter_0000003");
}

TEST(CheckpointDirs, OneJobPerSaveDirectory) {
  const std::string dir = temp_dir("lock");
  const std::string root = dir + "/ckpt";
  std::string held;
  {
    SaveDirectoryLock first(root);  // creates the directory
    EXPECT_TRUE(fs::is_directory(root));
    const std::string holder = read_file(SaveDirectoryLock::lock_path(root));
    EXPECT_NE(holder.find("pid " + std::to_string(getpid())), std::string::npos) << holder;
    // A second holder (another open file description, as another process would have) is refused,
    // naming the holder; so is a training run saving there.
    held = error_of([&] { SaveDirectoryLock second(root); });
    EXPECT_NE(held.find("another job holds the --save directory '" + root + "'"), std::string::npos) << held;
    EXPECT_NE(held.find("pid " + std::to_string(getpid())), std::string::npos) << held;
    TrainOptions o = tiny(write_corpus(dir));
    o.train_iters = 1;
    o.save = root;
    const std::string e = error_of([&] { run(o); });
    EXPECT_NE(e.find("another job holds the --save directory"), std::string::npos) << e;
    EXPECT_FALSE(fs::exists(tracker_path(root))) << "the refused job wrote a checkpoint";
  }
  // Released with its holder: the next job takes it, saves, and a load of the directory ignores
  // the lock file.
  TrainOptions o = tiny(write_corpus(dir));
  o.train_iters = 1;
  o.save = root;
  o.load = root;
  run(o);
  EXPECT_EQ(read_file(tracker_path(root)), "1");
  EXPECT_EQ(locate_checkpoint(root).path, root + "/iter_0000001");
}

// --- Resuming keeps the schedule (train/resume_schedule.h).

TEST(ResumeSchedule, SettingsRoundTripThroughTheCheckpointExactly) {
  const std::string dir = temp_dir("settings");
  TrainOptions o = tiny(write_corpus(dir));
  o.lr.lr = 1.0 / 3.0e3;  // no short decimal form
  o.lr.min_lr = 1e-5;
  o.lr.warmup_iters = 2;
  o.adamw.beta2 = 0.999;
  o.adamw.clip_grad = 0.7;
  o.train_iters = 3;
  o.save = dir + "/ckpt";
  run(o);
  const std::optional<ScheduleSettings> s = read_schedule_settings(o.save);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->lr.lr, o.lr.lr);
  EXPECT_EQ(s->lr.min_lr, 1e-5);
  EXPECT_EQ(s->lr.warmup_iters, 2);
  EXPECT_EQ(s->lr.decay_iters, 3);
  EXPECT_EQ(s->adamw.beta2, 0.999);
  EXPECT_EQ(s->adamw.clip_grad, 0.7);
  EXPECT_EQ(s->train_iters, 3);
  EXPECT_EQ(s->global_batch, o.micro_batch_size);
}

TEST(ResumeSchedule, LeftOutFlagsTakeTheCheckpointsAndDifferingGivenOnesAreRefusedNamingBoth) {
  ScheduleSettings stored;
  stored.lr = LrSchedule{2e-3, 1e-4, 10, 60};
  stored.adamw.weight_decay = 0.05;
  stored.train_iters = 60;
  stored.global_batch = 8;
  TrainOptions o;
  o.load = "ckpt";
  o.schedule_flags_given = std::set<std::string>{};  // nothing given
  apply_checkpoint_schedule(o, stored, 2);
  EXPECT_EQ(o.lr.lr, 2e-3);
  EXPECT_EQ(o.lr.warmup_iters, 10);
  EXPECT_EQ(o.adamw.weight_decay, 0.05);
  EXPECT_EQ(o.train_iters, 60);
  EXPECT_EQ(o.micro_batch_size, 4) << "the global batch of 8 over 2 ranks";

  TrainOptions given;
  given.load = "ckpt";
  given.lr.warmup_iters = 0;
  given.train_iters = 60;  // the same as the checkpoint's: fine
  given.schedule_flags_given = std::set<std::string>{"--lr-warmup-iters", "--train-iters"};
  const std::string e = error_of([&] { apply_checkpoint_schedule(given, stored, 2); });
  EXPECT_NE(e.find("--lr-warmup-iters 0 (checkpoint 10)"), std::string::npos) << e;
  EXPECT_EQ(e.find("--train-iters"), std::string::npos) << e;
  given.opt_param_scheduler = OptParamScheduler::Override;
  apply_checkpoint_schedule(given, stored, 2);
  EXPECT_EQ(given.lr.warmup_iters, 0) << "the override keeps the flag's value";
  EXPECT_EQ(given.lr.lr, 2e-3) << "a flag left out still takes the checkpoint's";
  given.opt_param_scheduler = OptParamScheduler::UseCheckpoint;
  apply_checkpoint_schedule(given, stored, 2);
  EXPECT_EQ(given.lr.warmup_iters, 10) << "--use-checkpoint-opt_param-scheduler takes the checkpoint's";

  // The global batch continues; a given micro-batch that divides it accumulates the rest.
  TrainOptions accumulate;
  accumulate.load = "ckpt";
  accumulate.micro_batch_size = 2;
  accumulate.schedule_flags_given = std::set<std::string>{"--micro-batch-size"};
  apply_checkpoint_schedule(accumulate, stored, 2);
  EXPECT_EQ(accumulate.micro_batch_size, 2);
  EXPECT_EQ(global_batch(accumulate, 2), 8);
  EXPECT_EQ(micro_batches_per_step(accumulate, 2), 2);
  accumulate.micro_batch_size = 3;  // 3 x 2 ranks does not divide 8
  EXPECT_NE(error_of([&] { apply_checkpoint_schedule(accumulate, stored, 2); })
                .find("--micro-batch-size 3 x 2 rank(s) (checkpoint global batch 8)"),
            std::string::npos);
  TrainOptions other_global;
  other_global.load = "ckpt";
  other_global.global_batch_size = 16;
  other_global.schedule_flags_given = std::set<std::string>{"--global-batch-size"};
  EXPECT_NE(error_of([&] { apply_checkpoint_schedule(other_global, stored, 2); })
                .find("--global-batch-size 16 (checkpoint 8)"),
            std::string::npos);
  other_global.global_batch_size = 8;  // the same: fine
  apply_checkpoint_schedule(other_global, stored, 2);
  EXPECT_EQ(global_batch(other_global, 2), 8);

  TrainOptions odd;
  odd.load = "ckpt";
  odd.schedule_flags_given = std::set<std::string>{};
  EXPECT_NE(
      error_of([&] { apply_checkpoint_schedule(odd, stored, 3); }).find("does not divide over 3 rank(s)"),
      std::string::npos);
}

}  // namespace
}  // namespace ampipe
