// MpiCommunicator on several ranks: run by CTest under mpiexec (-np 2, 3, 4; see CMakeLists.txt).
//
// Every rank runs every test; after each test the ranks agree on the verdict (a test that fails on
// one rank fails on all), and the process exit status is non-zero on every rank if any test failed
// anywhere. Tests keep the same sequence of collectives on every rank whatever they find (EXPECT,
// not ASSERT, between collectives), so a failed check cannot leave a rank waiting.
//
// Element values encode where they come from: value(src, dst, k) = src * 1e6 + dst * 1e4 + k, exact
// in float32 and int32 for the sizes used here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/world.h"
#include "core/error.h"
#include "core/random.h"

namespace ampipe {
namespace {

std::unique_ptr<MpiCommunicator> g_world;

using Matrix = std::vector<std::vector<int64_t>>;  // counts[src][dst]

int64_t value(int src, int dst, int64_t k) { return src * 1000000LL + dst * 10000LL + k; }
constexpr int64_t kSendSentinel = -3;
constexpr int64_t kRecvSentinel = -7;

template <class T>
T* ptr(const Tensor& t) {
  return t.data<T>();
}

// Fills send, runs all_to_all_v over `comm` with the counts of `counts`, and checks every received
// element and that nothing past the counted prefix of recv was written.
template <class T>
void exchange_and_check(Communicator& comm, const Matrix& counts, int64_t slack, const std::string& what) {
  const int r = comm.rank(), n = comm.size();
  const DType dtype = std::is_same_v<T, float> ? DType::F32 : DType::I32;
  std::vector<int64_t> send_counts(n), recv_counts(n);
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < n; ++p) {
    send_counts[p] = counts[r][p];
    recv_counts[p] = counts[p][r];
    send_total += send_counts[p];
    recv_total += recv_counts[p];
  }
  Tensor send = Tensor::empty({send_total + slack}, dtype);
  Tensor recv = Tensor::empty({recv_total + slack}, dtype);
  T* s = ptr<T>(send);
  int64_t pos = 0;
  for (int d = 0; d < n; ++d) {
    for (int64_t k = 0; k < send_counts[d]; ++k) s[pos++] = static_cast<T>(value(r, d, k));
  }
  for (; pos < send.numel(); ++pos) s[pos] = static_cast<T>(kSendSentinel);
  std::fill(ptr<T>(recv), ptr<T>(recv) + recv.numel(), static_cast<T>(kRecvSentinel));

  comm.all_to_all_v(send, send_counts, recv, recv_counts);

  const T* got = ptr<T>(recv);
  int64_t wrong = 0;
  std::string first;
  pos = 0;
  for (int src = 0; src < n; ++src) {
    for (int64_t k = 0; k < recv_counts[src]; ++k, ++pos) {
      if (got[pos] != static_cast<T>(value(src, r, k))) {
        if (wrong++ == 0) {
          std::ostringstream o;
          o << "recv[" << pos << "] = " << got[pos] << ", expected element " << k << " from rank " << src
            << " (" << value(src, r, k) << ")";
          first = o.str();
        }
      }
    }
  }
  for (; pos < recv.numel(); ++pos) {
    if (got[pos] != static_cast<T>(kRecvSentinel) && wrong++ == 0)
      first = "wrote past the counts at " + std::to_string(pos);
  }
  EXPECT_EQ(wrong, 0) << what << " (" << dtype_name(dtype) << ", rank " << r << " of " << n << "): " << first;
}

// The same random matrix on every rank: about a quarter zeros, the rest in [1, max_count].
Matrix random_counts(int n, uint64_t seed, int64_t max_count) {
  Matrix m(n, std::vector<int64_t>(n));
  Rng rng(seed);
  for (int s = 0; s < n; ++s) {
    for (int d = 0; d < n; ++d)
      m[s][d] = rng.below(4) == 0 ? 0 : 1 + static_cast<int64_t>(rng.below(max_count));
  }
  return m;
}

// Runs fn, which must throw ampipe::Error; returns the message ("" and a failure if it did not).
template <class Fn>
std::string expect_error(Fn fn, const char* what) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << what << ": no ampipe::Error on rank " << g_world->rank();
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class Mpi : public ::testing::Test {
 protected:
  MpiCommunicator& world() { return *g_world; }
  int rank() { return g_world->rank(); }
  int size() { return g_world->size(); }

  // The ranks agree on the verdict: a test that failed anywhere fails everywhere.
  void TearDown() override {
    int64_t failed = HasFailure() ? 1 : 0;
    try {
      g_world->all_reduce_sum(failed);
    } catch (const Error& e) {
      ADD_FAILURE() << "verdict agreement failed: " << e.what();
      return;
    }
    if (failed > 0 && !HasFailure()) ADD_FAILURE() << "failed on " << failed << " other rank(s)";
  }

  // After an error, the communicator must still work.
  void expect_still_usable(Communicator& comm) {
    exchange_and_check<float>(comm, random_counts(comm.size(), 99, 9), 1, "all_to_all_v after an error");
  }
};

TEST_F(Mpi, WorldMatchesTheLauncher) {
  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (launched != nullptr) {
    EXPECT_EQ(size(), std::atoi(launched));
  }
  EXPECT_EQ(MpiRuntime::world_size(), size());
  EXPECT_EQ(MpiRuntime::world_rank(), rank());
  EXPECT_NE(launched_by_mpi(), "");
  EXPECT_EQ(world().backend(), "mpi");

  auto other = make_world_communicator();
  EXPECT_EQ(other->backend(), "mpi");
  EXPECT_EQ(other->size(), size());
  EXPECT_EQ(other->rank(), rank());

  Tensor mine = Tensor::from_ints({1}, {rank()});
  Tensor all = Tensor::zeros({size()}, DType::I32);
  other->all_gather(mine, all);
  for (int p = 0; p < size(); ++p) EXPECT_EQ(all.data<int32_t>()[p], p);
}

TEST_F(Mpi, AllToAllVUnevenAndZeroCounts) {
  const int n = size();
  Matrix uneven(n, std::vector<int64_t>(n));
  for (int s = 0; s < n; ++s) {
    for (int d = 0; d < n; ++d) uneven[s][d] = ((s + 2 * d) % 3) * (s + 1);  // zeros included
  }
  exchange_and_check<float>(world(), uneven, 0, "uneven counts");
  exchange_and_check<int32_t>(world(), uneven, 3, "uneven counts");

  Matrix zeros(n, std::vector<int64_t>(n, 0));
  exchange_and_check<float>(world(), zeros, 0, "all counts zero");
  exchange_and_check<int32_t>(world(), zeros, 2, "all counts zero, spare room");

  Matrix only_self(n, std::vector<int64_t>(n, 0));
  for (int s = 0; s < n; ++s) only_self[s][s] = 5;
  exchange_and_check<float>(world(), only_self, 0, "only to self");

  Matrix one_sender(n, std::vector<int64_t>(n, 0));
  for (int d = 0; d < n; ++d) one_sender[n - 1][d] = 7 + d;
  exchange_and_check<int32_t>(world(), one_sender, 0, "one sender");
}

TEST_F(Mpi, AllToAllVRandomCounts) {
  for (uint64_t round = 0; round < 25; ++round) {
    const Matrix counts = random_counts(size(), mix_seed(2024, round), round < 20 ? 40 : 3000);
    const std::string what = "random counts, round " + std::to_string(round);
    exchange_and_check<float>(world(), counts, static_cast<int64_t>(round % 3), what);
    exchange_and_check<int32_t>(world(), counts, static_cast<int64_t>(round % 2), what);
  }
}

TEST_F(Mpi, AllToAllVLargeMessages) {
  const int n = size();
  Matrix counts(n, std::vector<int64_t>(n));
  for (int s = 0; s < n; ++s) {
    for (int d = 0; d < n; ++d) counts[s][d] = 9000 + 17 * s + 5 * d;  // values stay below 1e4 per pair
  }
  exchange_and_check<float>(world(), counts, 0, "~36 KB per pair");
  // Megabytes per pair (past the eager limits): plain payload, checked by a closed form.
  const int64_t per = 600000;
  Tensor send = Tensor::empty({per * n}, DType::I32);
  Tensor recv = Tensor::zeros({per * n}, DType::I32);
  for (int d = 0; d < n; ++d) {
    for (int64_t k = 0; k < per; ++k)
      send.data<int32_t>()[d * per + k] = static_cast<int32_t>((rank() * 7 + d) * per + k);
  }
  world().all_to_all_v(send, std::vector<int64_t>(n, per), recv, std::vector<int64_t>(n, per));
  int64_t wrong = 0;
  for (int s = 0; s < n; ++s) {
    for (int64_t k = 0; k < per; ++k)
      wrong += recv.data<int32_t>()[s * per + k] != (s * 7 + rank()) * per + k;
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(Mpi, CountsExchangedWithAllToAll) {
  // Each rank draws its own send counts (as a router would), learns its receive counts from
  // all_to_all, then moves the data.
  const int n = size();
  auto draw = [n](int who, uint64_t round) {
    Rng rng(mix_seed(77 + round, static_cast<uint64_t>(who)));
    std::vector<int64_t> c(n);
    for (auto& x : c) x = static_cast<int64_t>(rng.below(30));
    return c;
  };
  for (uint64_t round = 0; round < 5; ++round) {
    const std::vector<int64_t> send_counts = draw(rank(), round);
    std::vector<int64_t> recv_counts;
    world().all_to_all(send_counts, recv_counts);
    ASSERT_EQ(static_cast<int>(recv_counts.size()), n);
    Matrix counts(n);
    for (int s = 0; s < n; ++s) {
      counts[s] = draw(s, round);
      EXPECT_EQ(recv_counts[s], counts[s][rank()]) << "count from rank " << s;
    }
    exchange_and_check<float>(world(), counts, 0, "exchanged counts");
  }
  // recv may alias send.
  std::vector<int64_t> v(n);
  for (int p = 0; p < n; ++p) v[p] = 100 * rank() + p;
  world().all_to_all(v, v);
  for (int p = 0; p < n; ++p) EXPECT_EQ(v[p], 100 * p + rank());
}

TEST_F(Mpi, AllReduceSumMatchesTheClosedForm) {
  const int64_t n = size();
  for (int64_t len : {0, 1, 1000, 100003}) {
    Tensor f = Tensor::empty({len});
    Tensor i = Tensor::empty({len}, DType::I32);
    for (int64_t k = 0; k < len; ++k) {
      f.data<float>()[k] = static_cast<float>((rank() + 1) * (k % 1000));
      i.data<int32_t>()[k] = static_cast<int32_t>(rank() * 100000 + k);
    }
    world().all_reduce_sum(f);
    world().all_reduce_sum(i);
    int64_t wrong_f = 0, wrong_i = 0;
    for (int64_t k = 0; k < len; ++k) {
      wrong_f += f.data<float>()[k] != static_cast<float>((k % 1000) * n * (n + 1) / 2);
      wrong_i += i.data<int32_t>()[k] != n * k + 100000 * n * (n - 1) / 2;
    }
    EXPECT_EQ(wrong_f, 0) << "float32, " << len << " elements";
    EXPECT_EQ(wrong_i, 0) << "int32, " << len << " elements";
  }
  // A 2-D buffer (a gradient matrix) works the same.
  Tensor g = Tensor::empty({3, 4});
  g.fill(0.5f);
  world().all_reduce_sum(g);
  for (float x : g.to_vector()) EXPECT_EQ(x, 0.5f * static_cast<float>(n));
}

TEST_F(Mpi, AllReduceSumGivesBitIdenticalResultsOnEveryRank) {
  // Data-parallel replicas stay identical only if every rank gets the same bits.
  for (int64_t len : {7, 4099, 1 << 20}) {
    Tensor t = Tensor::empty({len});
    Rng rng(mix_seed(5, static_cast<uint64_t>(rank())));
    for (int64_t k = 0; k < len; ++k) t.data<float>()[k] = static_cast<float>(rng.normal() * 1e3);
    world().all_reduce_sum(t);
    Tensor all = Tensor::empty({len * size()});
    world().all_gather(t, all);
    int64_t differ = 0;
    for (int p = 0; p < size(); ++p) {
      differ += std::memcmp(all.data<float>() + p * len, t.data<float>(),
                            static_cast<size_t>(len) * sizeof(float)) != 0;
    }
    EXPECT_EQ(differ, 0) << len << " elements: ranks got different sums";
  }
}

TEST_F(Mpi, ScalarReductions) {
  const int n = size();
  double d = rank() + 0.5;
  world().all_reduce_sum(d);
  EXPECT_EQ(d, n * n / 2.0);
  double m = rank() == n - 1 ? 3.25 : -1.0 * rank();
  world().all_reduce_max(m);
  EXPECT_EQ(m, 3.25);
  int64_t big = 1000000000000LL + rank();
  world().all_reduce_sum(big);
  EXPECT_EQ(big, 1000000000000LL * n + n * (n - 1) / 2);
  int64_t imax = -rank();
  world().all_reduce_max(imax);
  EXPECT_EQ(imax, 0);
}

TEST_F(Mpi, BroadcastFromEveryRoot) {
  for (int root = 0; root < size(); ++root) {
    Tensor f = Tensor::empty({2, 50});
    Tensor i = Tensor::empty({33}, DType::I32);
    for (int64_t k = 0; k < 100; ++k) f.data<float>()[k] = static_cast<float>(value(rank(), 0, k));
    for (int64_t k = 0; k < 33; ++k) i.data<int32_t>()[k] = static_cast<int32_t>(value(rank(), 1, k));
    world().broadcast(f, root);
    world().broadcast(i, root);
    int64_t wrong = 0;
    for (int64_t k = 0; k < 100; ++k) wrong += f.data<float>()[k] != static_cast<float>(value(root, 0, k));
    for (int64_t k = 0; k < 33; ++k) wrong += i.data<int32_t>()[k] != value(root, 1, k);
    EXPECT_EQ(wrong, 0) << "root " << root;
  }
}

TEST_F(Mpi, BroadcastBytesOfAnyLength) {
  for (size_t length : {size_t{0}, size_t{1}, size_t{1000}, size_t{300001}}) {
    for (int root : {0, size() - 1}) {
      std::string expected(length, '\0');
      Rng rng(mix_seed(length, static_cast<uint64_t>(root)));
      for (auto& c : expected) c = static_cast<char>(rng.below(256));  // NULs included
      std::string bytes = rank() == root ? expected : std::string(17 + rank(), 'x');
      world().broadcast_bytes(bytes, root);
      EXPECT_TRUE(bytes == expected) << length << " bytes from root " << root << ": got " << bytes.size();
    }
  }
}

TEST_F(Mpi, AllGatherIsRankMajor) {
  Tensor send = Tensor::empty({3, 2});
  for (int64_t k = 0; k < 6; ++k) send.data<float>()[k] = static_cast<float>(value(rank(), 0, k));
  Tensor recv = Tensor::zeros({3 * size(), 2});
  world().all_gather(send, recv);
  int64_t wrong = 0;
  for (int p = 0; p < size(); ++p) {
    for (int64_t k = 0; k < 6; ++k)
      wrong += recv.data<float>()[p * 6 + k] != static_cast<float>(value(p, 0, k));
  }
  EXPECT_EQ(wrong, 0);

  Tensor isend = Tensor::from_ints({2}, {rank(), -rank()});
  Tensor irecv = Tensor::zeros({2 * size()}, DType::I32);
  world().all_gather(isend, irecv);
  for (int p = 0; p < size(); ++p) {
    EXPECT_EQ(irecv.data<int32_t>()[2 * p], p);
    EXPECT_EQ(irecv.data<int32_t>()[2 * p + 1], -p);
  }
  world().all_gather(Tensor::empty({0}), Tensor::empty({0}));  // nothing to gather is fine
}

// Rank r's block b holds value(r, b, k): the sum over ranks of block `rank()` is known in closed form.
TEST_F(Mpi, ReduceScatterSumsEachRanksBlock) {
  const int64_t n = 5;
  Tensor send = Tensor::empty({size() * n});
  for (int b = 0; b < size(); ++b)
    for (int64_t k = 0; k < n; ++k) send.data<float>()[b * n + k] = static_cast<float>(value(rank(), b, k));
  Tensor recv = Tensor::zeros({n});
  world().reduce_scatter_sum(send, recv);
  int64_t wrong = 0;
  for (int64_t k = 0; k < n; ++k) {
    int64_t want = 0;
    for (int src = 0; src < size(); ++src) want += value(src, rank(), k);
    wrong += recv.data<float>()[k] != static_cast<float>(want);
  }
  EXPECT_EQ(wrong, 0);

  Tensor isend = Tensor::empty({size() * 2}, DType::I32);
  for (int b = 0; b < size(); ++b) {
    isend.data<int32_t>()[2 * b] = rank() + b;
    isend.data<int32_t>()[2 * b + 1] = 1;
  }
  Tensor irecv = Tensor::zeros({2}, DType::I32);
  world().reduce_scatter_sum(isend, irecv);
  EXPECT_EQ(irecv.data<int32_t>()[0], size() * (size() - 1) / 2 + size() * rank());
  EXPECT_EQ(irecv.data<int32_t>()[1], size());
  world().reduce_scatter_sum(Tensor::empty({0}), Tensor::empty({0}));  // nothing to reduce is fine
}

// A bad size on one rank is refused on every rank before data moves; the communicator stays usable.
TEST_F(Mpi, ReduceScatterRefusesAMismatchOnEveryRank) {
  const int64_t n = rank() == size() - 1 ? 3 : 2;  // the last rank disagrees
  std::string message;
  try {
    world().reduce_scatter_sum(Tensor::zeros({size() * n}), Tensor::zeros({n}));
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("reduce_scatter_sum"), std::string::npos) << message;
  std::string bad_shape;
  try {
    world().reduce_scatter_sum(Tensor::zeros({size() * 2 + 1}), Tensor::zeros({2}));
  } catch (const Error& e) {
    bad_shape = e.what();
  }
  EXPECT_NE(bad_shape.find("needs group size"), std::string::npos) << bad_shape;
  Tensor one = Tensor::from({1}, {1.0f});
  world().all_reduce_sum(one);
  EXPECT_EQ(one.data<float>()[0], static_cast<float>(size()));
}

TEST_F(Mpi, SplitIntoEvenAndOddRanks) {
  auto group = world().split(rank() % 2, rank());
  ASSERT_NE(group, nullptr);  // same on every rank
  const int members = (size() + 1 - rank() % 2) / 2;
  EXPECT_EQ(group->size(), members);
  EXPECT_EQ(group->rank(), rank() / 2);

  // Sum of the world ranks of my parity: closed form.
  Tensor t = Tensor::from_ints({1}, {rank()});
  group->all_reduce_sum(t);
  int expected = 0;
  for (int p = rank() % 2; p < size(); p += 2) expected += p;
  EXPECT_EQ(t.data<int32_t>()[0], expected);

  // Group rank 0 is the lowest world rank of the parity.
  Tensor b = Tensor::from_ints({1}, {rank()});
  group->broadcast(b, 0);
  EXPECT_EQ(b.data<int32_t>()[0], rank() % 2);

  // Both groups move data at once without mixing.
  for (uint64_t round = 0; round < 5; ++round) {
    exchange_and_check<float>(*group, random_counts(group->size(), mix_seed(rank() % 2, round), 25), 1,
                              "inside an even/odd group");
  }
  std::vector<int64_t> back;
  group->all_to_all(std::vector<int64_t>(group->size(), rank()), back);
  for (int p = 0; p < group->size(); ++p) EXPECT_EQ(back[p], 2 * p + rank() % 2);

  // Errors inside a group name the world rank as well.
  const std::string e =
      expect_error([&] { group->all_to_all(std::vector<int64_t>(group->size() + 1), back); },
                   "all_to_all with a wrong length in a group");
  EXPECT_TRUE(contains(e, "(world rank " + std::to_string(rank()) + ")")) << e;
  expect_still_usable(*group);
}

TEST_F(Mpi, SplitOrdersByKeyAndNegativeColorMeansNoGroup) {
  auto reversed = world().split(0, -rank());
  ASSERT_NE(reversed, nullptr);
  EXPECT_EQ(reversed->rank(), size() - 1 - rank());

  auto without_zero = world().split(rank() == 0 ? -1 : 7, rank());
  if (rank() == 0) {
    EXPECT_EQ(without_zero, nullptr);
  } else {
    ASSERT_NE(without_zero, nullptr);
    EXPECT_EQ(without_zero->size(), size() - 1);
    EXPECT_EQ(without_zero->rank(), rank() - 1);
    double one = 1;
    without_zero->all_reduce_sum(one);
    EXPECT_EQ(one, size() - 1);
  }

  // One rank per group: size-1 MPI communicators.
  auto alone = world().split(rank(), 0);
  ASSERT_NE(alone, nullptr);
  EXPECT_EQ(alone->size(), 1);
  exchange_and_check<int32_t>(*alone, Matrix{{6}}, 2, "group of one");

  // A child outlives its parent.
  std::unique_ptr<Communicator> grandchild;
  {
    auto child = world().split(0, rank());
    grandchild = child->split(0, rank());
  }
  grandchild->barrier();
}

TEST_F(Mpi, PiecewisePathsForLargeCounts) {
  // A limit of a few elements per MPI call sends the INT_MAX-overflow code paths through small
  // buffers: all_to_all_v over point-to-point pieces, all_gather with a resized datatype, the
  // reductions and broadcasts in a loop.
  auto small = MpiCommunicator::world(MpiCommunicator::Options{5});
  for (uint64_t round = 0; round < 8; ++round) {
    exchange_and_check<float>(*small, random_counts(size(), mix_seed(31, round), 23), round % 2,
                              "pieces of 5");
    exchange_and_check<int32_t>(*small, random_counts(size(), mix_seed(32, round), 23), 0, "pieces of 5");
  }
  // Only one pair over the limit: every rank must still take the piecewise path together.
  Matrix one_big(size(), std::vector<int64_t>(size(), 2));
  one_big[0][size() - 1] = 13;
  exchange_and_check<float>(*small, one_big, 0, "one pair over the limit");

  Tensor t = Tensor::empty({23}, DType::I32);
  for (int64_t k = 0; k < 23; ++k) t.data<int32_t>()[k] = static_cast<int32_t>(rank() * 100 + k);
  small->all_reduce_sum(t);
  for (int64_t k = 0; k < 23; ++k)
    EXPECT_EQ(t.data<int32_t>()[k], size() * k + 100 * size() * (size() - 1) / 2);

  Tensor b = Tensor::empty({12});
  for (int64_t k = 0; k < 12; ++k) b.data<float>()[k] = static_cast<float>(value(rank(), 0, k));
  small->broadcast(b, size() - 1);
  for (int64_t k = 0; k < 12; ++k) EXPECT_EQ(b.data<float>()[k], static_cast<float>(value(size() - 1, 0, k)));

  std::string bytes = rank() == 0 ? std::string("seventeen bytes!!") : std::string();
  small->broadcast_bytes(bytes, 0);
  EXPECT_EQ(bytes, "seventeen bytes!!");

  Tensor send = Tensor::empty({13});
  for (int64_t k = 0; k < 13; ++k) send.data<float>()[k] = static_cast<float>(value(rank(), 0, k));
  Tensor recv = Tensor::zeros({13 * size()});
  small->all_gather(send, recv);
  int64_t wrong = 0;
  for (int p = 0; p < size(); ++p) {
    for (int64_t k = 0; k < 13; ++k)
      wrong += recv.data<float>()[p * 13 + k] != static_cast<float>(value(p, 0, k));
  }
  EXPECT_EQ(wrong, 0) << "piecewise all_gather";

  // reduce_scatter_sum with blocks past the limit: the sum of the whole buffer, then this rank's block.
  Tensor blocks = Tensor::empty({7 * size()});
  for (int dst = 0; dst < size(); ++dst)
    for (int64_t k = 0; k < 7; ++k) blocks.data<float>()[dst * 7 + k] = static_cast<float>(value(rank(), dst, k));
  Tensor mine = Tensor::zeros({7});
  small->reduce_scatter_sum(blocks, mine);
  int64_t wrong_sums = 0;
  for (int64_t k = 0; k < 7; ++k) {
    int64_t want = 0;
    for (int src = 0; src < size(); ++src) want += value(src, rank(), k);
    wrong_sums += mine.data<float>()[k] != static_cast<float>(want);
  }
  EXPECT_EQ(wrong_sums, 0) << "piecewise reduce_scatter_sum";

  // Children inherit the limit.
  auto child = small->split(0, rank());
  exchange_and_check<float>(*child, random_counts(size(), 8, 17), 0, "pieces of 5 in a child");

  // The limit must agree across ranks.
  small->set_options(MpiCommunicator::Options{rank() == 0 ? 6 : 5});
  const std::string e = expect_error([&] { small->barrier(); }, "different limits");
  EXPECT_TRUE(contains(e, "disagree")) << e;
  EXPECT_THROW(small->set_options(MpiCommunicator::Options{0}), Error);
}

// --- bad arguments: every rank throws, nobody hangs, and the communicator still works ---------

TEST_F(Mpi, WrongCountsLengthOnEveryRank) {
  Tensor send = Tensor::zeros({10}), recv = Tensor::zeros({10});
  const std::vector<int64_t> wrong(size() + 1, 1), right(size(), 1);
  const std::string e =
      expect_error([&] { world().all_to_all_v(send, wrong, recv, right); }, "long send_counts");
  EXPECT_TRUE(contains(e, "all_to_all_v on rank " + std::to_string(rank()) + " of " + std::to_string(size())))
      << e;
  EXPECT_TRUE(contains(e, "send_counts has " + std::to_string(size() + 1) + " entries")) << e;
  const std::string e2 =
      expect_error([&] { world().all_to_all_v(send, right, recv, {1}); }, "short recv_counts");
  EXPECT_TRUE(contains(e2, "recv_counts has 1 entries")) << e2;
  expect_still_usable(world());
}

TEST_F(Mpi, NegativeCountOnOneRank) {
  const int bad = size() - 1;
  Tensor send = Tensor::zeros({10}), recv = Tensor::zeros({10});
  std::vector<int64_t> counts(size(), 1);
  if (rank() == bad) counts[0] = -2;
  const std::string e =
      expect_error([&] { world().all_to_all_v(send, counts, recv, std::vector<int64_t>(size(), 1)); },
                   "negative count on one rank");
  if (rank() == bad) {
    EXPECT_TRUE(contains(e, "send_counts[0] = -2 is negative")) << e;
  } else {
    EXPECT_TRUE(contains(e, "rank " + std::to_string(bad) + " of the group rejected its arguments")) << e;
  }
  expect_still_usable(world());
}

TEST_F(Mpi, CountsExceedingTheBufferOnOneRank) {
  Tensor send = Tensor::zeros({2 * size()}), recv = Tensor::zeros({2 * size() - (rank() == 0 ? 1 : 0)});
  const std::vector<int64_t> two(size(), 2);
  const std::string e =
      expect_error([&] { world().all_to_all_v(send, two, recv, two); }, "recv too small on rank 0");
  if (rank() == 0) {
    EXPECT_TRUE(contains(e, "recv_counts sum to more than recv holds")) << e;
  } else {
    EXPECT_TRUE(contains(e, "rank 0 of the group rejected")) << e;
  }
  // Too few send elements on every rank.
  const std::string e2 =
      expect_error([&] { world().all_to_all_v(Tensor::zeros({1}), two, Tensor::zeros({2 * size()}), two); },
                   "send too small");
  EXPECT_TRUE(contains(e2, "send_counts sum to more than send holds")) << e2;
  expect_still_usable(world());
}

TEST_F(Mpi, CountsThatDisagreeBetweenRanks) {
  // Rank 0 sends 3 elements to rank 1, which expects 4; everything else is 1.
  std::vector<int64_t> send_counts(size(), 1), recv_counts(size(), 1);
  if (rank() == 0) send_counts[1] = 3;
  if (rank() == 1) recv_counts[0] = 4;
  Tensor send = Tensor::zeros({size() + 3}), recv = Tensor::zeros({size() + 3});
  const std::string e =
      expect_error([&] { world().all_to_all_v(send, send_counts, recv, recv_counts); }, "mismatched counts");
  EXPECT_TRUE(contains(e, "counts disagree across ranks")) << e;
  const char* expected = rank() == 0   ? "send_counts[1] = 3 but rank 1 expects 4"
                         : rank() == 1 ? "recv_counts[0] = 4 but rank 0 sends 3"
                                       : "not between this rank and another";
  EXPECT_TRUE(contains(e, expected)) << e;
  expect_still_usable(world());
}

// bfloat16 buffers are moved two bytes an element (counts in elements) and never summed.
TEST_F(Mpi, BfloatIsMovedAndNeverSummed) {
  const int n = size();
  // Element p of rank r's send is r * 16 + p (exact in bf16), one element for each rank.
  std::vector<float> mine(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) mine[p] = static_cast<float>(rank() * 16 + p);
  Tensor send = Tensor::empty({n}, DType::BF16), recv = Tensor::zeros({n}, DType::BF16);
  for (int p = 0; p < n; ++p) send.rows(p, p + 1).fill(mine[p]);
  const std::vector<int64_t> one(static_cast<size_t>(n), 1);
  world().all_to_all_v(send, one, recv, one);
  const std::vector<float> got = recv.to_vector();
  for (int p = 0; p < n; ++p) EXPECT_EQ(got[p], static_cast<float>(p * 16 + rank())) << "from rank " << p;
  Tensor gathered = Tensor::zeros({n * n}, DType::BF16);
  world().all_gather(send, gathered);
  EXPECT_EQ(gathered.to_vector()[static_cast<size_t>(n * (n - 1) + 1)], static_cast<float>((n - 1) * 16 + 1));
  Tensor b = Tensor::zeros({3}, DType::BF16);
  if (rank() == 0) b.fill(2.5f);
  world().broadcast(b, 0);
  EXPECT_EQ(b.to_vector(), (std::vector<float>{2.5f, 2.5f, 2.5f}));
  const std::string e = expect_error([&] { world().all_reduce_sum(b); }, "bf16 all-reduce");
  EXPECT_TRUE(contains(e, "bfloat16 is moved, never summed")) << e;
  expect_still_usable(world());
}

// The agreement round alone, for a collective whose data another transport moves (the NCCL backend):
// good arguments pass everywhere; one rank's error, mismatched counts or a different call throw on
// every rank, naming the external call.
TEST_F(Mpi, AgreementForAnExternalCall) {
  const MpiCommunicator::ExternalCall call{"all_to_all_v", static_cast<int64_t>(DType::F32)};
  const std::vector<int64_t> one(size(), 1);
  world().agree_external(call, "", one, one);  // must not throw
  world().agree_external({"all_reduce_sum", 0, 8}, "");
  std::string e = expect_error(
      [&] { world().agree_external(call, rank() == 1 ? "send is on the host" : "", one, one); }, "one rank's error");
  EXPECT_TRUE(contains(e, rank() == 1 ? "send is on the host" : "rank 1 of the group rejected its arguments")) << e;
  EXPECT_TRUE(contains(e, "all_to_all_v on rank")) << e;
  std::vector<int64_t> send = one, recv = one;
  if (rank() == 0) send[1] = 2;
  e = expect_error([&] { world().agree_external(call, "", send, recv); }, "mismatched counts");
  EXPECT_TRUE(contains(e, "counts disagree across ranks")) << e;
  e = expect_error(
      [&] { world().agree_external({rank() == 0 ? "broadcast" : "all_gather", 0, 4}, ""); }, "different calls");
  EXPECT_TRUE(contains(e, "the ranks disagree on this call")) << e;
  expect_still_usable(world());
}

TEST_F(Mpi, CollectivesCalledInADifferentOrder) {
  Tensor t = Tensor::zeros({4});
  const std::string e = expect_error(
      [&] {
        if (rank() == 0) {
          world().all_reduce_sum(t);
        } else {
          world().broadcast(t, 0);
        }
      },
      "all_reduce_sum on rank 0, broadcast elsewhere");
  EXPECT_TRUE(contains(e, "the ranks disagree on this call")) << e;
  EXPECT_TRUE(contains(e, rank() == 0 ? "this rank called all_reduce_sum(float32, 4 elements)"
                                      : "this rank called broadcast(float32, 4 elements, root 0)"))
      << e;
  expect_still_usable(world());
}

TEST_F(Mpi, ArgumentsThatMustBeEqualButDiffer) {
  // Element count of an all-reduce.
  Tensor t = Tensor::zeros({rank() == 0 ? 10 : 11});
  std::string e = expect_error([&] { world().all_reduce_sum(t); }, "different all_reduce sizes");
  EXPECT_TRUE(contains(e, "disagree")) << e;
  // Broadcast root.
  e = expect_error([&] { world().broadcast(Tensor::zeros({3}), rank() == 0 ? 1 : 0); }, "different roots");
  EXPECT_TRUE(contains(e, "disagree")) << e;
  std::string bytes = "x";
  e = expect_error([&] { world().broadcast_bytes(bytes, size()); }, "root out of range");
  EXPECT_TRUE(contains(e, "root " + std::to_string(size()) + " is not a rank")) << e;
  // dtype of an all_to_all_v.
  const std::vector<int64_t> one(size(), 1);
  const DType dt = rank() == 0 ? DType::I32 : DType::F32;
  e = expect_error(
      [&] { world().all_to_all_v(Tensor::zeros({size()}, dt), one, Tensor::zeros({size()}, dt), one); },
      "different dtypes");
  EXPECT_TRUE(contains(e, "disagree")) << e;
  // all_gather's recv size on one rank.
  e = expect_error(
      [&] {
        world().all_gather(Tensor::zeros({2}), Tensor::zeros({2 * size() + (rank() == size() - 1 ? 1 : 0)}));
      },
      "all_gather recv size");
  EXPECT_TRUE(contains(e, rank() == size() - 1 ? "recv has" : "rejected its arguments")) << e;
  // all_to_all of counts with a wrong length on one rank.
  std::vector<int64_t> back;
  e = expect_error([&] { world().all_to_all(std::vector<int64_t>(size() + (rank() == 0 ? 2 : 0), 0), back); },
                   "all_to_all length");
  EXPECT_TRUE(contains(e, "all_to_all on rank")) << e;
  // Non-contiguous and aliased buffers.
  Tensor wide = Tensor::zeros({size(), 4});
  e = expect_error([&] { world().all_to_all_v(wide.cols(0, 1), one, Tensor::zeros({size()}), one); },
                   "non-contiguous send");
  EXPECT_TRUE(contains(e, "not contiguous")) << e;
  Tensor shared = Tensor::zeros({2 * size()});
  e = expect_error([&] { world().all_to_all_v(shared, one, shared.rows(1, 2 * size()), one); },
                   "aliased buffers");
  EXPECT_TRUE(contains(e, "share memory")) << e;
  expect_still_usable(world());
}

// Prints another rank's failures with its rank in front (rank 0 keeps gtest's normal output).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ampipe::MpiRuntime::init();  // MPI_Init_thread (serialized); MPI_Finalize runs at exit
  ampipe::g_world = ampipe::MpiCommunicator::world();
  const int rank = ampipe::g_world->rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new ampipe::RankFailurePrinter(rank));
  }
  const int result = RUN_ALL_TESTS();
  int64_t failed = result != 0 ? 1 : 0;
  ampipe::g_world->all_reduce_sum(failed);
  if (rank == 0) {
    std::printf("mpi_test_communicator: %d ranks, %s\n", ampipe::g_world->size(),
                failed ? "FAILED on at least one rank" : "all tests passed on every rank");
  }
  ampipe::g_world.reset();
  return failed > 0 ? 1 : 0;
}
