// The distributed optimizer (--use-distributed-optimizer) and sharded checkpoints
// (--ckpt-format sharded) on several ranks (2 and 4, under mpirun).
//
// DistributedOptimizer: AdamW with its moments sharded over the data-parallel groups, gradients
// reduce-scattered and parameters all-gathered, against the plain optimizer over 20 steps of the
// same model and data; with --overlap-param-gather (each block's all-gather deferred to the next
// forward, on the comm stream of a streamed pass, or inline in the sequential one) too.
//
// Open MPI's reduce-scatter and all-reduce are free to add the ranks' gradients in different
// orders, and AdamW turns a last-bit difference of a near-cancelling gradient sum into a full step
// of lr. So each rank's gradients are first rounded to multiples of 2^-16 below 2^5 in magnitude
// (exactly summable in float32 in any order), which leaves both sides the same arithmetic on every
// element: without clipping the parameters and the moments must be equal bit for bit. (Measured
// without the rounding, Open MPI 4.1 on 2 and 4 ranks: equal bit for bit too.) With clipping, the
// gradient norm is summed in another order (shards, then over the world) and the clip scale may
// differ in its last float bit: the parameters must then agree within 2e-6 absolute (measured: equal
// bit for bit after 20 steps at lr 1e-2), while a skipped or wrong update moves them by ~1e-2.
// The AdamW kernel must not depend on where a run of elements starts (CMakeLists.txt: no contracted
// FMAs in its scalar tail); before that rule these cases differed by up to 5e-3 on 4 ranks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/pipe_cases.h"
#include "pipeline/streamed_block.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/optimizer.h"
#include "train/safetensors.h"
#include "train/sharded_checkpoint.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;
using namespace ::ampipe::testing;  // NOLINT: the shared pipeline cases (parallel/pipe_cases.h)

struct OptCase {
  bool mixtral;
  int64_t ep;    // expert-parallel size: 1 (every expert everywhere) or 0 (the default, the largest)
  bool overlap;  // the reduction per block on the comm stream of a streamed model-scope pass
  double clip;   // 0: no clipping
  bool gather = false;  // --overlap-param-gather: each block's all-gather in the next forward
};

std::string case_name(const ::testing::TestParamInfo<OptCase>& info) {
  const OptCase& c = info.param;
  return std::string(c.mixtral ? "Mixtral" : "Gpt") + (c.ep == 1 ? "_Ep1" : "_EpDefault") +
         (c.overlap ? "_Overlapped" : "_After") + (c.clip > 0 ? "_Clipped" : "_Unclipped") +
         (c.gather ? "_GatherInForward" : "");
}

struct Trained {
  std::vector<std::vector<float>> values, moments;
  std::vector<double> norms;
  int64_t held = 0, owned = 0;  // moment elements (of one moment) this rank holds / writes
};

constexpr int kSteps = 20;

// Rounds the gradients of the parameters whose names start with `prefix` (or, with `rest`, of
// those outside every block) to multiples of 2^-16 in (-2^5, 2^5): sums of 4 of them are exact.
void make_exactly_summable(ParameterRegistry& params, const std::string& prefix, bool rest) {
  for (Parameter& p : params.all()) {
    const bool in_block = p.name.rfind("blocks.", 0) == 0;
    if (rest ? in_block : p.name.rfind(prefix, 0) != 0) continue;
    std::vector<float> g = p.grad.to_vector();
    for (float& x : g) x = std::clamp(std::nearbyint(x * 65536.0f), -2097151.0f, 2097151.0f) / 65536.0f;
    p.grad.copy_from(Tensor::from(p.grad.shape(), g));
  }
}

Trained train(const OptCase& c, const ModelConfig& config, const TrainingGroups& groups, bool distributed) {
  GptMoe model(config, groups.model_parallel());
  model.initialize(11);
  set_pipe_parameters(model);
  const PipeConfig& pipe = pipe_configs()[3];  // AmPipeP3_StageMajor
  const StreamedBlock executor(schedule_of(pipe, config), pipe.order, nullptr, 0, PipelineScope::Model);
  if (c.overlap) model.set_block_executor(&executor);
  GradientBuckets buckets(model.params(), groups, config.num_layers, distributed);
  buckets.defer_param_gathers(distributed && c.gather);
  AdamWConfig adamw;
  adamw.clip_grad = c.clip;
  AdamW optimizer(model.params(), adamw, groups.expert_group.get(), &buckets);
  Trained t;
  for (int step = 0; step < kSteps; ++step) {
    ForwardState state;
    RankRun r;
    if (buckets.param_gathers_deferred()) {
      buckets.gather_rest();
      forward_rank_batch(model, 7 + 31 * static_cast<uint64_t>(step), groups.rank(), state, r,
                         [&](int64_t l) { buckets.gather_block(l); });
    } else {
      forward_rank_batch(model, 7 + 31 * static_cast<uint64_t>(step), groups.rank(), state, r);
    }
    if (c.overlap) {
      model.backward(state, 1.0, [&](int64_t l) {
        make_exactly_summable(model.params(), "blocks." + std::to_string(l) + ".", false);
        buckets.reduce_block(l);
      });
      make_exactly_summable(model.params(), "", true);
      buckets.reduce_rest();
    } else {
      model.backward(state);
      make_exactly_summable(model.params(), "", false);
      buckets.reduce_all();
    }
    t.norms.push_back(optimizer.step(1e-2));
  }
  buckets.gather_all();  // the last update's, with --overlap-param-gather
  for (const Parameter& p : model.params().all()) t.values.push_back(p.value.to_vector());
  for (const auto& [name, m] : optimizer.state_tensors()) t.moments.push_back(m.to_vector());
  for (const MomentRange& m : optimizer.held_ranges()) t.held += m.numel;
  for (const MomentRange& m : optimizer.owned_ranges()) t.owned += m.numel;
  return t;
}

class DistributedOptimizer : public ::testing::TestWithParam<OptCase> {};

TEST_P(DistributedOptimizer, EqualsThePlainOptimizerOverTwentySteps) {
  const OptCase c = GetParam();
  const ModelConfig config = pipe_model(c.mixtral, 2, 0.0, 2);
  const TrainingGroups groups = make_training_groups(*g_world, c.ep, config.num_experts);
  const Trained plain = train(c, config, groups, false);
  const Trained sharded = train(c, config, groups, true);
  const bool exact = c.clip == 0;  // see the top of the file
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ", " + case_name({c, 0}));
    ASSERT_EQ(plain.values.size(), sharded.values.size());
    ASSERT_EQ(plain.moments.size(), sharded.moments.size());
    for (int s = 0; s < kSteps; ++s)
      EXPECT_NEAR(sharded.norms[s], plain.norms[s], (exact ? 1e-12 : 1e-6) * plain.norms[s])
          << "gradient norm of step " << s + 1;
    double worst = 0, moved = 0;
    int64_t differing = 0;
    for (size_t i = 0; i < plain.values.size(); ++i)
      for (size_t k = 0; k < plain.values[i].size(); ++k) {
        const double d = std::abs(static_cast<double>(sharded.values[i][k]) - plain.values[i][k]);
        worst = std::max(worst, d);
        differing += sharded.values[i][k] != plain.values[i][k];
      }
    for (size_t i = 0; i < plain.moments.size(); ++i)
      for (size_t k = 0; k < plain.moments[i].size(); ++k) {
        differing += c.clip == 0 && sharded.moments[i][k] != plain.moments[i][k];
        moved += std::abs(plain.moments[i][k]);
      }
    EXPECT_GT(moved, 0.0) << "the optimizer never moved: the comparison would prove nothing";
    if (exact) {
      EXPECT_EQ(differing, 0) << "parameters and moments must be equal bit for bit; worst difference "
                              << worst;
    } else {
      EXPECT_LE(worst, 2e-6) << "parameters after " << kSteps << " steps";
    }
    if (std::getenv("AMPIPE_TEST_VERBOSE") != nullptr)
      std::printf("rank %d: worst parameter difference %.3g, %lld elements differ\n", g_world->rank(), worst,
                  static_cast<long long>(differing));
    // The moments this rank holds: 1/G of each space (G its data-parallel group), rounded up.
    int64_t local = 0;
    for (const auto& v : plain.values) local += static_cast<int64_t>(v.size());
    EXPECT_EQ(plain.held, local);
    EXPECT_LT(sharded.held, local);
    EXPECT_EQ(sharded.owned, sharded.held);
  }
  // Every element of the whole model is written by exactly one rank of the world, with either
  // optimizer: the dense elements once, each expert group's slice once.
  int64_t owned_plain = plain.owned, owned_sharded = sharded.owned;
  g_world->all_reduce_sum(owned_plain);
  g_world->all_reduce_sum(owned_sharded);
  int64_t whole = 0;
  const GptMoe shapes(config, groups.model_parallel());
  for (const Parameter& p : shapes.params().all())
    whole += p.value.numel() * (p.is_expert ? groups.expert_parallel_size : 1);
  EXPECT_EQ(owned_plain, whole);
  EXPECT_EQ(owned_sharded, whole);
  expect_no_rank_failed(*g_world);
}

std::vector<OptCase> cases() {
  std::vector<OptCase> out;
  for (bool mixtral : {false, true})
    for (int64_t ep : {int64_t{1}, int64_t{0}}) {
      out.push_back({mixtral, ep, false, 0.0});
      out.push_back({mixtral, ep, true, 0.05});
    }
  out.push_back({false, 0, true, 0.0});
  out.push_back({true, 1, false, 0.05});
  out.push_back({false, 1, true, 0.0, true});
  out.push_back({true, 0, true, 0.05, true});
  out.push_back({true, 1, false, 0.0, true});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, DistributedOptimizer, ::testing::ValuesIn(cases()), case_name);

// ShardedCheckpoints: the world trains 3 steps with the distributed optimizer (EP = R/2, so
// expert and dense shards both spread), saves sharded and, as the reference, gathered; then groups
// of 1, 2 and R ranks load the sharded one in other layouts (EP 1 or their size, with and without
// the distributed optimizer): every parameter and both moments equal the gathered file's, bit for
// bit. The world then resumes it in its own layout: 3 more steps equal the uninterrupted run's bit for bit.
struct Stepper {
  GptMoe model;
  GradientBuckets buckets;
  AdamW optimizer;
  const TrainingGroups& groups;
  Stepper(const ModelConfig& config, const TrainingGroups& g, bool distributed)
      : model(config, g.model_parallel()),
        buckets(model.params(), g, config.num_layers, distributed),
        optimizer(model.params(), AdamWConfig{}, g.expert_group.get(), &buckets),
        groups(g) {
    model.initialize(11);
    set_pipe_parameters(model);
  }
  void steps(int from, int to) {
    for (int step = from; step < to; ++step) {
      ForwardState state;
      RankRun r;
      forward_rank_batch(model, 7 + 31 * static_cast<uint64_t>(step), groups.rank(), state, r);
      model.backward(state);
      buckets.reduce_all();
      optimizer.step(1e-2);
    }
  }
};

std::string shared_temp_dir(const std::string& name) {
  std::string dir = (std::filesystem::path(::testing::TempDir()) /
                     ("ampipe_sharded_" + name + "_" + std::to_string(::getpid())))
                        .string();
  g_world->broadcast_bytes(dir, 0);
  if (g_world->rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  g_world->barrier();
  return dir;
}

// Counts the elements of this rank's parameters and moments that differ from the gathered file's.
int64_t differences_from_gathered(const Stepper& s, const std::string& gathered_dir) {
  const SafetensorsFile weights = read_safetensors(gathered_dir + "/model.safetensors");
  const SafetensorsFile moments = read_safetensors(gathered_dir + "/optimizer.safetensors");
  int64_t wrong = 0;
  auto compare = [&](const Parameter& p, const Tensor& mine, const Tensor& whole) {
    const Tensor expected =
        p.is_expert ? whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0)) : whole;
    const std::vector<float> a = mine.to_vector(), b = expected.clone().to_vector();
    if (a.size() != b.size()) return static_cast<int64_t>(a.size() + b.size());
    int64_t n = 0;
    for (size_t k = 0; k < a.size(); ++k) n += a[k] != b[k];
    return n;
  };
  const auto state = s.optimizer.state_tensors();  // collective when sharded
  size_t i = 0;
  for (const Parameter& p : s.model.params().all()) {
    wrong += compare(p, p.value, weights.tensors.at(p.name));
    wrong += compare(p, state[2 * i].second, moments.tensors.at(p.name + ".exp_avg"));
    wrong += compare(p, state[2 * i + 1].second, moments.tensors.at(p.name + ".exp_avg_sq"));
    ++i;
  }
  return wrong;
}

TEST(ShardedCheckpoints, LoadInAnyLayoutAndResumeBitForBit) {
  const int R = g_world->size();
  const std::string dir = shared_temp_dir("layouts");
  const ModelConfig config = pipe_model(true, 2, 0.0, 2);
  const TrainingGroups groups = make_training_groups(*g_world, R / 2, config.num_experts);
  Stepper saver(config, groups, true);
  saver.steps(0, 3);
  TrainingProgress progress;
  progress.iteration = 3;
  save_iteration_checkpoint(dir + "/sharded", saver.model, saver.optimizer, progress, &groups, nullptr, 0,
                            CheckpointFormat::Sharded);
  save_iteration_checkpoint(dir + "/gathered", saver.model, saver.optimizer, progress, &groups);
  const std::string gathered = dir + "/gathered/iter_0000003";
  {
    SCOPED_TRACE("rank " + std::to_string(g_world->rank()));
    EXPECT_TRUE(is_sharded_checkpoint(dir + "/sharded/iter_0000003"));
    EXPECT_EQ(checkpoint_problem(dir + "/sharded/iter_0000003"), "");
    EXPECT_EQ(differences_from_gathered(saver, gathered), 0)
        << "the saver's own state against the gathered file";
  }
  // Other layouts: groups of 1, 2 and R ranks, EP 1 or the group's size, either optimizer.
  for (int size : {1, 2, R})
    for (bool distributed : {false, true})
      for (bool ep_whole : {false, true}) {
        if (size == R && distributed && ep_whole) continue;  // the saver's own layout when R == 2
        std::unique_ptr<Communicator> sub = g_world->split(g_world->rank() / size, g_world->rank());
        const TrainingGroups layout = make_training_groups(*sub, ep_whole ? size : 1, config.num_experts);
        Stepper loader(config, layout, distributed);
        load_model_weights(dir + "/sharded", loader.model);
        const TrainingProgress loaded = load_training_state(dir + "/sharded", loader.model, loader.optimizer);
        SCOPED_TRACE("rank " + std::to_string(g_world->rank()) + ": loaded on " + std::to_string(size) +
                     " rank(s), EP " + std::to_string(layout.expert_parallel_size) +
                     (distributed ? ", distributed optimizer" : ", plain optimizer"));
        EXPECT_EQ(loaded.iteration, 3);
        EXPECT_EQ(loader.optimizer.steps_taken(), 3);
        EXPECT_EQ(differences_from_gathered(loader, gathered), 0);
      }
  // The saver's layout resumes bit for bit.
  Stepper resumed(config, groups, true);
  load_model_weights(dir + "/sharded", resumed.model);
  load_training_state(dir + "/sharded", resumed.model, resumed.optimizer);
  resumed.steps(3, 6);
  saver.steps(3, 6);
  int64_t differing = 0;
  for (size_t i = 0; i < saver.model.params().all().size(); ++i) {
    const std::vector<float> a = saver.model.params().all()[i].value.to_vector();
    const std::vector<float> b = resumed.model.params().all()[i].value.to_vector();
    for (size_t k = 0; k < a.size(); ++k) differing += a[k] != b[k];
  }
  EXPECT_EQ(differing, 0) << "rank " << g_world->rank() << ": the resumed run left the uninterrupted one";
  expect_no_rank_failed(*g_world);
  g_world->barrier();
  if (g_world->rank() == 0) std::filesystem::remove_all(dir);
}

// A missing or truncated shard is refused, naming it; the tracker's checkpoint is then incomplete.
TEST(ShardedCheckpoints, AMissingOrTruncatedShardIsRefusedNamingIt) {
  const int R = g_world->size();
  const std::string dir = shared_temp_dir("damaged");
  const ModelConfig config = pipe_model(false, 1, 0.0, 2);
  const TrainingGroups groups = make_training_groups(*g_world, 1, config.num_experts);
  Stepper saver(config, groups, false);
  saver.steps(0, 1);
  TrainingProgress progress;
  progress.iteration = 1;
  save_iteration_checkpoint(dir, saver.model, saver.optimizer, progress, &groups, nullptr, 0,
                            CheckpointFormat::Sharded);
  if (g_world->rank() == 0) {
    const std::string it = dir + "/iter_0000001/";
    const std::string last = shard_file_name(R - 1, R), first = shard_file_name(0, R);
    // A shape whose element count overflows is refused, not multiplied out.
    const std::string index = read_file(sharded_index_path(it));
    nlohmann::json j = nlohmann::json::parse(index);
    j["tensors"].begin().value()["shape"] = {int64_t{1} << 40, int64_t{1} << 40};
    write_file_atomically(sharded_index_path(it), j.dump());
    const std::string huge = checkpoint_problem(it);
    EXPECT_NE(huge.find("2^62"), std::string::npos) << huge;
    write_file_atomically(sharded_index_path(it), index);
    EXPECT_EQ(checkpoint_problem(it), "");
    std::filesystem::resize_file(it + last, std::filesystem::file_size(it + last) - 4);
    std::string problem = checkpoint_problem(it);
    EXPECT_NE(problem.find(last), std::string::npos) << problem;
    EXPECT_NE(problem.find("truncated"), std::string::npos) << problem;
    std::filesystem::remove(it + first);
    problem = checkpoint_problem(it);
    EXPECT_NE(problem.find(first + " is missing"), std::string::npos) << problem;
    std::string refused;
    try {
      locate_checkpoint(dir);
    } catch (const Error& e) {
      refused = e.what();
    }
    EXPECT_NE(refused.find("incomplete"), std::string::npos) << refused;
    std::filesystem::remove_all(dir);
  }
  expect_no_rank_failed(*g_world);
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "distributed optimizer");
}
