// SelfCommunicator: the one-rank group that single-process runs use, and the world factory's choice
// of it outside an MPI launcher.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "comm/world.h"
#include "core/error.h"
#include "test_util.h"

namespace ampipe {
namespace {

using testing::error_of;

TEST(SelfCommunicator, RankAndSize) {
  SelfCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.backend(), "self");
}

TEST(SelfCommunicator, AllToAllVCopiesTheCountedPrefix) {
  SelfCommunicator comm;
  Tensor send = Tensor::from({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor recv = Tensor::from({8}, {-1, -1, -1, -1, -1, -1, -1, -1});
  comm.all_to_all_v(send, {5}, recv, {5});
  EXPECT_EQ(recv.to_vector(), (std::vector<float>{1, 2, 3, 4, 5, -1, -1, -1}));

  Tensor isend = Tensor::from_ints({3}, {7, 8, 9});
  Tensor irecv = Tensor::zeros({3}, DType::I32);
  comm.all_to_all_v(isend, {3}, irecv, {3});
  EXPECT_EQ(irecv.data<int32_t>()[2], 9);

  // Zero elements, empty tensors.
  comm.all_to_all_v(Tensor::empty({0}), {0}, Tensor::empty({0}), {0});
}

TEST(SelfCommunicator, AllToAllVRejectsBadArguments) {
  SelfCommunicator comm;
  Tensor send = Tensor::zeros({4});
  Tensor recv = Tensor::zeros({4});
  std::string e = error_of([&] { comm.all_to_all_v(send, {1, 1}, recv, {2}); });
  EXPECT_NE(e.find("all_to_all_v on rank 0 of 1"), std::string::npos) << e;
  EXPECT_NE(e.find("send_counts has 2 entries"), std::string::npos) << e;
  e = error_of([&] { comm.all_to_all_v(send, {-1}, recv, {-1}); });
  EXPECT_NE(e.find("negative"), std::string::npos) << e;
  e = error_of([&] { comm.all_to_all_v(send, {5}, recv, {5}); });
  EXPECT_NE(e.find("more than send holds"), std::string::npos) << e;
  e = error_of([&] { comm.all_to_all_v(send, {2}, recv, {3}); });
  EXPECT_NE(e.find("send_counts[0] = 2 but recv_counts[0] = 3"), std::string::npos) << e;
  e = error_of([&] { comm.all_to_all_v(send, {1}, Tensor::zeros({4}, DType::I32), {1}); });
  EXPECT_NE(e.find("must match"), std::string::npos) << e;
  Tensor wide = Tensor::zeros({2, 4});
  e = error_of([&] { comm.all_to_all_v(wide.cols(0, 2), {1}, recv, {1}); });
  EXPECT_NE(e.find("not contiguous"), std::string::npos) << e;
  e = error_of([&] { comm.all_to_all_v(Tensor(), {0}, recv, {0}); });
  EXPECT_NE(e.find("undefined"), std::string::npos) << e;
}

TEST(SelfCommunicator, AllToAllOfCounts) {
  SelfCommunicator comm;
  std::vector<int64_t> recv;
  comm.all_to_all({42}, recv);
  EXPECT_EQ(recv, (std::vector<int64_t>{42}));
  EXPECT_THROW(comm.all_to_all({1, 2}, recv), Error);
}

TEST(SelfCommunicator, ReductionsAndBroadcastsAreIdentity) {
  SelfCommunicator comm;
  Tensor t = Tensor::from({3}, {1.5f, -2, 3});
  comm.all_reduce_sum(t);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1.5f, -2, 3}));
  comm.broadcast(t, 0);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1.5f, -2, 3}));
  EXPECT_THROW(comm.broadcast(t, 1), Error);

  double d = 2.5;
  int64_t i = -7;
  comm.all_reduce_sum(d);
  comm.all_reduce_max(d);
  comm.all_reduce_sum(i);
  comm.all_reduce_max(i);
  EXPECT_EQ(d, 2.5);
  EXPECT_EQ(i, -7);

  std::string bytes("a\0b", 3);
  comm.broadcast_bytes(bytes, 0);
  EXPECT_EQ(bytes, std::string("a\0b", 3));
  EXPECT_THROW(comm.broadcast_bytes(bytes, -1), Error);
  comm.barrier();
}

TEST(SelfCommunicator, AllGatherCopies) {
  SelfCommunicator comm;
  Tensor send = Tensor::from_ints({2}, {3, 4});
  Tensor recv = Tensor::zeros({2}, DType::I32);
  comm.all_gather(send, recv);
  EXPECT_EQ(recv.data<int32_t>()[0], 3);
  EXPECT_EQ(recv.data<int32_t>()[1], 4);
  EXPECT_THROW(comm.all_gather(send, Tensor::zeros({3}, DType::I32)), Error);
}

TEST(SelfCommunicator, SplitGivesAnotherSelfOrNoGroup) {
  SelfCommunicator comm;
  auto sub = comm.split(5, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(comm.split(-1, 0), nullptr);
}

TEST(SelfCommunicatorDeathTest, AbortPrintsTheRankAndExitsWithTheCode) {
  SelfCommunicator comm;
  EXPECT_EXIT(comm.abort(7, "it broke"), ::testing::ExitedWithCode(7), "ampipe: rank 0: it broke");
}

TEST(WorldCommunicator, WithoutALauncherIsSelf) {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                           "SLURM_STEP_NUM_TASKS", "AMPIPE_COMM"}) {
    ::unsetenv(name);
  }
  EXPECT_EQ(launched_by_mpi(), "");
  auto world = make_world_communicator();
  EXPECT_EQ(world->backend(), "self");
  EXPECT_EQ(world->size(), 1);

  // An sbatch script's shell is not a launch.
  ::setenv("SLURM_NTASKS", "4", 1);
  EXPECT_EQ(launched_by_mpi(), "");
  ::unsetenv("SLURM_NTASKS");

  ::setenv("AMPIPE_COMM", "self", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  EXPECT_EQ(launched_by_mpi(), "OMPI_COMM_WORLD_SIZE");
  EXPECT_EQ(make_world_communicator()->backend(), "self");  // the override wins
  ::unsetenv("OMPI_COMM_WORLD_SIZE");

  ::setenv("AMPIPE_COMM", "nccl", 1);
  EXPECT_THROW(make_world_communicator(), Error);
  ::unsetenv("AMPIPE_COMM");
}

}  // namespace
}  // namespace ampipe
