// The training loop end to end on a tiny model: loss falls, save / load / resume reproduces the
// uninterrupted run exactly, and eval / data helpers behave as documented.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "model/gpt.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data.h"
#include "train/evaluate.h"
#include "train/indexed_dataset.h"
#include "train/optimizer.h"
#include "train/tokenizer.h"
#include "train/trainer.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) { return testing::fresh_temp_dir("trainer_" + name); }

std::string write_corpus(const std::string& dir) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "In the beginning God created the heaven and the earth. ";
  std::string path = dir + "/corpus.txt";
  std::ofstream(path) << text;
  return path;
}

TrainOptions tiny_options(const std::string& data) {
  TrainOptions o;
  o.model.max_seq_len = 16;
  o.model.hidden_size = 16;
  o.model.num_attention_heads = 2;
  o.model.num_layers = 2;
  o.model.num_experts = 4;
  o.model.ffn_hidden_size = 32;
  o.model.top_k = 2;
  o.micro_batch_size = 4;
  o.lr.lr = 3e-3;
  o.lr.min_lr = 3e-4;
  o.lr.warmup_iters = 2;
  o.train_iters = 8;
  o.eval_interval = 4;
  o.eval_iters = 2;
  o.log_interval = 1;
  o.data_path = {data};
  return o;
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

void quiet(const std::string&) {}

// On a text file, and on an indexed dataset, whose resumed run must continue the same samples.
class Resume : public ::testing::TestWithParam<bool> {};

TEST_P(Resume, FromCheckpointReproducesTheUninterruptedLossesExactly) {
  const bool indexed = GetParam();
  const std::string dir = temp_dir(indexed ? "resume_indexed" : "resume");
  std::string data = write_corpus(dir);
  if (indexed) {
    data = dir + "/corpus_text_document";
    IndexedDatasetWriter writer(data, IndexedDType::U16);
    for (int i = 0; i < 300; ++i) writer.add_document(byte_encode("In the beginning " + std::to_string(i) + ". "));
    writer.finalize();
  }
  auto tiny_options = [&](const std::string& d) {
    TrainOptions o = ::ampipe::tiny_options(d);
    o.split = "90,10,0";
    return o;
  };

  TrainOptions full = tiny_options(data);
  full.metrics_file = dir + "/full.jsonl";
  TrainResult uninterrupted = run_training(full, quiet);

  TrainOptions first = tiny_options(data);
  first.save = dir + "/ckpt";
  first.exit_interval = 3;
  first.metrics_file = dir + "/resumed.jsonl";
  TrainResult stopped = run_training(first, quiet);
  EXPECT_EQ(stopped.iterations, 3);

  TrainOptions second = tiny_options(data);
  second.load = dir + "/ckpt";
  second.metrics_file = dir + "/resumed.jsonl";  // appended on resume
  TrainResult resumed = run_training(second, quiet);

  std::vector<nlohmann::json> a = read_metrics(dir + "/full.jsonl"), b = read_metrics(dir + "/resumed.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["iter"], b[i]["iter"]);
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "iteration " << i + 1;
    EXPECT_EQ(a[i]["lr"].get<double>(), b[i]["lr"].get<double>());
    EXPECT_EQ(a[i].contains("val_loss"), b[i].contains("val_loss"));
  }
  EXPECT_EQ(uninterrupted.final_val_loss, resumed.final_val_loss);
  EXPECT_EQ(uninterrupted.final_loss, resumed.final_loss);
}

INSTANTIATE_TEST_SUITE_P(Data, Resume, ::testing::Bool(), [](const ::testing::TestParamInfo<bool>& param) {
  return param.param ? std::string("IndexedDataset") : std::string("TextFile");
});

// --bf16: checkpoints hold the float32 main parameters and optimizer state, so a bf16 run resumes
// in bf16 bit for bit against the uninterrupted bf16 run, and the same checkpoint resumes in
// float32 too (the run's precision is a flag, not part of the checkpoint's model config).
TEST(Resume, Bf16RunResumesExactlyInBf16AndAlsoInFloat32) {
  const std::string dir = temp_dir("resume_bf16");
  const std::string data = write_corpus(dir);
  auto options = [&](bool bf16, const std::string& metrics) {
    TrainOptions o = tiny_options(data);
    o.model.bf16 = bf16;
    o.metrics_file = dir + "/" + metrics;
    return o;
  };
  TrainOptions full = options(true, "full.jsonl");
  const TrainResult uninterrupted = run_training(full, quiet);
  TrainOptions f32_full = options(false, "f32.jsonl");
  const TrainResult f32_run = run_training(f32_full, quiet);
  EXPECT_NE(uninterrupted.final_loss, f32_run.final_loss) << "--bf16 changed nothing";
  EXPECT_NEAR(uninterrupted.final_loss, f32_run.final_loss, 0.05);

  TrainOptions first = options(true, "resumed.jsonl");
  first.save = dir + "/ckpt";
  first.exit_interval = 3;
  run_training(first, quiet);
  TrainOptions second = options(true, "resumed.jsonl");
  second.load = dir + "/ckpt";
  const TrainResult resumed = run_training(second, quiet);
  const std::vector<nlohmann::json> a = read_metrics(dir + "/full.jsonl"),
                                    b = read_metrics(dir + "/resumed.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "iteration " << i + 1;
  EXPECT_EQ(uninterrupted.final_val_loss, resumed.final_val_loss);

  TrainOptions in_f32 = options(false, "resumed_f32.jsonl");
  in_f32.load = dir + "/ckpt";
  const TrainResult f32_resumed = run_training(in_f32, quiet);
  EXPECT_EQ(f32_resumed.iterations, 8);
  EXPECT_NEAR(f32_resumed.final_loss, uninterrupted.final_loss, 0.05);
  EXPECT_NE(f32_resumed.final_loss, uninterrupted.final_loss) << "the float32 resume ran in bf16";
}

// --global-batch-size: one rank with micro-batch 2 and global batch 8 takes one AdamW step on the
// sum of its four micro-batches' gradients, each scaled by 1/4, bit for bit against the same passes
// run by hand on the samples of the step, in Megatron's order (micro-batch m: samples 2m, 2m + 1).
TEST(Trainer, AccumulationIsTheSumOfItsMicroBatchPassesBitForBit) {
  const std::string dir = temp_dir("accumulate");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.micro_batch_size = 2;
  o.global_batch_size = 8;
  o.train_iters = 1;
  o.eval_interval = 0;
  o.save = dir + "/ckpt";
  run_training(o, quiet);

  const std::string ckpt = checkpoint_to_read(o.save);
  const ModelConfig c = read_checkpoint_config(ckpt);
  const int64_t N = c.max_seq_len;
  const std::unique_ptr<Tokenizer> tokenizer = make_tokenizer("byte", "");
  const TrainingCorpus corpus(CorpusOptions{o.data_path, o.split, N, o.seed, 8, o.eval_iters * 2}, *tokenizer,
                              c.vocab_size);
  const std::vector<int64_t> ids = corpus.training_ids(0, 8);
  GptMoe model(c);
  model.initialize(o.seed);
  AdamW optimizer(model.params(), o.adamw);
  for (int64_t m = 0; m < 4; ++m) {
    const Batch batch = make_batch(corpus.train(), {ids[2 * m], ids[2 * m + 1]}, N);
    ForwardState state;
    model.forward(state, batch.tokens, batch.targets, 2);
    model.backward(state, 0.25);
  }
  LrSchedule lr = o.lr;
  lr.decay_iters = 1;
  optimizer.step(learning_rate(lr, 0));

  GptMoe trained(c);
  load_model_weights(ckpt, trained);
  for (const Parameter& p : model.params().all())
    EXPECT_EQ(p.value.to_vector(), trained.params().get(p.name).value.to_vector()) << p.name;
  // And not what one micro-batch alone would give.
  GptMoe one(c);
  one.initialize(o.seed);
  AdamW one_opt(one.params(), o.adamw);
  const Batch first = make_batch(corpus.train(), {ids[0], ids[1]}, N);
  ForwardState state;
  one.forward(state, first.tokens, first.targets, 2);
  one.backward(state);
  one_opt.step(learning_rate(lr, 0));
  EXPECT_NE(one.params().all()[0].value.to_vector(), trained.params().all()[0].value.to_vector());
}

// A global batch that the micro-batches do not divide is refused before any work, naming both.
TEST(Trainer, GlobalBatchThatDoesNotDivideIsRefused) {
  const std::string dir = temp_dir("accumulate_bad");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.micro_batch_size = 3;
  o.global_batch_size = 8;
  EXPECT_NE(testing::error_of([&] { run_training(o, quiet); })
                .find("--global-batch-size 8 is not a multiple of --micro-batch-size 3 x 1 data-parallel "
                      "rank(s) = 3"),
            std::string::npos);
}

// --overlap-moe-expert-parallel-comm: the paired trainer (each micro-batch's backward beside the
// next one's forward) trains bit for bit like the unpaired one: losses, gradient norms and the
// final parameters, with and without delayed weight gradients and overlapped reduction; "auto"
// decides with the planner and says so.
TEST(Trainer, PairedMicroBatchesTrainBitForBitLikeUnpaired) {
  const std::string dir = temp_dir("paired");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.micro_batch_size = 2;
  o.global_batch_size = 6;
  o.train_iters = 4;
  o.eval_interval = 2;
  o.schedule.kind = ScheduleKind::AmPipe;
  o.schedule.pipe_degree = 2;
  o.hardware = "cpu-2rank-200mbit";  // the merge's seconds
  std::vector<std::string> lines;
  auto train = [&](const std::string& name, const std::string& pairing, bool delay, bool overlap) {
    TrainOptions t = o;
    t.overlap_moe_expert_parallel_comm = pairing;
    t.delay_wgrad_compute = delay;
    t.overlap_grad_reduce = overlap;
    t.save = dir + "/" + name;
    t.metrics_file = dir + "/" + name + ".jsonl";
    lines.clear();
    run_training(t, [&](const std::string& line) { lines.push_back(line); });
    return t;
  };
  const TrainOptions plain = train("plain", "off", false, false);
  for (const auto& [pairing, delay, overlap] :
       {std::tuple{"on", false, false}, std::tuple{"on", true, false}, std::tuple{"on", true, true}}) {
    const std::string name =
        std::string("paired") + (delay ? "_delayed" : "") + (overlap ? "_overlapped" : "");
    const TrainOptions paired = train(name, pairing, delay, overlap);
    bool said = false;
    for (const std::string& l : lines) said |= l.rfind("micro-batches: paired", 0) == 0;
    EXPECT_TRUE(said) << name << ": the start-up log does not say the micro-batches are paired";
    const std::vector<nlohmann::json> a = read_metrics(plain.metrics_file),
                                      b = read_metrics(paired.metrics_file);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << name << " iteration " << i + 1;
      EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>())
          << name << " iteration " << i + 1;
    }
    GptMoe x(read_checkpoint_config(checkpoint_to_read(plain.save))),
        y(read_checkpoint_config(checkpoint_to_read(paired.save)));
    load_model_weights(checkpoint_to_read(plain.save), x);
    load_model_weights(checkpoint_to_read(paired.save), y);
    for (const Parameter& p : x.params().all())
      EXPECT_EQ(p.value.to_vector(), y.params().get(p.name).value.to_vector()) << name << " " << p.name;
  }
  // auto: the planner decides and says what it predicted.
  train("auto", "auto", false, false);
  bool planned = false;
  for (const std::string& l : lines)
    planned |= l.find("--overlap-moe-expert-parallel-comm auto") != std::string::npos;
  EXPECT_TRUE(planned);
}

// Pairing needs something to pair and does not combine with full recomputation; delayed weight
// gradients need pairing; each refusal says what is needed.
TEST(Trainer, PairingFlagsThatCannotWorkAreRefused) {
  const std::string dir = temp_dir("paired_bad");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.overlap_moe_expert_parallel_comm = "on";
  EXPECT_NE(testing::error_of([&] { run_training(o, quiet); }).find("give --global-batch-size of at least 8"),
            std::string::npos);
  o.global_batch_size = 8;
  o.recompute_granularity = "full";
  o.recompute_method = "uniform";
  EXPECT_NE(testing::error_of([&] {
              run_training(o, quiet);
            }).find("does not combine with --recompute-granularity full"),
            std::string::npos);
  o.recompute_granularity.clear();
  o.recompute_method.clear();
  o.overlap_moe_expert_parallel_comm = "sometimes";
  EXPECT_NE(testing::error_of([&] {
              run_training(o, quiet);
            }).find("is not one of: on (the flag alone), auto, off"),
            std::string::npos);
  o.overlap_moe_expert_parallel_comm = "off";
  o.delay_wgrad_compute = true;
  EXPECT_NE(
      testing::error_of([&] { run_training(o, quiet); }).find("it needs --overlap-moe-expert-parallel-comm"),
      std::string::npos);
}

// Memory under load: after warm-up, resident memory stays flat over 2000 steps (no growth per
// step: a leak of even one small activation per step would show as tens of MB).
TEST(Trainer, ResidentMemoryStaysFlatOverTwoThousandSteps) {
  const std::string dir = temp_dir("memory");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.train_iters = 2000;
  o.log_interval = 100;
  o.eval_interval = 500;
  o.metrics_file = dir + "/metrics.jsonl";
  run_training(o, quiet);
  double low = 1e300, high = 0;
  std::vector<double> seen;
  for (const nlohmann::json& j : read_metrics(o.metrics_file)) {
    ASSERT_TRUE(j.contains("rss_mb"));
    if (j["iter"].get<int64_t>() < 300) continue;  // warm-up: caches fill
    const double rss = j["rss_mb"].get<double>();
    seen.push_back(rss);
    low = std::min(low, rss);
    high = std::max(high, rss);
  }
  ASSERT_GE(seen.size(), 15u);
  EXPECT_GT(low, 1.0);  // measured at all
  EXPECT_LT(high - low, 4.0) << "resident memory grew from " << low << " to " << high << " MB after warm-up";
}

// A non-finite loss (injected at iteration 3, as a diverging step would give) skips that update
// and training goes on; with --abort-on-nan the job ends naming the iteration.
TEST(Trainer, NonFiniteLossSkipsTheUpdateOrAborts) {
  const std::string dir = temp_dir("nan");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.train_iters = 5;
  o.metrics_file = dir + "/metrics.jsonl";
  ::setenv("AMPIPE_INJECT_NAN", "0:3", 1);
  std::vector<std::string> lines;
  const TrainResult r = run_training(o, [&](const std::string& line) { lines.push_back(line); });
  EXPECT_EQ(r.iterations, 5);
  EXPECT_TRUE(std::isfinite(r.final_loss));
  const std::vector<nlohmann::json> m = read_metrics(o.metrics_file);
  ASSERT_EQ(m.size(), 5u);
  EXPECT_TRUE(m[2]["grad_norm"].is_null()) << m[2].dump();  // no update at iteration 3
  EXPECT_TRUE(m[3]["grad_norm"].is_number()) << m[3].dump();
  bool warned = false;
  for (const std::string& line : lines) warned |= line.find("skipping this update") != std::string::npos;
  EXPECT_TRUE(warned);
  o.abort_on_nan = true;
  o.metrics_file.clear();
  try {
    run_training(o, quiet);
    ADD_FAILURE() << "--abort-on-nan did not end the run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at iteration 3"), std::string::npos) << e.what();
  }
  ::unsetenv("AMPIPE_INJECT_NAN");
}

// Nothing is written from a non-finite state: a save of a model holding a NaN is refused and the
// previous checkpoint stays the latest.
TEST(Trainer, ANonFiniteStateIsNeverSaved) {
  const std::string dir = temp_dir("nan_save");
  TrainOptions o = tiny_options(write_corpus(dir));
  GptMoe model(o.model);
  model.initialize(1);
  AdamW optimizer(model.params(), o.adamw);
  save_iteration_checkpoint(dir + "/ckpt", model, optimizer, TrainingProgress{1, o.seed, std::nullopt});
  model.params().all().front().value.data<float>()[3] = NAN;
  try {
    save_iteration_checkpoint(dir + "/ckpt", model, optimizer, TrainingProgress{2, o.seed, std::nullopt});
    ADD_FAILURE() << "a model holding a NaN was saved";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir + "/ckpt/latest_checkpointed_iteration.txt").substr(0, 1), "1");
  EXPECT_FALSE(std::filesystem::exists(dir + "/ckpt/" + iteration_dir_name(2)));
}

TEST(Trainer, LossFallsAndMetricsHaveTheDocumentedKeys) {
  const std::string dir = temp_dir("learn");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.train_iters = 40;
  o.eval_interval = 20;
  o.log_interval = 10;
  o.metrics_file = dir + "/m.jsonl";
  run_training(o, quiet);
  std::vector<nlohmann::json> m = read_metrics(o.metrics_file);
  ASSERT_EQ(m.size(), 4u);
  for (const auto& j : m)
    for (const char* key : {"iter", "loss", "lr", "tokens_per_sec"}) EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_TRUE(m[1].contains("val_loss"));
  EXPECT_FALSE(m[0].contains("val_loss"));
  EXPECT_LT(m[3]["loss"].get<double>(), m[0]["loss"].get<double>() - 0.5);
  EXPECT_LT(m[3]["val_loss"].get<double>(), std::log(256.0) - 1.0);
}

TEST(Trainer, AmPipeTrainingFollowsTheSequentialLossCurve) {
  const std::string dir = temp_dir("ampipe");
  TrainOptions seq = tiny_options(write_corpus(dir));
  seq.train_iters = 200;
  seq.eval_interval = 100;
  seq.log_interval = 10;
  seq.metrics_file = dir + "/seq.jsonl";
  run_training(seq, quiet);
  TrainOptions pipe = seq;
  pipe.schedule.kind = ScheduleKind::AmPipe;
  pipe.schedule.pipe_degree = 4;
  pipe.metrics_file = dir + "/pipe.jsonl";
  run_training(pipe, quiet);
  std::vector<nlohmann::json> a = read_metrics(seq.metrics_file), b = read_metrics(pipe.metrics_file);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 2e-3) << "iteration " << a[i]["iter"];
  EXPECT_NEAR(a.back()["val_loss"].get<double>(), b.back()["val_loss"].get<double>(), 2e-3);
}

TEST(Trainer, CheckpointWithAnotherConfigIsRefused) {
  const std::string dir = temp_dir("mismatch");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.train_iters = 1;
  o.save = dir + "/ckpt";
  run_training(o, quiet);
  TrainOptions other = o;
  other.save = "";
  other.load = dir + "/ckpt";
  other.train_iters = 2;
  other.opt_param_scheduler = OptParamScheduler::Override;  // a longer schedule than the checkpoint's
  other.model.hidden_size = 32;
  try {
    run_training(other, quiet);
    FAIL() << "a mismatched config was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size: 16 vs 32"), std::string::npos) << e.what();
  }
}

TEST(Trainer, InconsistentCheckpointPairIsRefused) {
  const std::string dir = temp_dir("inconsistent");
  TrainOptions o = tiny_options(write_corpus(dir));
  o.train_iters = 2;
  o.save = dir + "/a";
  run_training(o, quiet);
  o.train_iters = 3;
  o.save = dir + "/b";
  run_training(o, quiet);
  // A crash between the two renames: optimizer from one save, model from another.
  fs::copy_file(dir + "/b/iter_0000003/optimizer.safetensors", dir + "/a/iter_0000002/optimizer.safetensors",
                fs::copy_options::overwrite_existing);
  TrainOptions r = o;
  r.save = "";
  r.load = dir + "/a";
  r.train_iters = 4;
  EXPECT_THROW(run_training(r, quiet), Error);
}

TEST(Data, SplitKeepsTheLastTenthForValidationAndRefusesShortFiles) {
  std::vector<int32_t> t(1000);
  for (int i = 0; i < 1000; ++i) t[i] = i % 256;
  TextSplit s = split_train_validation(t, 16, "x");
  EXPECT_EQ(s.train.size(), 900u);
  EXPECT_EQ(s.validation.size(), 100u);
  EXPECT_EQ(s.validation.front(), 900 % 256);
  EXPECT_THROW(split_train_validation(std::vector<int32_t>(100, 1), 16, "x"), Error);
}

TEST(Data, TrainingOffsetsDependOnlyOnSeedAndIteration) {
  auto a = training_offsets(5, 7, 8, 1000, 16), b = training_offsets(5, 7, 8, 1000, 16);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, training_offsets(5, 8, 8, 1000, 16));
  EXPECT_NE(a, training_offsets(6, 7, 8, 1000, 16));
  for (int64_t o : training_offsets(1, 0, 1000, 100, 16)) {
    EXPECT_GE(o, 0);
    EXPECT_LE(o + 17, 100);
  }
}

// Batches of nearby iterations are independent draws: no window repeats between them beyond the
// chance of two uniform draws colliding.
TEST(Data, ConsecutiveIterationsDrawIndependentWindows) {
  const int64_t len = 4000000, batch = 16;
  int64_t shared = 0;
  for (int64_t it = 0; it < 50; ++it) {
    std::vector<int64_t> a = training_offsets(1234, it, batch, len, 128);
    std::vector<int64_t> b = training_offsets(1234, it + 1, batch, len, 128);
    for (int64_t x : a)
      for (int64_t y : b) shared += x == y;
  }
  EXPECT_EQ(shared, 0);
}

TEST(Evaluate, ConsecutiveWindowsCoverTheFileAndDropThePartialOne) {
  EXPECT_EQ(consecutive_windows(35, 16), (std::vector<int64_t>{0, 17}));
  EXPECT_EQ(consecutive_windows(34, 16), (std::vector<int64_t>{0, 17}));
  EXPECT_EQ(consecutive_windows(33, 16), (std::vector<int64_t>{0}));
  EXPECT_TRUE(consecutive_windows(16, 16).empty());
}

}  // namespace
}  // namespace ampipe
