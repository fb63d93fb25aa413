// Expert and data parallelism under mpirun (2 and 4 ranks): expert-parallel MoE equals one rank
// holding all experts; R ranks with micro-batch B train exactly like one rank with R*B; a
// checkpoint written by R ranks holds every expert. Run by CTest as `mpirun -np R`.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "comm/timed_communicator.h"
#include "comm/world.h"
#include "core/random.h"
#include "grad_check.h"
#include "model/gpt.h"
#include "model/moe/moe_layer.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/mpi_train_fixture.h"
#include "parallel/pipe_cases.h"
#include "pipeline/streamed_block.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/indexed_dataset.h"
#include "train/safetensors.h"
#include "train/trainer.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using namespace ::ampipe::testing;  // NOLINT: the shared pipeline cases (parallel/pipe_cases.h)
using testing::expect_close;
using testing::random_tensor;

struct MoeCase {
  int64_t k;
  double capacity_factor;
  bool mixtral = false;  // SwiGLU experts without biases, gates normalised for every k
  bool bf16 = false;     // --bf16: bf16 GEMM operands and all-to-alls, against a bf16 reference
};

ModelConfig moe_config(const MoeCase& c) {
  ModelConfig m;
  if (c.mixtral) m.set_family("mixtral");
  m.hidden_size = 8;
  m.num_attention_heads = 1;
  m.num_experts = 4;
  m.ffn_hidden_size = 6;
  m.top_k = c.k;
  m.capacity_factor = c.capacity_factor;
  m.bf16 = c.bf16;
  return m;
}

// Full [E, ...] parameter values from a seed; each layout copies its slice.
void set_parameters(ParameterRegistry& params, int64_t experts) {
  uint64_t seed = 40;
  for (Parameter& p : params.all()) {
    Shape full = p.value.shape();
    if (p.is_expert) full[0] = experts;
    Tensor whole = random_tensor(full, seed++, 0.5f);
    p.value.copy_from(p.is_expert ? whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0)) : whole);
  }
}

class ExpertParallel : public ::testing::TestWithParam<MoeCase> {};

TEST_P(ExpertParallel, ForwardAndBackwardEqualOneRankHoldingAllExperts) {
  const MoeCase c = GetParam();
  const int R = g_world->size(), rank = g_world->rank();
  ModelConfig config = moe_config(c);
  TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
  ASSERT_EQ(groups.expert_parallel_size, std::min(R, 4));

  ParameterRegistry ep_params;
  MoeLayer ep_layer(config, ep_params, "", ModelParallel{groups.expert_group.get(), nullptr});
  set_parameters(ep_params, config.num_experts);
  ParameterRegistry ref_params;
  MoeLayer ref_layer(config, ref_params, "");
  set_parameters(ref_params, config.num_experts);
  const DType compute = c.bf16 ? DType::BF16 : DType::F32;
  ep_params.set_compute_dtype(compute);  // fills the bf16 copies from the values just set
  ref_params.set_compute_dtype(compute);
  // Both sides round the same float32 values to bf16: what remains is float32 reassociation.
  const double tol = c.bf16 ? 1e-4 : 1e-5;

  // Rank s's tokens: uneven counts per rank, so experts receive different numbers from each.
  auto tokens_of = [&](int s) { return random_tensor({9 + 3 * s, 8}, 100 + s); };
  auto grad_of = [&](int s) { return random_tensor({9 + 3 * s, 8}, 200 + s); };
  const double aux_scale = 0.05;

  MoeContext ctx;
  RoutingStats stats;
  Tensor y = ep_layer.forward(ctx, tokens_of(rank), stats);
  Tensor dx = ep_layer.backward(ctx, grad_of(rank), stats, aux_scale);

  // The reference runs every rank of this rank's expert group on all experts; expert gradients
  // sum over those ranks' tokens (they all reach this rank's experts), dense ones are this rank's.
  const int group_first = rank - groups.expert_group->rank();
  for (int s = group_first; s < group_first + groups.expert_parallel_size; ++s) {
    Tensor dense_before;
    MoeContext rctx;
    RoutingStats rstats;
    Tensor ry = ref_layer.forward(rctx, tokens_of(s), rstats);
    if (s == rank) {
      for (Parameter& p : ref_params.all())
        if (!p.is_expert) p.grad.zero();
      Tensor rdx = ref_layer.backward(rctx, grad_of(s), rstats, aux_scale);
      expect_close(y, testing::to_double(ry), tol, tol, "output");
      expect_close(dx, testing::to_double(rdx), tol, 10 * tol, "input gradient");
      for (const Parameter& p : ep_params.all())
        if (!p.is_expert)
          expect_close(p.grad, testing::to_double(ref_params.get(p.name).grad), tol, 10 * tol,
                       p.name.c_str());
    } else {
      std::vector<std::vector<float>> saved;
      for (Parameter& p : ref_params.all()) saved.push_back(p.is_expert ? std::vector<float>() : p.grad.to_vector());
      ref_layer.backward(rctx, grad_of(s), rstats, aux_scale);
      size_t i = 0;
      for (Parameter& p : ref_params.all()) {  // keep only this rank's dense gradients
        if (!p.is_expert) p.grad.copy_from(Tensor::from(p.grad.shape(), saved[i]));
        ++i;
      }
    }
  }
  for (const Parameter& p : ep_params.all()) {
    if (!p.is_expert) continue;
    Tensor whole = ref_params.get(p.name).grad;
    expect_close(p.grad, testing::to_double(whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0))),
                 tol, 10 * tol, p.name.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Routing, ExpertParallel,
                         ::testing::Values(MoeCase{1, 0.0}, MoeCase{2, 0.0}, MoeCase{1, 1.0},
                                           MoeCase{2, 0.75}, MoeCase{1, 0.0, true}, MoeCase{2, 0.0, true},
                                           MoeCase{2, 0.0, false, true}, MoeCase{1, 1.0, false, true},
                                           MoeCase{2, 0.0, true, true}));

// --bf16 halves the bytes of every MoE all-to-all, exactly: the same routing (the router runs in
// float32 either way) sends the same rows, two bytes per element instead of four, in all four
// exchanges (dispatch and combine, forward and backward). The per-expert counts stay int32.
TEST(ExpertParallel, Bf16AllToAllsCarryHalfTheBytesOfFloat32) {
  const int rank = g_world->rank();
  std::array<int64_t, 3> sent[2];
  for (bool bf16 : {false, true}) {
    ModelConfig config = moe_config(MoeCase{2, 0.0, true, bf16});
    TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
    TimedCommunicator counted(*groups.expert_group);
    ParameterRegistry params;
    MoeLayer layer(config, params, "", ModelParallel{&counted, nullptr});
    set_parameters(params, config.num_experts);
    params.set_compute_dtype(bf16 ? DType::BF16 : DType::F32);
    MoeContext ctx;
    RoutingStats stats;
    layer.forward(ctx, random_tensor({9 + 3 * rank, 8}, 100 + rank), stats);
    layer.backward(ctx, random_tensor({9 + 3 * rank, 8}, 200 + rank), stats, 0.05);
    for (DType t : {DType::F32, DType::I32, DType::BF16})
      sent[bf16][static_cast<size_t>(t)] = counted.all_to_all_bytes(t);
  }
  const size_t f32 = static_cast<size_t>(DType::F32), bf = static_cast<size_t>(DType::BF16),
               i32 = static_cast<size_t>(DType::I32);
  EXPECT_GT(sent[0][f32], 0);
  EXPECT_EQ(sent[0][bf], 0);
  EXPECT_EQ(sent[1][f32], 0) << "a float32 all-to-all under --bf16";
  EXPECT_EQ(2 * sent[1][bf], sent[0][f32]);
  EXPECT_EQ(sent[1][i32], sent[0][i32]);  // the counts exchange is the same
}

std::string shared_dir(const std::string& name) {
  // The same text as an indexed dataset too: one document per sentence, byte tokens.
  return shared_corpus_dir(*g_world, "ampipe_parallel_", name, [](const std::string& dir) {
    IndexedDatasetWriter writer(dir + "/corpus_text_document", IndexedDType::U16);
    for (int i = 0; i < 400; ++i) {
      const std::string sentence = i % 2 ? "Speak unto the children of Israel. " : "And the LORD spake unto Moses. ";
      writer.add_document(byte_encode(sentence + std::to_string(i)));
    }
    writer.finalize();
  });
}

TrainOptions small_options(const std::string& dir, bool mixtral = false) {
  return small_train_options(dir, mixtral, /*heads=*/2, /*query_groups=*/1);
}

// One value per metrics line: the training loss, or another key.
std::vector<double> losses(const std::string& metrics, const char* key = "loss") {
  std::vector<double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line)[key].get<double>());
  return out;
}

// On a text file and on an indexed dataset (samples named by (seed, iteration) alone).
class DataParallelRanks : public ::testing::TestWithParam<bool> {};

TEST_P(DataParallelRanks, RRanksWithMicroBatchBTrainLikeOneRankWithRTimesB) {
  const int R = g_world->size();
  const bool indexed = GetParam();
  const std::string dir = shared_dir(indexed ? "dp_indexed" : "dp");
  auto small = [&](const std::string& d) {
    TrainOptions o = small_options(d);
    if (indexed) {
      o.data_path = {d + "/corpus_text_document"};
      o.split = "90,10,0";
    }
    return o;
  };
  TrainOptions parallel = small(dir);
  parallel.micro_batch_size = 2;
  parallel.save = dir + "/parallel";
  parallel.metrics_file = dir + "/parallel.jsonl";
  std::string log;  // rank 0's start-up lines name the layout (train/layout.h describe)
  TrainResult rp = run_training(
      parallel, [&log](const std::string& line) { log += line + "\n"; }, g_world.get());

  if (g_world->rank() == 0) {  // the single-rank reference, on rank 0 alone
    EXPECT_NE(log.find("parallel layout of " + std::to_string(R) + " rank(s)"), std::string::npos) << log;
    EXPECT_NE(log.find("  ep groups: [0 1"), std::string::npos) << log;
    TrainOptions single = small(dir);
    single.micro_batch_size = 2 * R;
    single.save = dir + "/single";
    single.metrics_file = dir + "/single.jsonl";
    TrainResult rs = run_training(single, [](const std::string&) {});
    std::vector<double> a = losses(parallel.metrics_file), b = losses(single.metrics_file);
    ASSERT_EQ(a.size(), 12u);
    ASSERT_EQ(b.size(), 12u);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-5 * (1 + std::abs(b[i]))) << "iteration " << i + 1;
    EXPECT_NEAR(rp.final_val_loss, rs.final_val_loss, 2e-5);
    // Same parameters at the end, every expert included (the parallel checkpoint is gathered).
    SafetensorsFile fp = read_safetensors(parallel.save + "/iter_0000012/model.safetensors");
    SafetensorsFile fs1 = read_safetensors(single.save + "/iter_0000012/model.safetensors");
    ASSERT_EQ(fp.tensors.size(), fs1.tensors.size());
    for (const auto& [name, t] : fs1.tensors) {
      ASSERT_TRUE(fp.tensors.count(name)) << name;
      ASSERT_EQ(fp.tensors.at(name).shape(), t.shape()) << name;
      expect_close(fp.tensors.at(name), testing::to_double(t), 2e-5, 1e-3, name.c_str());
    }
  }
  g_world->barrier();
}

INSTANTIATE_TEST_SUITE_P(Data, DataParallelRanks, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? std::string("IndexedDataset") : std::string("TextFile");
                         });

// Gradient accumulation (--global-batch-size): R ranks x micro-batch 1 x 2 micro-batches a step
// read exactly the samples of one rank with micro-batch 2R, and (aux loss coefficient 0: the aux
// loss is per micro-batch, as in Megatron) train to the same losses and parameters, to rounding.
// The parallel run reduces gradients overlapped with the last micro-batch's backward.
TEST(DataParallel, AccumulatedMicroBatchesTrainLikeOneLargerBatch) {
  const int R = g_world->size();
  const std::string dir = shared_dir("accumulate");
  TrainOptions parallel = small_options(dir);
  parallel.model.aux_loss_weight = 0;
  parallel.micro_batch_size = 1;
  parallel.global_batch_size = 2 * R;
  parallel.overlap_grad_reduce = true;
  parallel.save = dir + "/parallel";
  parallel.metrics_file = dir + "/parallel.jsonl";
  run_training(parallel, [](const std::string&) {}, g_world.get());
  if (g_world->rank() == 0) {
    TrainOptions single = small_options(dir);
    single.model.aux_loss_weight = 0;
    single.micro_batch_size = 2 * R;
    single.save = dir + "/single";
    single.metrics_file = dir + "/single.jsonl";
    run_training(single, [](const std::string&) {});
    const std::vector<double> a = losses(parallel.metrics_file), b = losses(single.metrics_file);
    ASSERT_EQ(a.size(), 12u);
    ASSERT_EQ(b.size(), 12u);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-5 * (1 + std::abs(b[i]))) << "iteration " << i + 1;
    // The gradient is the mean loss's (AdamW would hide a scale error in the parameters).
    const std::vector<double> ga = losses(parallel.metrics_file, "grad_norm"),
                              gb = losses(single.metrics_file, "grad_norm");
    for (size_t i = 0; i < ga.size(); ++i) EXPECT_NEAR(ga[i], gb[i], 1e-4 * gb[i]) << "iteration " << i + 1;
    SafetensorsFile fp = read_safetensors(parallel.save + "/iter_0000012/model.safetensors");
    SafetensorsFile fs1 = read_safetensors(single.save + "/iter_0000012/model.safetensors");
    for (const auto& [name, t] : fs1.tensors) {
      ASSERT_TRUE(fp.tensors.count(name)) << name;
      expect_close(fp.tensors.at(name), testing::to_double(t), 2e-5, 1e-3, name.c_str());
    }
  }
  g_world->barrier();
}

TEST(DataParallel, ParallelResumeReproducesTheUninterruptedRun) {
  const std::string dir = shared_dir("resume");
  TrainOptions full = small_options(dir);
  full.micro_batch_size = 2;
  full.metrics_file = dir + "/full.jsonl";
  run_training(full, [](const std::string&) {}, g_world.get());
  TrainOptions first = full;
  first.metrics_file = dir + "/resumed.jsonl";
  first.save = dir + "/ckpt";
  first.exit_interval = 5;
  run_training(first, [](const std::string&) {}, g_world.get());
  TrainOptions second = full;
  second.metrics_file = dir + "/resumed.jsonl";
  second.load = dir + "/ckpt";
  run_training(second, [](const std::string&) {}, g_world.get());
  if (g_world->rank() == 0) {
    EXPECT_EQ(losses(full.metrics_file), losses(dir + "/resumed.jsonl"));
  }
  g_world->barrier();
}

// AMPipe chunks (each with its own all-to-all across the expert group) train like the sequential
// block on the same ranks, in both families.
class AmPipeOnSeveralRanks : public ::testing::TestWithParam<bool> {};

TEST_P(AmPipeOnSeveralRanks, FollowsSequential) {
  const bool mixtral = GetParam();
  const std::string dir = shared_dir(mixtral ? "ampipe_mixtral" : "ampipe");
  TrainOptions seq = small_options(dir, mixtral);
  seq.micro_batch_size = 2;
  seq.metrics_file = dir + "/seq.jsonl";
  run_training(seq, [](const std::string&) {}, g_world.get());
  TrainOptions pipe = seq;
  pipe.schedule.kind = ScheduleKind::AmPipe;
  pipe.schedule.chunk_boundaries = {0, 3, 10, 16};
  pipe.metrics_file = dir + "/pipe.jsonl";
  run_training(pipe, [](const std::string&) {}, g_world.get());
  TrainOptions streamed = pipe;
  streamed.schedule.chunk_boundaries = {};
  streamed.schedule.pipe_degree = 3;
  streamed.metrics_file = dir + "/streamed.jsonl";
  run_training(streamed, [](const std::string&) {}, g_world.get());
  // The MoE side cut on its own (token buffer), balanced attention chunks, interleaved order.
  TrainOptions split = pipe;
  split.schedule.chunk_boundaries = {};
  split.schedule.pipe_degree = 3;
  split.schedule.chunk_policy = ChunkPolicy::Balanced;
  split.schedule.balance_weight = 8;
  split.schedule.moe_pipe_degree = 2;
  split.stage_order = "interleaved";
  split.metrics_file = dir + "/split.jsonl";
  run_training(split, [](const std::string&) {}, g_world.get());
  TrainOptions moe_pipe = seq;
  moe_pipe.schedule.kind = ScheduleKind::MoePipe;
  moe_pipe.schedule.pipe_degree = 4;
  moe_pipe.metrics_file = dir + "/moe_pipe.jsonl";
  run_training(moe_pipe, [](const std::string&) {}, g_world.get());
  if (g_world->rank() == 0) {
    const std::vector<double> a = losses(seq.metrics_file);
    for (const TrainOptions* o : {&pipe, &streamed, &split, &moe_pipe}) {
      const std::vector<double> b = losses(o->metrics_file);
      ASSERT_EQ(a.size(), b.size()) << o->metrics_file;
      for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4) << o->metrics_file << " iteration " << i + 1;
    }
  }
  g_world->barrier();
}

INSTANTIATE_TEST_SUITE_P(Family, AmPipeOnSeveralRanks, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? std::string("Mixtral") : std::string("Gpt");
                         });

// One forward and backward of the whole model on every rank of the world (experts spread over it,
// each rank on its own tokens): every pipelined schedule gives this rank the loss, logits and
// every gradient (dense and its own experts) of `sequential`, over pipe degrees, uneven, balanced
// and explicit boundaries, a MoE side cut on its own, both stage orders, top-1 and top-2, in both
// families. With a capacity factor each MoE chunk is its own routing group (docs/MODEL.md,
// "Capacity"), so there the reference is moe-pipe with the same MoE-side cut.




// With a capacity, the schedule whose routing groups are the same as p's: moe-pipe cutting the MoE
// side into the same equal chunks (stage-major). Null when p's MoE side is not an equal cut, or p
// is that schedule itself.
std::unique_ptr<PipeConfig> capacity_reference(const PipeConfig& p, const ModelConfig& model) {
  const std::vector<int64_t> moe = schedule_of(p, model).plan(kPipeSeqLen).moe;
  const int64_t M = static_cast<int64_t>(moe.size()) - 1;
  if (M < 2 || moe != equal_boundaries(kPipeSeqLen, M)) return nullptr;
  if (p.kind == ScheduleKind::MoePipe && p.order == StageOrder::StageMajor) return nullptr;
  return std::make_unique<PipeConfig>(
      PipeConfig{"moe-pipe reference", ScheduleKind::MoePipe, M, {}, ChunkPolicy::Equal, 0, StageOrder::StageMajor});
}

struct PipeCase {
  bool mixtral;
  int64_t top_k;
  bool capacity;  // kDropCapacity instead of dropless
  size_t config;  // into pipe_configs()
  bool bf16 = false;  // --bf16, against the bf16 reference
};

std::vector<PipeCase> pipe_cases() {
  std::vector<PipeCase> cases;
  for (bool capacity : {false, true})
    for (bool mixtral : {false, true})
      for (int64_t k : {1, 2})
        for (size_t i = 0; i < pipe_configs().size(); ++i) {
          const ModelConfig model = pipe_model(mixtral, k, capacity ? kDropCapacity : 0.0);
          if (!capacity || capacity_reference(pipe_configs()[i], model)) cases.push_back({mixtral, k, capacity, i});
        }
  // --bf16 (dropless, top-2, both families): moe-pipe, ampipe, and a MoE side cut on its own.
  for (bool mixtral : {false, true})
    for (size_t i : {size_t{1}, size_t{3}, size_t{8}}) cases.push_back({mixtral, 2, false, i, true});
  return cases;
}

std::string pipe_case_name(const PipeCase& c) {
  return std::string(c.mixtral ? "Mixtral" : "Gpt") + "_Top" + std::to_string(c.top_k) +
         (c.capacity ? "_Capacity_" : "_Dropless_") + (c.bf16 ? "Bf16_" : "") + pipe_configs()[c.config].name;
}
std::string pipe_test_name(const ::testing::TestParamInfo<PipeCase>& info) { return pipe_case_name(info.param); }
void PrintTo(const PipeCase& c, std::ostream* out) { *out << pipe_case_name(c); }



// One forward and backward on this rank's tokens (collective over the world).
RankRun run_on_ranks(const ModelConfig& config, const TrainingGroups& groups, const PipeConfig* pipe,
                     std::vector<RecomputeGroup> recompute = {}, PipelineScope scope = PipelineScope::Block) {
  GptMoe model(config, groups.model_parallel());
  model.initialize(11);
  set_pipe_parameters(model);
  model.set_recompute(std::move(recompute));
  std::unique_ptr<StreamedBlock> executor;
  if (pipe) executor = std::make_unique<StreamedBlock>(schedule_of(*pipe, config), pipe->order, nullptr, 0, scope);
  model.set_block_executor(executor.get());
  ForwardState state;
  RankRun r;
  forward_rank_batch(model, 5, groups.rank(), state, r);  // every rank its own tokens
  model.backward(state);
  collect_gradients(model, r);
  return r;
}



// The reference of each (family, k, routing, reference schedule), computed once; every rank runs
// the same tests in the same order, so every rank computes it at the same point.
const RankRun& pipe_reference(const ModelConfig& config, const TrainingGroups& groups, const PipeConfig* pipe) {
  static std::map<std::string, RankRun> cache;
  std::ostringstream key;
  key << config.family << " k=" << config.top_k << " cf=" << config.capacity_factor
      << (config.bf16 ? " bf16 " : " ")
      << (pipe ? schedule_of(*pipe, config).describe() : std::string("sequential"));
  auto it = cache.find(key.str());
  if (it == cache.end()) {
    it = cache.emplace(key.str(), run_on_ranks(config, groups, pipe)).first;
    // A tensor whose reference gradient is zero (an expert no token reaches) would check nothing.
    for (size_t i = 0; i < it->second.grads.size(); ++i) {
      bool nonzero = false;
      for (float g : it->second.grads[i]) nonzero = nonzero || g != 0.0f;
      EXPECT_TRUE(nonzero) << key.str() << ": the reference gradient of " << it->second.names[i] << " is zero";
    }
  }
  return it->second;
}


class PipelinedOnSeveralRanks : public ::testing::TestWithParam<PipeCase> {};

TEST_P(PipelinedOnSeveralRanks, LossAndEveryGradientEqualTheReferenceOnEveryRank) {
  const PipeCase c = GetParam();
  const PipeConfig& pipe = pipe_configs()[c.config];
  ModelConfig config = pipe_model(c.mixtral, c.top_k, c.capacity ? kDropCapacity : 0.0);
  config.bf16 = c.bf16;
  const TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
  EXPECT_EQ(groups.expert_parallel_size, std::min(g_world->size(), 4));
  const std::unique_ptr<PipeConfig> ref_pipe = c.capacity ? capacity_reference(pipe, config) : nullptr;
  const RankRun& want = pipe_reference(config, groups, ref_pipe.get());
  const RankRun got = run_on_ranks(config, groups, &pipe);
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + schedule_of(pipe, config).describe() + " " +
                 stage_order_name(pipe.order) + " against " +
                 (ref_pipe ? schedule_of(*ref_pipe, config).describe() : std::string("sequential")));
    expect_same_on_this_rank(got, want, c.bf16);
    if (c.capacity) {  // the factor drops pairs: the dropless loss differs
      const RankRun& dropless = pipe_reference(pipe_model(c.mixtral, c.top_k, 0.0), groups, nullptr);
      EXPECT_GT(std::abs(want.loss.lm_loss - dropless.loss.lm_loss), 1e-4) << "capacity dropped nothing";
    }
  }
  expect_no_rank_failed(*g_world);
}

INSTANTIATE_TEST_SUITE_P(Schedules, PipelinedOnSeveralRanks, ::testing::ValuesIn(pipe_cases()), pipe_test_name);

// Recomputation across ranks: the second forward's all-to-alls repeat the first's (same routing from
// the same input on every rank), so every rank's loss, logits and gradients are bit for bit those of
// the run that keeps its activations; sequential and ampipe in both scopes, both families.
TEST(Recompute, OnSeveralRanksIsBitIdentical) {
  for (bool mixtral : {false, true}) {
    const ModelConfig config = pipe_model(mixtral, 2, 0.0, 3);
    const TrainingGroups groups = make_training_groups(*g_world, 0, config.num_experts);
    const PipeConfig& ampipe = pipe_configs()[3];  // AmPipeP3_StageMajor
    for (const PipeConfig* pipe : {static_cast<const PipeConfig*>(nullptr), &ampipe})
      for (PipelineScope scope : {PipelineScope::Block, PipelineScope::Model}) {
        if (!pipe && scope == PipelineScope::Model) continue;
        const RankRun keep = run_on_ranks(config, groups, pipe, {}, scope);
        for (const auto& [method, n] : std::vector<std::pair<std::string, int64_t>>{{"uniform", 1}, {"block", 2}}) {
          const RankRun again = run_on_ranks(config, groups, pipe, recompute_groups(method, n, 3), scope);
          SCOPED_TRACE(std::string(mixtral ? "mixtral " : "gpt ") + (pipe ? pipe->name : "sequential") + " " +
                       pipeline_scope_name(scope) + " scope, " + method + " " + std::to_string(n));
          EXPECT_EQ(again.loss.lm_loss, keep.loss.lm_loss);
          EXPECT_EQ(again.loss.aux_loss, keep.loss.aux_loss);
          EXPECT_EQ(again.logits, keep.logits);
          EXPECT_EQ(again.grads, keep.grads);
        }
      }
  }
  expect_no_rank_failed(*g_world);
}

// Every group make_training_groups splits off holds the ranks the layout names, in its order: the
// sum of 2^(world rank) over the group is the layout's set, for every layout of this world.
TEST(FoldedLayout, EveryGroupHoldsTheRanksTheLayoutNames) {
  const int64_t R = g_world->size(), rank = g_world->rank();
  for (int64_t T = 1; T <= R; ++T)
    for (int64_t ETP = 1; ETP <= R; ++ETP)
      for (int64_t EP = 1; EP * ETP <= R; ++EP) {
        if (R % T != 0 || R % (ETP * EP) != 0) continue;
        const ParallelLayout layout(R, ParallelSizes{T, false, ETP, EP});
        const TrainingGroups g = make_training_groups(*g_world, layout);
        SCOPED_TRACE(layout.describe());
        const std::pair<ParallelDim, Communicator*> groups[] = {
            {ParallelDim::Tensor, g.tensor_group.get()},
            {ParallelDim::Data, g.data_parallel_group()},
            {ParallelDim::ExpertTensor, g.expert_tensor_group.get()},
            {ParallelDim::Expert, g.expert_group.get()},
            {ParallelDim::ExpertData, g.expert_data_group.get()}};
        for (const auto& dim_group : groups) {
          const ParallelLayout::Place place = layout.place(rank, dim_group.first);
          Communicator* group = dim_group.second;
          if (group == nullptr) {  // only an axis of one rank goes without (DP is the world at T = 1)
            EXPECT_EQ(layout.size(dim_group.first), 1) << parallel_dim_name(dim_group.first);
            continue;
          }
          EXPECT_EQ(group->size(), layout.size(dim_group.first)) << parallel_dim_name(dim_group.first);
          EXPECT_EQ(group->rank(), place.index) << parallel_dim_name(dim_group.first);
          int64_t members = int64_t{1} << rank, want = 0;
          group->all_reduce_sum(members);
          const std::vector<std::vector<int64_t>> all = layout.groups(dim_group.first);
          for (int64_t r : all[static_cast<size_t>(place.group)]) want |= int64_t{1} << r;
          EXPECT_EQ(members, want) << parallel_dim_name(dim_group.first);
        }
        EXPECT_EQ(g.model_parallel().tp_size(), T);
        EXPECT_EQ(g.data_parallel_group()->size(), R / T);
      }
  expect_no_rank_failed(*g_world);
}

TEST(DataParallel, MismatchedConfigurationIsRefusedOnEveryRank) {
  const std::string dir = shared_dir("mismatch");
  TrainOptions o = small_options(dir);
  o.micro_batch_size = 2;
  if (g_world->rank() == 1) o.model.hidden_size = 32;
  try {
    run_training(o, [](const std::string&) {}, g_world.get());
    ADD_FAILURE() << "a mismatched configuration was accepted on rank " << g_world->rank();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different configuration"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_parallel");
}
