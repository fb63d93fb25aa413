// The whole model under tensor parallelism (model/gpt.h, train/trainer.h) on 2 and 4 ranks, under
// mpirun, against one rank:
//   - GptMoe split over tensor groups of T ranks (T = 2, and T = 4 on 4 ranks), both families, GQA
//     with its query groups split, with and without the experts split over the same group (ETP = T):
//     the initial weights are the one-rank model's shards bit for bit;
//     the loss, the logits (gathered) and every gradient (shards placed into the full tensors) equal
//     the one-rank model's within grad_check.h's rule;
//   - `train` with T > 1 follows T = 1 for 20 steps (losses, gradient norms, validation loss, final
//     checkpoint; sequential, and AMPipe in model scope with its all-reduces on the comm stream), and
//     a run saved at T = 2 resumes at T = 1 (and the other way round) like the uninterrupted run:
//     checkpoints are layout-independent;
//   - `eval` and `sample` load that checkpoint at T = 2 and T = 1 (the same loss);
//   - with --sequence-parallel (each rank of a tensor group holding and routing 1/T of the rows) the
//     same, model and training (sequential, and AMPipe in model scope with the gathers and
//     reduce-scatters on the comm stream, overlapped gradient reduction, the experts split too and
//     gathering their group's rows);
//   - what T > 1 does not run yet is refused before any work, naming the flag.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/inference_commands.h"
#include "grad_check.h"
#include "model/gpt.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/mpi_train_fixture.h"
#include "test_util.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using ::ampipe::testing::error_of;
using ::ampipe::testing::expect_gradient_matches;
using ::ampipe::testing::GradientTolerance;
using ::ampipe::testing::shared_corpus_dir;
using ::ampipe::testing::small_train_options;
using ::ampipe::testing::to_double;

// The sharded model differs from the whole one only in float32 summation order (the row-parallel
// projection's and the head's input-gradient reductions add T partial GEMMs; the vocabulary-parallel
// loss sums exponentials by shard in double and uses std::exp, model/vocab_parallel.h). Gradients
// are O(1e-2) here: grad_check.h's rule with a floor of 1e-5 (atol < floor / 2) and rtol 1e-3 is
// thousands of times the ~1e-7 relative rounding, and still fails a zeroed, halved or negated
// gradient.
constexpr GradientTolerance kTolerance{1e-5, 4e-6, 1e-3, 0.99999, 1e-3};

struct ModelCase {
  const char* name;
  bool mixtral;
  int64_t groups;  // query groups (KV heads); the model has 4 heads
  int T;           // tensor-parallel size; 0 = the world size
  bool etp = false;  // expert tensor parallelism over the same group (ETP = T)
  bool sp = false;   // sequence parallelism (each rank of the group routes its own 1/T of the rows)
};

ModelConfig model_config(const ModelCase& c) {
  ModelConfig m;
  if (c.mixtral) m.set_family("mixtral");
  m.vocab_size = 64;
  m.max_seq_len = 12;
  m.hidden_size = 32;
  m.num_attention_heads = 4;
  m.num_query_groups = c.groups;
  m.num_layers = 2;
  m.num_experts = 4;
  m.ffn_hidden_size = 24;
  m.top_k = 2;
  return m;
}

// The full tensor of a parameter from every rank's shard (zeros elsewhere, summed over the group:
// exact), or the parameter itself when it is whole.
Tensor whole(const GptMoe& model, const Parameter& p, const Tensor& local) {
  if (!p.tensor_parallel) return local;
  const bool expert = p.is_expert;
  for (const TensorParallelShard& s :
       expert ? model.expert_tensor_parallel_shards() : model.tensor_parallel_shards()) {
    if (s.name != p.name) continue;
    Tensor full = Tensor::zeros(s.full_shape);
    place_tensor_parallel_shard(local, s, full);
    (expert ? model.expert_tensor_group() : model.tensor_group())->all_reduce_sum(full);
    return full;
  }
  ADD_FAILURE() << p.name << " is marked tensor-parallel but has no shard";
  return local;
}

class TensorParallelModel : public ::testing::TestWithParam<ModelCase> {};

TEST_P(TensorParallelModel, LossLogitsAndEveryGradientEqualOneRank) {
  const ModelCase c = GetParam();
  const int W = g_world->size(), rank = g_world->rank();
  const int T = c.T == 0 ? W : c.T;
  if (W % T != 0) GTEST_SKIP() << "T = " << T << " does not divide " << W << " ranks";
  if (T > 4) GTEST_SKIP() << "T = " << T << " does not divide the model's 4 heads";
  std::unique_ptr<Communicator> tp = g_world->split(rank / T, rank % T);
  ModelParallel parallel;
  parallel.tensor_group = tp.get();
  if (c.etp) parallel.expert_tensor_group = tp.get();
  parallel.sequence_parallel = c.sp;
  const ModelConfig config = model_config(c);
  GptMoe sharded(config, parallel);
  GptMoe reference(config);  // this rank alone, every parameter whole
  sharded.initialize(5);
  reference.initialize(5);
  EXPECT_EQ(sharded.tensor_parallel_shards().size(),
            static_cast<size_t>(config.num_layers * (c.mixtral ? 4 : 3) + (c.mixtral ? 2 : 1)))
      << "shards: every block's input and output projections (GPT: weight and bias of the fused QKV), "
         "the embedding and, untied, the head";
  EXPECT_EQ(sharded.expert_tensor_parallel_shards().size(),
            c.etp ? static_cast<size_t>(config.num_layers * 3) : 0u)
      << "expert shards: fc1 weight and bias and fc2 weight (GPT), w1, w3 and w2 (Mixtral)";

  // Every tensor group sees its own tokens (the group index seeds them); all its ranks the same.
  const int64_t B = 2, N = config.max_seq_len;
  std::vector<int32_t> ids(B * N), next(B * N);
  for (int64_t i = 0; i < B * N; ++i) {
    ids[i] = static_cast<int32_t>((i * 7 + 3 * (rank / T)) % config.vocab_size);
    next[i] = static_cast<int32_t>((i * 11 + 5 + rank / T) % config.vocab_size);
  }
  // Ids at both ends of every rank's vocabulary shard (the embedding's and the loss's borders).
  const int64_t shard = config.vocab_size / T;
  for (int t = 0; t < T; ++t) {
    ids[2 * t] = static_cast<int32_t>(t * shard);
    next[2 * t + 1] = static_cast<int32_t>((t + 1) * shard - 1);
  }
  const Tensor tokens = Tensor::from_ints({B * N}, ids), targets = Tensor::from_ints({B * N}, next);

  for (Parameter& p : sharded.params().all())
    EXPECT_EQ(whole(sharded, p, p.value).to_vector(), reference.params().get(p.name).value.to_vector())
        << p.name << ": the initial weights are not the one-rank model's";

  ForwardState s, r;
  const LossParts ls = sharded.forward(s, tokens, targets, B);
  const LossParts lr = reference.forward(r, tokens, targets, B);
  EXPECT_NEAR(ls.lm_loss, lr.lm_loss, 2e-6 * (1 + std::abs(lr.lm_loss)));
  EXPECT_NEAR(ls.aux_loss, lr.aux_loss, 1e-6 * (1 + std::abs(lr.aux_loss)));
  EXPECT_EQ(s.logits.dim(1), shard) << "a rank holds only its vocabulary's logits";
  sharded.backward(s);
  reference.backward(r);
  // Sequence parallel: the norms' and routers' gradients are partial, and so are the experts' where
  // the group's ranks hold the same experts (each fed them its own tokens; split over the group
  // instead, each shard saw the group's tokens, gathered): summed over the group, as the trainer does.
  int marked = 0;
  for (Parameter& p : sharded.params().all()) {
    marked += p.sequence_parallel ? 1 : 0;
    if (c.sp && (p.sequence_parallel || (p.is_expert && !c.etp))) tp->all_reduce_sum(p.grad);
  }
  EXPECT_EQ(marked,
            c.sp ? static_cast<int>(config.num_layers * (c.mixtral ? 3 : 5) + (c.mixtral ? 1 : 2)) : 0)
      << "marked sequence_parallel: ln1, ln2 and the router per block, and the final norm";
  for (Parameter& p : sharded.params().all()) {
    const Tensor full = whole(sharded, p, p.grad);
    expect_gradient_matches(to_double(full), to_double(reference.params().get(p.name).grad), kTolerance,
                            p.name + " (rank " + std::to_string(rank) + ", T = " + std::to_string(T) + ")");
  }
  // The gathered logits (model.logits, collective) against the whole model's.
  const std::vector<double> gathered = to_double(sharded.logits(tokens, B));
  const std::vector<double> expected = to_double(reference.logits(tokens, B));
  ASSERT_EQ(gathered.size(), expected.size());
  double worst = 0;
  for (size_t i = 0; i < gathered.size(); ++i)
    worst = std::max(worst, std::abs(gathered[i] - expected[i]) / (1e-3 + std::abs(expected[i])));
  EXPECT_LT(worst, 1e-4) << "the gathered logits differ from the one-rank model's";
}

INSTANTIATE_TEST_SUITE_P(
    Families, TensorParallelModel,
    ::testing::Values(ModelCase{"GptT2", false, 0, 2}, ModelCase{"GptWorld", false, 0, 0},
                      ModelCase{"MixtralGqaT2", true, 2, 2}, ModelCase{"MixtralT4", true, 4, 4},
                      ModelCase{"GptT2Etp2", false, 0, 2, true},
                      ModelCase{"MixtralGqaT2Etp2", true, 2, 2, true},
                      ModelCase{"GptWorldEtpWorld", false, 0, 0, true},
                      ModelCase{"GptT2Sp", false, 0, 2, false, true},
                      ModelCase{"MixtralGqaT2Sp", true, 2, 2, false, true},
                      ModelCase{"MixtralWorldSp", true, 4, 0, false, true},
                      ModelCase{"GptT2SpEtp2", false, 0, 2, true, true},
                      ModelCase{"MixtralWorldSpEtpWorld", true, 4, 0, true, true}),
    [](const ::testing::TestParamInfo<ModelCase>& p) { return std::string(p.param.name); });

std::string shared_dir(const std::string& name) { return shared_corpus_dir(*g_world, "ampipe_tp_", name); }

// 4 heads (Mixtral: 2 query groups), so T = 2 and 4 divide them.
TrainOptions small_options(const std::string& dir, bool mixtral) {
  TrainOptions o = small_train_options(dir, mixtral, /*heads=*/4, /*query_groups=*/2);
  o.micro_batch_size = 1;
  o.global_batch_size = std::max(4, g_world->size());  // T = 1 on 8 ranks reads 8 sequences a step
  // The load-balancing loss is per micro-batch (as in Megatron), and T = 2 runs twice as many
  // micro-batches a step as T = 1: without it the step's gradient is the same whatever the split.
  o.model.aux_loss_weight = 0;
  o.train_iters = 20;
  o.eval_interval = 10;
  o.eval_iters = 2;
  return o;
}

std::vector<double> metric(const std::string& path, const char* key) {
  std::vector<double> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    out.push_back(nlohmann::json::parse(line)[key].get<double>());
  return out;
}

TrainResult train(TrainOptions o, const std::string& log_name = "") {
  std::string log;
  TrainResult r = run_training(
      o, [&log](const std::string& line) { log += line + "\n"; }, g_world.get());
  if (!log_name.empty() && g_world->rank() == 0) std::ofstream(log_name) << log;
  return r;
}

// `ampipe eval` of checkpoint `load` on dir/corpus.txt at tensor-parallel size T (every rank runs it;
// rank 0's printed loss, to every rank).
double eval_loss(const std::string& dir, const std::string& load, int T) {
  EvalCommand e;
  e.load = load;
  e.data_path = {dir + "/corpus.txt"};
  e.micro_batch_size = 2;
  e.tensor_parallel.tensor = T;
  ::testing::internal::CaptureStdout();
  run_eval_command(e, *g_world);
  const std::string out = ::testing::internal::GetCapturedStdout();
  double loss = 0;
  if (g_world->rank() == 0) loss = nlohmann::json::parse(out)["loss"].get<double>();
  g_world->all_reduce_sum(loss);
  return loss;
}

class TensorParallelTraining : public ::testing::TestWithParam<bool> {};

// T = 2 over the world (DP = W / 2) against T = 1 (DP = W), the same global batch of 4 sequences: the
// same samples each step, so the same losses and weights to rounding. Validation reads eval_iters x
// B x DP windows, so T = 2 takes twice the eval_iters to read the same ones. Then the layout changes
// through checkpoints: T = 2's iteration-10 checkpoint resumed at T = 1, and T = 1's at T = 2, each
// ending like the uninterrupted run.
TEST_P(TensorParallelTraining, FollowsTensorParallelSizeOneAndResumesAcrossLayouts) {
  const bool mixtral = GetParam();
  const std::string dir = shared_dir(mixtral ? "train_mixtral" : "train_gpt");
  TrainOptions one = small_options(dir, mixtral);
  one.save = dir + "/t1";
  one.save_interval = 10;
  one.metrics_file = dir + "/t1.jsonl";
  const TrainResult r1 = train(one);
  TrainOptions two = one;
  two.tensor_parallel_size = 2;
  two.eval_iters = 2 * one.eval_iters;
  two.save = dir + "/t2";
  two.metrics_file = dir + "/t2.jsonl";
  const TrainResult r2 = train(two, dir + "/t2.log");
  // AMPipe at T = 2 with the experts split too (ETP = 2; 3 chunks, the chunks flowing across the
  // two blocks, gradients reduced on the comm stream): the attention's and the experts' all-reduces
  // are comm-stream tasks; the same function.
  TrainOptions pipelined = two;
  pipelined.expert_tensor_parallel_size = 2;
  pipelined.schedule.kind = ScheduleKind::AmPipe;
  pipelined.schedule.pipe_degree = 3;
  pipelined.pipeline_scope = "model";
  pipelined.overlap_grad_reduce = true;
  pipelined.save = dir + "/t2_etp2";
  pipelined.save_interval = 0;
  pipelined.metrics_file = dir + "/t2_ampipe.jsonl";
  train(pipelined);
  // Sequence parallelism at T = 2: each rank of the group holds and routes its own half of every
  // sequence's positions. Sequential, and AMPipe in model scope with the gathers and reduce-scatters
  // on the comm stream, gradients reduced there too (the norms' and routers' summed over the group
  // first) by the distributed optimizer, its parameter gathers overlapped, micro-batches paired.
  TrainOptions sequence = two;
  sequence.sequence_parallel = true;
  sequence.save = dir + "/t2_sp";
  sequence.save_interval = 0;
  sequence.metrics_file = dir + "/t2_sp.jsonl";
  const TrainResult rsp = train(sequence);
  // The experts split too, gathering the group's rows: over the tensor group (ETP = 2), and on 4
  // ranks over all of them (ETP = 4, which T = 2 does not hold: only sequence parallelism allows it).
  TrainOptions sequence_pipelined = sequence;
  sequence_pipelined.expert_tensor_parallel_size = g_world->size() == 4 ? 4 : 2;
  // Paired micro-batches (each backward beside the next forward, merged by the cost model's seconds
  // of the whole-sequence plan) with the experts' weight gradients delayed.
  sequence_pipelined.overlap_moe_expert_parallel_comm = "on";
  sequence_pipelined.delay_wgrad_compute = true;
  sequence_pipelined.hardware = "cpu-2rank-200mbit";
  sequence_pipelined.schedule.kind = ScheduleKind::AmPipe;
  sequence_pipelined.schedule.pipe_degree = 2;
  sequence_pipelined.pipeline_scope = "model";
  sequence_pipelined.overlap_grad_reduce = true;
  sequence_pipelined.use_distributed_optimizer = true;
  sequence_pipelined.overlap_param_gather = true;
  sequence_pipelined.save = dir + "/t2_sp_ampipe";
  sequence_pipelined.metrics_file = dir + "/t2_sp_ampipe.jsonl";
  train(sequence_pipelined);
  EXPECT_NEAR(rsp.final_val_loss, r1.final_val_loss, 1e-4 * (1 + std::abs(r1.final_val_loss)));
  EXPECT_NEAR(r2.final_val_loss, r1.final_val_loss, 1e-4 * (1 + std::abs(r1.final_val_loss)));

  TrainOptions t2_then_t1 = one;  // T = 2's checkpoint at iteration 10, resumed at T = 1
  t2_then_t1.save = dir + "/t2_t1";
  t2_then_t1.metrics_file = dir + "/t2_t1.jsonl";
  t2_then_t1.load = dir + "/t2/iter_0000010";
  const TrainResult r21 = train(t2_then_t1);
  TrainOptions t1_then_t2 = two;  // and T = 1's resumed at T = 2, the experts split too (ETP = 2)
  t1_then_t2.expert_tensor_parallel_size = 2;
  t1_then_t2.save = dir + "/t1_t2";
  t1_then_t2.metrics_file = dir + "/t1_t2.jsonl";
  t1_then_t2.load = dir + "/t1/iter_0000010";
  const TrainResult r12 = train(t1_then_t2);
  EXPECT_EQ(r21.iterations, 20);
  EXPECT_EQ(r12.iterations, 20);

  // eval and sample of T = 2's checkpoint at T = 2 (the windows split over DP = W / 2, each step's
  // logits gathered) and at T = 1: the same loss; sample prints the prompt and its continuation.
  const double eval2 = eval_loss(dir, two.save, 2), eval1 = eval_loss(dir, two.save, 1);
  EXPECT_GT(eval1, 0);
  EXPECT_NEAR(eval2, eval1, 1e-6 * eval1);
  SampleCommand sample;
  sample.load = two.save;
  sample.prompt = "And the LORD";
  sample.tokens = 8;
  sample.tensor_parallel.tensor = 2;
  ::testing::internal::CaptureStdout();
  run_sample_command(sample, *g_world);
  const std::string text = ::testing::internal::GetCapturedStdout();
  if (g_world->rank() == 0) {
    EXPECT_EQ(text.rfind("And the LORD", 0), 0u) << text;
  }

  if (g_world->rank() == 0) {
    std::ifstream log_file(dir + "/t2.log");
    const std::string log((std::istreambuf_iterator<char>(log_file)), std::istreambuf_iterator<char>());
    EXPECT_NE(log.find("tensor-parallel size 2"), std::string::npos) << log;
    EXPECT_NE(log.find("  tp groups: [0 1]"), std::string::npos) << log;
    const std::vector<double> a = metric(one.metrics_file, "loss"), b = metric(two.metrics_file, "loss");
    ASSERT_EQ(a.size(), 20u);
    ASSERT_EQ(b.size(), 20u);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(b[i], a[i], 1e-4 * (1 + std::abs(a[i]))) << "iteration " << i + 1;
    const std::vector<double> an = metric(one.metrics_file, "grad_norm");
    for (const TrainOptions* run : {&pipelined, &sequence, &sequence_pipelined}) {
      const std::vector<double> p = metric(run->metrics_file, "loss"),
                                pn = metric(run->metrics_file, "grad_norm");
      ASSERT_EQ(p.size(), 20u) << run->metrics_file;
      ASSERT_EQ(pn.size(), 20u) << run->metrics_file;
      for (size_t i = 0; i < p.size(); ++i) {
        EXPECT_NEAR(p[i], a[i], 1e-4 * (1 + std::abs(a[i]))) << run->metrics_file << ", iteration " << i + 1;
        EXPECT_NEAR(pn[i], an[i], 1e-4 * an[i]) << run->metrics_file << ", grad_norm, iteration " << i + 1;
      }
    }
    // The gradient norm before clipping: AdamW would hide a wrongly scaled gradient from the losses,
    // not from this (the shards' squares summed over the tensor group, the whole parameters once).
    const std::vector<double> na = metric(one.metrics_file, "grad_norm"),
                              nb = metric(two.metrics_file, "grad_norm");
    ASSERT_EQ(nb.size(), na.size());
    for (size_t i = 0; i < na.size(); ++i)
      EXPECT_NEAR(nb[i], na[i], 1e-4 * na[i]) << "grad_norm, iteration " << i + 1;
    for (const std::string& resumed : {t2_then_t1.metrics_file, t1_then_t2.metrics_file}) {
      const std::vector<double> c = metric(resumed, "loss");
      ASSERT_EQ(c.size(), 10u) << resumed;
      for (size_t i = 0; i < c.size(); ++i)
        EXPECT_NEAR(c[i], a[10 + i], 1e-4 * (1 + std::abs(a[10 + i]))) << resumed << " iteration " << 11 + i;
    }
    // Gathered checkpoints: every tensor whole, whatever T, and the same weights to rounding.
    const SafetensorsFile f1 = read_safetensors(one.save + "/iter_0000020/model.safetensors");
    for (const std::string& other : {two.save, t2_then_t1.save, t1_then_t2.save, pipelined.save,
                                     sequence.save, sequence_pipelined.save}) {
      const SafetensorsFile f = read_safetensors(other + "/iter_0000020/model.safetensors");
      ASSERT_EQ(f.tensors.size(), f1.tensors.size()) << other;
      for (const auto& [name, t] : f1.tensors) {
        ASSERT_TRUE(f.tensors.count(name)) << other << ": " << name;
        ASSERT_EQ(f.tensors.at(name).shape(), t.shape()) << other << ": " << name;
        testing::expect_close(f.tensors.at(name), to_double(t), 5e-5, 1e-3, (other + ": " + name).c_str());
      }
    }
  }
  g_world->barrier();
}

INSTANTIATE_TEST_SUITE_P(Families, TensorParallelTraining, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? std::string("Mixtral") : std::string("Gpt");
                         });

// --use-distributed-optimizer at T = ETP = 2 (on 4 ranks DP = 2: each rank's dense spaces are its
// own shards and whole parameters, sharded over its data-parallel pair), with its parameter
// all-gathers overlapped, against the plain optimizer on the same layout: the same losses and
// gradient norms (the norm weights a whole parameter's owned elements by 1 / T, so each counts
// once). Its checkpoints in the sharded format (each rank's owned runs of its shards at their
// places in the whole tensors, a whole parameter written by one rank of its group) resume at
// T = ETP = 1 like the plain run and evaluate like its gathered checkpoint.
TEST(TensorParallelTraining, DistributedOptimizerFollowsThePlainOne) {
  const std::string dir = shared_dir("distributed");
  TrainOptions plain = small_options(dir, false);
  plain.tensor_parallel_size = 2;
  plain.expert_tensor_parallel_size = 2;
  plain.train_iters = 12;
  plain.eval_interval = 0;
  plain.metrics_file = dir + "/plain.jsonl";
  plain.save = dir + "/plain";
  train(plain);
  TrainOptions sharded = plain;
  sharded.use_distributed_optimizer = true;
  sharded.overlap_param_gather = true;
  sharded.overlap_grad_reduce = true;
  sharded.schedule.kind = ScheduleKind::AmPipe;  // the gathers ride the streamed executor
  sharded.schedule.pipe_degree = 2;
  sharded.metrics_file = dir + "/sharded.jsonl";
  sharded.save = dir + "/sharded";
  sharded.ckpt_format = "sharded";  // each rank writes its owned runs, at their places in the whole tensors
  sharded.save_interval = 6;
  train(sharded);
  // The sharded checkpoint at another layout: iteration 6 resumed at T = ETP = 1 (parameters and
  // moments from the pieces) ends like the plain run, and the final one evaluates like the plain
  // run's gathered checkpoint.
  TrainOptions resumed = small_options(dir, false);
  resumed.train_iters = 12;
  resumed.eval_interval = 0;
  resumed.load = sharded.save + "/iter_0000006";
  resumed.metrics_file = dir + "/resumed.jsonl";
  train(resumed);
  const double sharded_eval = eval_loss(dir, sharded.save, 1), plain_eval = eval_loss(dir, plain.save, 1);
  EXPECT_NEAR(sharded_eval, plain_eval, 1e-5 * plain_eval);
  if (g_world->rank() == 0) {
    for (const char* key : {"loss", "grad_norm"}) {
      const std::vector<double> a = metric(plain.metrics_file, key), b = metric(sharded.metrics_file, key);
      ASSERT_EQ(a.size(), 12u);
      ASSERT_EQ(b.size(), 12u);
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_NEAR(b[i], a[i], 1e-5 * (1 + std::abs(a[i]))) << key << " " << i + 1;
    }
    const std::vector<double> a = metric(plain.metrics_file, "loss"),
                              c = metric(resumed.metrics_file, "loss");
    ASSERT_EQ(c.size(), 6u);
    for (size_t i = 0; i < c.size(); ++i)
      EXPECT_NEAR(c[i], a[6 + i], 1e-4 * (1 + std::abs(a[6 + i]))) << "resumed at T = 1, iteration " << 7 + i;
  }
  g_world->barrier();
}

// The vocabulary is padded to a multiple of the divisor x T (256 byte ids: 256 at T = 1 and 2, 512
// at T = 4), and a resumed run keeps the checkpoint's padding wherever T splits it: T = 4's checkpoint
// resumes at T = 1 and T = 1's at T = 4, the start-up log naming the checkpoint's vocabulary.
TEST(TensorParallelTraining, ResumesAcrossTheVocabularyPaddingOfAnotherT) {
  if (g_world->size() != 4) GTEST_SKIP() << "needs 4 ranks for T = 4";
  const std::string dir = shared_dir("padding");
  TrainOptions four = small_options(dir, false);
  four.tensor_parallel_size = 4;
  four.train_iters = 6;  // one schedule of 6 iterations, run in three pieces
  four.save = dir + "/t4";
  four.exit_interval = 2;
  train(four);
  TrainOptions one = small_options(dir, false);
  one.train_iters = 6;
  one.exit_interval = 4;
  one.load = dir + "/t4";
  one.save = dir + "/t4_t1";
  EXPECT_EQ(train(one).iterations, 4);
  TrainOptions back = four;  // T = 1's checkpoint (512 ids, from T = 4) at T = 4 again
  back.exit_interval = 0;
  back.load = dir + "/t4_t1";
  back.save = dir + "/t4_t1_t4";
  EXPECT_EQ(train(back).iterations, 6);
  if (g_world->rank() == 0) {
    const SafetensorsFile f = read_safetensors(back.save + "/iter_0000006/model.safetensors");
    EXPECT_EQ(f.tensors.at("embed.token.weight").shape(), (Shape{512, 16}));
  }
}

// Refused before any work, on every rank, naming the flag: what T > 1 does not combine with yet,
// and a T that does not divide the heads.
TEST(TensorParallelTraining, WhatItDoesNotRunYetIsRefusedNamingTheFlag) {
  const std::string dir = shared_dir("refusals");
  TrainOptions o = small_options(dir, false);
  o.tensor_parallel_size = 2;
  TrainOptions odd = o;  // positions split over the group
  odd.sequence_parallel = true;
  odd.model.max_seq_len = 15;
  const std::string msg = error_of([&] { train(odd); });
  EXPECT_NE(msg.find("--seq-length 15 is not divisible by 2"), std::string::npos) << msg;
  TrainOptions etp_over_t = o;  // without --sequence-parallel ETP must divide T
  etp_over_t.expert_tensor_parallel_size = 4;
  etp_over_t.model.ffn_hidden_size = 24;
  if (g_world->size() == 4) {
    const std::string e = error_of([&] { train(etp_over_t); });
    EXPECT_NE(e.find("--expert-tensor-parallel-size 4"), std::string::npos) << e;
  }
  if (g_world->size() >= 2) {
    TrainOptions heads = o;
    heads.tensor_parallel_size = g_world->size() == 4 ? 4 : 2;
    heads.model.num_attention_heads = heads.tensor_parallel_size == 4 ? 2 : 1;
    const std::string e = error_of([&] { train(heads); });
    EXPECT_NE(e.find("--tensor-model-parallel-size " + std::to_string(heads.tensor_parallel_size)),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("heads"), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_tensor_parallel_model");
}
