// The main() of a GoogleTest program run under mpirun: rank 0 prints the usual report, the other
// ranks only their own failures (named by rank and test), and the exit status is non-zero on every
// rank if any rank failed.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>

#include "comm/world.h"

namespace ampipe::testing {

// On ranks other than 0: each failed assertion, named by rank and test (the usual report would
// repeat rank 0's).
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  // (UnitTest::current_test_info() would wait on the lock gtest holds while reporting.)
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { test_.clear(); }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "", r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_;
};

// Makes the world into `world`, runs every test, releases the world; `program` names the summary line.
inline int run_mpi_tests(int argc, char** argv, std::unique_ptr<Communicator>& world, const char* program) {
  ::testing::InitGoogleTest(&argc, argv);
  world = make_world_communicator();
  const int rank = world->rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  const int result = RUN_ALL_TESTS();
  int64_t failed = result != 0 ? 1 : 0;
  world->all_reduce_sum(failed);
  if (rank == 0)
    std::printf("%s: %d ranks, %s\n", program, world->size(),
                failed ? "FAILED on at least one rank" : "all tests passed on every rank");
  world.reset();
  return failed > 0 ? 1 : 0;
}

}  // namespace ampipe::testing
