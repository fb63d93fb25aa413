// The folded parallel layout (train/layout.h) on one process: every group of hand-drawn worlds in
// Megatron-Core's rank order, the refusals naming their numbers, describe()'s lines.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/layout.h"

namespace ampipe {
namespace {

using Groups = std::vector<std::vector<int64_t>>;

ParallelLayout layout_of(int64_t world, int64_t T, int64_t ETP, int64_t EP) {
  ParallelSizes s;
  s.tensor = T;
  s.expert_tensor = ETP;
  s.expert = EP;
  return ParallelLayout(world, s);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Every group's members agree with place(): rank r is member place(r).index of group place(r).group.
void expect_places_agree(const ParallelLayout& layout) {
  for (ParallelDim dim : {ParallelDim::Tensor, ParallelDim::Data, ParallelDim::ExpertTensor,
                          ParallelDim::Expert, ParallelDim::ExpertData}) {
    const Groups groups = layout.groups(dim);
    ASSERT_EQ(static_cast<int64_t>(groups.size()) * layout.size(dim), layout.world_size());
    for (int64_t r = 0; r < layout.world_size(); ++r) {
      const ParallelLayout::Place p = layout.place(r, dim);
      EXPECT_EQ(groups[p.group][p.index], r) << parallel_dim_name(dim) << " rank " << r;
    }
  }
}

TEST(ParallelLayout, W8_T2_EP4_ETP1_MatchesMegatronOrder) {
  const ParallelLayout l = layout_of(8, 2, 1, 4);
  EXPECT_EQ(l.groups(ParallelDim::Tensor), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::Data), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::ExpertTensor), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  EXPECT_EQ(l.groups(ParallelDim::Expert), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::ExpertData), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  expect_places_agree(l);
}

TEST(ParallelLayout, W8_T2_EP4_ETP2_PutsExpertPeersETPApart) {
  const ParallelLayout l = layout_of(8, 2, 2, 4);
  EXPECT_EQ(l.size(ParallelDim::ExpertData), 1);
  EXPECT_EQ(l.groups(ParallelDim::ExpertTensor), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::Expert), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::ExpertData), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  expect_places_agree(l);
}

TEST(ParallelLayout, W8_T4_ETP2_EP2_FoldsAllThreeExpertAxes) {
  const ParallelLayout l = layout_of(8, 4, 2, 2);
  EXPECT_EQ(l.groups(ParallelDim::Tensor), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::Data), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::ExpertTensor), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::Expert), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(l.groups(ParallelDim::ExpertData), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  expect_places_agree(l);
}

// T = ETP = 1 is the layout train/distributed.h always made: split(rank / EP) and split(rank % EP).
TEST(ParallelLayout, T1_ETP1_IsTheExpertAndDataLayoutOfBefore) {
  for (int64_t W : {1, 2, 4, 6, 8})
    for (int64_t EP = 1; EP <= W; ++EP) {
      if (W % EP != 0) continue;
      const ParallelLayout l = layout_of(W, 1, 1, EP);
      EXPECT_EQ(l.size(ParallelDim::Data), W);
      for (int64_t r = 0; r < W; ++r) {
        EXPECT_EQ(l.place(r, ParallelDim::Expert).group, r / EP) << W << " " << EP << " " << r;
        EXPECT_EQ(l.place(r, ParallelDim::Expert).index, r % EP);
        EXPECT_EQ(l.place(r, ParallelDim::ExpertData).group, r % EP);
        EXPECT_EQ(l.place(r, ParallelDim::ExpertData).index, r / EP);
      }
      expect_places_agree(l);
    }
}

TEST(ParallelLayout, DescribeListsEveryGroup) {
  ParallelSizes s;
  s.tensor = 2;
  s.sequence_parallel = true;
  s.expert = 2;
  const std::string text = ParallelLayout(4, s).describe();
  EXPECT_EQ(text,
            "parallel layout of 4 rank(s): attention tensor 2 x data 2 (sequence parallel); experts "
            "expert-tensor 1 x "
            "expert 2 x expert-data 2\n"
            "  tp groups: [0 1] [2 3]\n"
            "  dp groups: [0 2] [1 3]\n"
            "  etp groups: each rank alone\n"
            "  ep groups: [0 1] [2 3]\n"
            "  edp groups: [0 2] [1 3]");
}

TEST(ParallelLayout, WorldRefusalsNameTheNumbers) {
  EXPECT_NE(error_of([] {
              layout_of(6, 4, 1, 1);
            }).find("--tensor-model-parallel-size 4 does not divide the 6 ranks"),
            std::string::npos);
  EXPECT_NE(error_of([] { layout_of(8, 2, 2, 3); })
                .find("--expert-tensor-parallel-size 2 x --expert-model-parallel-size 3 = 6 does not divide "
                      "the 8 ranks"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              layout_of(4, 1, 1, 3);
            }).find("--expert-model-parallel-size 3 does not divide the 4 ranks"),
            std::string::npos);
  EXPECT_NE(
      error_of([] { layout_of(4, 0, 1, 1); }).find("--tensor-model-parallel-size must be at least 1, got 0"),
      std::string::npos);
  EXPECT_NE(error_of([] {
              layout_of(4, 1, -1, 1);
            }).find("--expert-tensor-parallel-size must be at least 1, got -1"),
            std::string::npos);
}

TEST(ParallelLayout, ModelRefusalsAreThePlannersAndNameTheNumbers) {
  ModelConfig c;  // the default model: 4 heads, FFN 512, 4 experts
  c.num_attention_heads = 4;
  c.ffn_hidden_size = 512;
  c.num_experts = 4;
  ParallelSizes s;
  s.tensor = 8;
  EXPECT_NE(error_of([&] {
              make_layout(8, s, c);
            }).find("--tensor-model-parallel-size 8 does not divide the 4 attention heads"),
            std::string::npos);
  c.num_query_groups = 2;
  s.tensor = 4;
  EXPECT_NE(error_of([&] { make_layout(8, s, c); }).find("does not divide the 2 query groups"),
            std::string::npos);
  c.num_query_groups = 0;
  s = ParallelSizes{};
  s.expert_tensor = 3;
  s.expert = 1;
  EXPECT_NE(error_of([&] {
              make_layout(6, s, c);
            }).find("--expert-tensor-parallel-size 3 does not divide the FFN width 512"),
            std::string::npos);
  s = ParallelSizes{};
  s.expert = 8;
  EXPECT_NE(error_of([&] {
              make_layout(8, s, c);
            }).find("--expert-model-parallel-size 8 does not divide --moe-num-experts 4"),
            std::string::npos);
}

// The default EP is the largest divisor of W / ETP that divides E; make_layout fills it in.
TEST(ParallelLayout, DefaultExpertParallelSizeLeavesRoomForETP) {
  EXPECT_EQ(default_expert_parallel_size(8, 4), 4);
  EXPECT_EQ(default_expert_parallel_size(8, 8, 2), 4);
  EXPECT_EQ(default_expert_parallel_size(6, 4), 2);
  EXPECT_EQ(default_expert_parallel_size(3, 4), 1);
  ModelConfig c;
  c.num_experts = 4;
  ParallelSizes s;
  s.expert = 0;
  EXPECT_EQ(make_layout(8, s, c).size(ParallelDim::Expert), 4);
}

TEST(ParallelLayout, WhatACommandDoesNotRunIsRefused) {
  ParallelSizes s;
  EXPECT_NO_THROW(require_runnable_sizes(s));
  s.sequence_parallel = true;  // at T = 1: ignored, with a note
  EXPECT_NO_THROW(require_runnable_sizes(s));
  EXPECT_NE(ignored_sequence_parallel_note(s).find("--sequence-parallel is ignored"), std::string::npos);
  s.tensor = 2;
  EXPECT_EQ(ignored_sequence_parallel_note(s), "");
  const std::string t = error_of([&] { require_runnable_sizes(s); });
  EXPECT_NE(t.find("--tensor-model-parallel-size 2 --sequence-parallel: this command does not run it yet"),
            std::string::npos)
      << t;
  // The model-running commands run T > 1 with --sequence-parallel, and with ETP > 1 too.
  EXPECT_NO_THROW(require_runnable_sizes(s, /*runs_tensor_parallel=*/true));
  s.expert_tensor = 2;
  EXPECT_NO_THROW(require_runnable_sizes(s, /*runs_tensor_parallel=*/true));
  s.expert_tensor = 1;
  s.sequence_parallel = false;
  EXPECT_NO_THROW(require_runnable_sizes(s, true));
  s.sequence_parallel = true;
  EXPECT_NE(t.find("`ampipe plan --tensor-model-parallel-size 2 --sequence-parallel` prices it"),
            std::string::npos)
      << t;
  s = ParallelSizes{};
  s.expert_tensor = 4;
  EXPECT_NE(error_of([&] {
              require_runnable_sizes(s);
            }).find("--expert-tensor-parallel-size 4: this command does not run it yet"),
            std::string::npos);
  EXPECT_NO_THROW(require_runnable_sizes(s, true));  // the model runs ETP (the layout checks it against T)
  s.expert_tensor = 0;
  EXPECT_NE(error_of([&] {
              require_runnable_sizes(s, true);
            }).find("--expert-tensor-parallel-size must be at least 1, got 0"),
            std::string::npos);
}

}  // namespace
}  // namespace ampipe
