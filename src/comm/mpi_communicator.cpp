#include "comm/mpi_communicator.h"

// The MPI C API only (no deprecated C++ bindings; CMake also defines these via MPI_CXX_SKIP_MPICXX).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>

#include "comm/check.h"
#include "core/random.h"

namespace ampipe {

namespace {

std::mutex g_runtime_mutex;
bool g_we_initialised = false;

bool mpi_initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

bool mpi_finalized() {
  int flag = 0;
  MPI_Finalized(&flag);
  return flag != 0;
}

void finalize_at_exit() {
  if (mpi_initialized() && !mpi_finalized()) MPI_Finalize();
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  std::ostringstream s;
  if (MPI_Error_string(code, text, &length) == MPI_SUCCESS) {
    s << std::string(text, static_cast<size_t>(length)) << " (MPI error code " << code << ")";
  } else {
    s << "MPI error code " << code;
  }
  return s.str();
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::I32:
      return MPI_INT32_T;
  }
  throw Error("no MPI datatype for tensor dtype " + std::string(dtype_name(dtype)));
}

// Host address of a checked (defined, CPU, float32/int32) tensor's first element.
std::byte* host_bytes(const Tensor& t) {
  switch (t.dtype()) {
    case DType::F32:
      return reinterpret_cast<std::byte*>(t.data<float>());
    case DType::I32:
      return reinterpret_cast<std::byte*>(t.data<int32_t>());
  }
  throw Error("unsupported dtype " + std::string(dtype_name(t.dtype())));
}

// check_buffer plus what this backend needs: host memory.
std::string check_host_buffer(const Tensor& t, const char* name) {
  std::string error = comm_detail::check_buffer(t, name);
  if (error.empty() && t.device() != Device::CPU) {
    error = std::string(name) + " is a device (CUDA) tensor; the MPI backend moves host (CPU) tensors only";
  }
  return error;
}

std::string check_disjoint(const Tensor& a, const char* a_name, const Tensor& b, const char* b_name) {
  const auto pa = reinterpret_cast<uintptr_t>(host_bytes(a));
  const auto pb = reinterpret_cast<uintptr_t>(host_bytes(b));
  const auto na = static_cast<uintptr_t>(a.numel()) * dtype_size(a.dtype());
  const auto nb = static_cast<uintptr_t>(b.numel()) * dtype_size(b.dtype());
  if (na == 0 || nb == 0 || pa + na <= pb || pb + nb <= pa) return {};
  return std::string(a_name) + " and " + b_name + " share memory; they must be distinct buffers";
}

// The collectives, for the agreement hash and its error message.
enum class Op : uint64_t {
  kSplit = 1,
  kAllToAllV,
  kAllToAll,
  kAllReduceSumTensor,
  kAllReduceSumF64,
  kAllReduceSumI64,
  kAllReduceMaxF64,
  kAllReduceMaxI64,
  kBroadcast,
  kBroadcastBytes,
  kAllGather,
  kBarrier,
};

// What must be equal on every rank for one call.
struct Signature {
  Op op;
  const char* name;
  int64_t dtype = -1;  // DType, or -1 when the call has no tensor
  int64_t numel = -1;  // elements that must match, or -1
  int64_t root = -1;   // root, or -1

  std::string describe() const {
    std::ostringstream s;
    s << name << "(";
    const char* sep = "";
    if (dtype >= 0) {
      s << dtype_name(static_cast<DType>(dtype));
      sep = ", ";
    }
    if (numel >= 0) {
      s << sep << numel << " elements";
      sep = ", ";
    }
    if (root >= 0) s << sep << "root " << root;
    s << ")";
    return s.str();
  }
};

constexpr int kAllToAllVTag = 17450;
constexpr int kAgreementTag = 17451;
constexpr int kAgreementWords = 4;

// Ends the whole job after printing "ampipe: rank W: <message>" (W = world rank) to stderr.
[[noreturn]] void abort_job(int world_rank, int code, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "ampipe: rank %d: %s\n", world_rank, message.c_str());
  std::fflush(stderr);
  if (mpi_initialized() && !mpi_finalized()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

// Pairwise all_to_all_v term: the sender adds it, the receiver subtracts it.
uint64_t pair_term(int src, int dst, int64_t count) {
  return mix_seed(mix_seed(static_cast<uint64_t>(src), static_cast<uint64_t>(dst)),
                  static_cast<uint64_t>(count));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// MpiRuntime

void MpiRuntime::init() {
  std::lock_guard<std::mutex> lock(g_runtime_mutex);
  AMPIPE_CHECK(!mpi_finalized())
      << "MPI was already finalized in this process; it cannot be initialised again";
  int provided = 0;
  if (!mpi_initialized()) {
    // Open MPI's blocking calls busy-poll by default: a communication thread waiting in an
    // all-to-all would take a core the compute threads need. Yielding while idle keeps the overlap
    // near ideal (docs/BENCHMARKS.md measured 0.97 of ideal against 0.76 spinning). A value the
    // user set (environment or mpirun --mca) wins.
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", /*overwrite=*/0);
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    AMPIPE_CHECK(rc == MPI_SUCCESS) << "MPI_Init_thread failed: " << mpi_error_text(rc);
    g_we_initialised = true;
    std::atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&provided);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  AMPIPE_CHECK(provided >= MPI_THREAD_SERIALIZED)
      << "this MPI library gives thread level " << provided << " but ampipe needs MPI_THREAD_SERIALIZED ("
      << MPI_THREAD_SERIALIZED << "): communicator calls come from a dedicated thread";
}

bool MpiRuntime::active() { return mpi_initialized() && !mpi_finalized(); }

void MpiRuntime::finalize() {
  std::lock_guard<std::mutex> lock(g_runtime_mutex);
  if (g_we_initialised && mpi_initialized() && !mpi_finalized()) MPI_Finalize();
}

int MpiRuntime::world_rank() {
  AMPIPE_CHECK(active()) << "MpiRuntime::world_rank before MpiRuntime::init";
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int MpiRuntime::world_size() {
  AMPIPE_CHECK(active()) << "MpiRuntime::world_size before MpiRuntime::init";
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// ---------------------------------------------------------------------------------------------
// MpiCommunicator::Impl

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  int world_rank = 0;
  int world_size = 1;
  std::vector<int> world_rank_of;  // world rank of each rank of this group
  Options options;
  mutable uint64_t calls = 0;  // collectives entered on this communicator (for timeout messages)

  explicit Impl(MPI_Comm c, const Options& o) : comm(c), options(o) {
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    std::vector<int> mine(static_cast<size_t>(size));
    world_rank_of.resize(static_cast<size_t>(size));
    for (int p = 0; p < size; ++p) mine[p] = p;
    MPI_Group group = MPI_GROUP_NULL, world_group = MPI_GROUP_NULL;
    MPI_Comm_group(comm, &group);
    MPI_Comm_group(MPI_COMM_WORLD, &world_group);
    MPI_Group_translate_ranks(group, size, mine.data(), world_group, world_rank_of.data());
    MPI_Group_free(&group);
    MPI_Group_free(&world_group);
  }
  ~Impl() {
    if (comm != MPI_COMM_NULL && MpiRuntime::active()) MPI_Comm_free(&comm);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  int64_t limit() const { return options.max_elements_per_call; }

  [[noreturn]] void fail(const char* call, const std::string& what) const {
    throw Error(comm_detail::where(call, rank, size, world_rank, world_size) + ": " + what);
  }

  void check(int rc, const char* call, const char* mpi_function) const {
    if (rc != MPI_SUCCESS) fail(call, std::string(mpi_function) + " failed: " + mpi_error_text(rc));
  }

  // "rank 2" or "rank 2 (world rank 5)" for rank p of this group.
  std::string rank_name(int p) const {
    std::string name = "rank " + std::to_string(p);
    if (world_rank_of[p] != p) name += " (world rank " + std::to_string(world_rank_of[p]) + ")";
    return name;
  }

  // Waits until every request has completed, driving MPI's progress, or until the deadline
  // (options.timeout_seconds after `since`). The first 100 us of a wait poll and yield the core;
  // then the poll sleeps between tests, 10 us doubling up to 200 us (at most 5000 cheap tests a
  // second), and after a second (a peer saving a checkpoint, a stalled rank) every millisecond. A
  // yielding poll is not free where ranks outnumber cores: sched_yield gives the core up only to a
  // thread already queued on it, so a rank that yielded for its whole wait (as this did for a
  // second) starved the very peer it waited for when two jobs shared two cores. Returns false at
  // the deadline, with the requests still pending.
  bool wait_all(std::vector<MPI_Request>& requests, const char* call,
                std::chrono::steady_clock::time_point since) const {
    using Clock = std::chrono::steady_clock;
    const auto deadline = since + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(options.timeout_seconds));
    const auto start = Clock::now();
    std::chrono::microseconds nap(10);
    for (;;) {
      int done = 0;
      check(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), call,
            "MPI_Testall");
      if (done) return true;
      const auto now = Clock::now();
      if (now >= deadline) return false;
      const auto waited = now - start;
      if (waited < std::chrono::microseconds(100)) {
        sched_yield();
      } else if (waited < std::chrono::seconds(1)) {
        std::this_thread::sleep_for(nap);
        nap = std::min(nap * 2, std::chrono::microseconds(200));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }

  // Which of `requests` have not completed (MPI_Testall leaves them all untouched when some are
  // pending, so each is tested alone).
  std::vector<bool> pending(std::vector<MPI_Request>& requests) const {
    std::vector<bool> result(requests.size(), false);
    for (size_t i = 0; i < requests.size(); ++i) {
      int done = 0;
      MPI_Test(&requests[i], &done, MPI_STATUS_IGNORE);
      result[i] = done == 0;
    }
    return result;
  }

  // The deadline passed: the group cannot go on (a rank is stopped, dead or elsewhere), and the
  // pending requests still point into buffers, so the whole job ends here with `what` named.
  [[noreturn]] void timed_out(const char* call, const std::string& what) const {
    std::ostringstream s;
    s << comm_detail::where(call, rank, size, world_rank, world_size) << " (collective #" << calls
      << " of this group): " << what << " within " << format_timeout() << " (--distributed-timeout-minutes)";
    abort_job(world_rank, 1, "error: " + s.str());
  }

  std::string format_timeout() const {
    std::ostringstream s;
    const double t = options.timeout_seconds;
    if (t >= 60) {
      s << t / 60 << " min";
    } else {
      s << t << " s";
    }
    return s.str();
  }

  // Waits for a data phase (every rank has passed the agreement): on timeout, the ranks named are
  // those `peer_of_request` maps pending requests to, or, where MPI does not say (collective
  // requests), every other rank.
  void wait_data(std::vector<MPI_Request>& requests, const char* call, const std::vector<int>& peer_of_request = {}) const {
    if (wait_all(requests, call, std::chrono::steady_clock::now())) return;
    std::ostringstream s;
    if (peer_of_request.empty()) {
      s << "every rank entered it but its data exchange did not complete (a rank stopped or died inside it";
      if (size == 2) s << ": " << rank_name(1 - rank);
      s << ")";
    } else {
      const std::vector<bool> waiting = pending(requests);
      std::vector<bool> named(static_cast<size_t>(size), false);
      s << "every rank entered it but the data of ";
      int n = 0;
      for (size_t i = 0; i < requests.size(); ++i) {
        const int p = peer_of_request[i];
        if (!waiting[i] || named[p]) continue;
        named[p] = true;
        s << (n++ ? ", " : "") << rank_name(p);
      }
      s << " did not move (stopped or died inside it)";
    }
    timed_out(call, s.str());
  }

  // Test hook: AMPIPE_INJECT_COMM_STOP=W:C stops world rank W (SIGSTOP) right after the agreement
  // of its C-th collective on any communicator, i.e. inside the call, before its data moves; the
  // fault-injection tests use it to stall a rank at an exact place. Unset: nothing happens.
  void maybe_stop_inside() const {
    static const std::pair<long, long> target = [] {
      const char* text = std::getenv("AMPIPE_INJECT_COMM_STOP");
      long w = -1, c = -1;
      if (text != nullptr && std::sscanf(text, "%ld:%ld", &w, &c) != 2) w = c = -1;
      return std::pair<long, long>{w, c};
    }();
    static long entered = 0;  // collectives of this process (calls are serialised: see the header)
    if (target.first != world_rank) return;
    if (++entered == target.second) {
      std::fprintf(stderr, "ampipe: rank %d: AMPIPE_INJECT_COMM_STOP: stopping inside collective %ld\n", world_rank,
                   entered);
      std::fflush(stderr);
      raise(SIGSTOP);
    }
  }

  // One nonblocking collective, started by `start(&request)` and waited for with the deadline.
  template <class Start>
  void collective(const char* call, const char* mpi_function, Start start) const {
    std::vector<MPI_Request> requests(1, MPI_REQUEST_NULL);
    check(start(&requests[0]), call, mpi_function);
    wait_data(requests, call);
  }

  struct Agreement {
    bool pairs_match = true;  // all_to_all_v: every send count equals its receiver's recv count
  };

  // The agreement round (see the header). Throws on every rank when any rank's arguments are bad or
  // the ranks disagree on the call; returns what all_to_all_v needs to know.
  Agreement agree(const Signature& sig, const std::string& local_error, uint64_t pair_sum = 0) const {
    const uint64_t same =
        mix_seed(mix_seed(static_cast<uint64_t>(sig.op), static_cast<uint64_t>(sig.dtype)),
                 mix_seed(mix_seed(static_cast<uint64_t>(sig.numel), static_cast<uint64_t>(sig.root)),
                          static_cast<uint64_t>(limit())));
    const bool bad = !local_error.empty();
    const uint64_t mine[kAgreementWords] = {bad ? 1u : 0u, bad ? static_cast<uint64_t>(rank) + 1 : 0u, same,
                                            pair_sum};
    uint64_t words[kAgreementWords];
    exchange_agreement(sig.name, mine, words);
    if (words[0] > 0) {
      if (bad) fail(sig.name, local_error);
      std::ostringstream s;
      if (words[0] == 1) {
        s << "rank " << words[1] - 1 << " of the group rejected its arguments";
      } else {
        s << words[0] << " ranks of the group rejected their arguments";
      }
      s << ", so no rank moved any data (the rejecting rank's error says why)";
      fail(sig.name, s.str());
    }
    if (words[2] != same * static_cast<uint64_t>(size)) {
      fail(sig.name,
           "the ranks disagree on this call: collectives were called in a different order on different "
           "ranks, or an argument that must be equal on every rank differs (dtype, element count, root, "
           "max_elements_per_call); this rank called " +
               sig.describe());
    }
    maybe_stop_inside();
    return Agreement{words[3] == 0};
  }

  // The agreement words of every rank, summed (the same sums on every rank): each rank sends its
  // words to every other rank. Point-to-point rather than one MPI_Allreduce so that, when the
  // deadline passes, the messages that never came name the ranks that did not enter the call.
  void exchange_agreement(const char* call, const uint64_t (&mine)[kAgreementWords],
                          uint64_t (&sum)[kAgreementWords]) const {
    const auto since = std::chrono::steady_clock::now();
    ++calls;
    std::vector<uint64_t> theirs(static_cast<size_t>(kAgreementWords) * static_cast<size_t>(size));
    std::vector<MPI_Request> requests;
    std::vector<int> peer;
    requests.reserve(2 * static_cast<size_t>(size));
    for (int k = 1; k < size; ++k) {
      const int p = (rank - k + size) % size;
      requests.emplace_back();
      peer.push_back(p);
      check(MPI_Irecv(theirs.data() + kAgreementWords * p, kAgreementWords, MPI_UINT64_T, p, kAgreementTag, comm,
                      &requests.back()),
            call, "MPI_Irecv (argument agreement)");
    }
    const size_t receives = requests.size();
    for (int k = 1; k < size; ++k) {
      const int p = (rank + k) % size;
      requests.emplace_back();
      check(MPI_Isend(mine, kAgreementWords, MPI_UINT64_T, p, kAgreementTag, comm, &requests.back()), call,
            "MPI_Isend (argument agreement)");
    }
    if (!wait_all(requests, call, since)) {
      const std::vector<bool> waiting = pending(requests);
      std::ostringstream s;
      int missing = 0;
      for (size_t i = 0; i < receives; ++i) {
        if (waiting[i]) s << (missing++ ? ", " : "") << rank_name(peer[i]);
      }
      if (missing == 0) {
        s << "the other ranks entered it but did not take this rank's arrival";
      } else {
        s << " did not enter it (stopped, dead, or waiting in another call)";
      }
      timed_out(call, s.str());
    }
    std::copy(mine, mine + kAgreementWords, theirs.begin() + kAgreementWords * rank);
    for (int w = 0; w < kAgreementWords; ++w) {
      sum[w] = 0;
      for (int p = 0; p < size; ++p) sum[w] += theirs[static_cast<size_t>(kAgreementWords) * p + w];
    }
  }

  // After the agreement found mismatched all_to_all_v counts: one more exchange so each rank can
  // name the pairs it is part of, then throw on every rank.
  [[noreturn]] void fail_counts_mismatch(const char* call, const std::vector<int64_t>& send_counts,
                                         const std::vector<int64_t>& recv_counts) const {
    std::vector<int64_t> mine(2 * static_cast<size_t>(size)), theirs(2 * static_cast<size_t>(size));
    for (int p = 0; p < size; ++p) {
      mine[2 * p] = send_counts[p];      // what I send to p
      mine[2 * p + 1] = recv_counts[p];  // what I expect from p
    }
    collective(call, "MPI_Ialltoall (count diagnosis)", [&](MPI_Request* r) {
      return MPI_Ialltoall(mine.data(), 2, MPI_INT64_T, theirs.data(), 2, MPI_INT64_T, comm, r);
    });
    std::ostringstream s;
    s << "send and receive counts disagree across ranks (send_counts[j] on rank i must equal "
         "recv_counts[i] on rank j; exchange counts with all_to_all first)";
    int found = 0;
    for (int p = 0; p < size; ++p) {
      if (theirs[2 * p] != recv_counts[p]) {
        s << (found++ ? "; " : ": ") << "recv_counts[" << p << "] = " << recv_counts[p] << " but rank " << p
          << " sends " << theirs[2 * p];
      }
      if (theirs[2 * p + 1] != send_counts[p]) {
        s << (found++ ? "; " : ": ") << "send_counts[" << p << "] = " << send_counts[p] << " but rank " << p
          << " expects " << theirs[2 * p + 1];
      }
    }
    if (found == 0) s << ": not between this rank and another (the other ranks' errors name the pairs)";
    fail(call, s.str());
  }
};

// ---------------------------------------------------------------------------------------------
// MpiCommunicator

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MpiCommunicator::~MpiCommunicator() = default;

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() { return world(Options{}); }

std::unique_ptr<MpiCommunicator> MpiCommunicator::world(const Options& options) {
  MpiRuntime::init();
  MPI_Comm comm = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  AMPIPE_CHECK(rc == MPI_SUCCESS) << "MPI_Comm_dup(MPI_COMM_WORLD) failed: " << mpi_error_text(rc);
  auto result =
      std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::make_unique<Impl>(comm, Options{})));
  result->set_options(options);
  return result;
}

const MpiCommunicator::Options& MpiCommunicator::options() const { return impl_->options; }

void MpiCommunicator::set_options(const Options& options) {
  AMPIPE_CHECK(options.max_elements_per_call >= 1 && options.max_elements_per_call <= INT_MAX)
      << "max_elements_per_call " << options.max_elements_per_call << " must be in [1, " << INT_MAX << "]";
  AMPIPE_CHECK(std::isfinite(options.timeout_seconds) && options.timeout_seconds > 0)
      << "collective timeout " << options.timeout_seconds << " s must be a positive number of seconds";
  impl_->options = options;
}

int MpiCommunicator::rank() const { return impl_->rank; }
int MpiCommunicator::size() const { return impl_->size; }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) const {
  const Impl& m = *impl_;
  m.agree(Signature{Op::kSplit, "split"}, {});
  MPI_Comm comm = MPI_COMM_NULL;
  m.check(MPI_Comm_split(m.comm, color < 0 ? MPI_UNDEFINED : color, key, &comm), "split", "MPI_Comm_split");
  if (comm == MPI_COMM_NULL) return nullptr;
  return std::unique_ptr<Communicator>(new MpiCommunicator(std::make_unique<Impl>(comm, m.options)));
}

void MpiCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                                   const std::vector<int64_t>& recv_counts) {
  const Impl& m = *impl_;
  const char* call = "all_to_all_v";
  std::string error = check_host_buffer(send, "send");
  if (error.empty()) error = check_host_buffer(recv, "recv");
  if (error.empty()) error = comm_detail::check_same_dtype(send, "send", recv, "recv");
  if (error.empty())
    error = comm_detail::check_counts(send_counts, "send_counts", m.size, send.numel(), "send");
  if (error.empty())
    error = comm_detail::check_counts(recv_counts, "recv_counts", m.size, recv.numel(), "recv");
  if (error.empty()) error = check_disjoint(send, "send", recv, "recv");

  // Pairwise count hash and displacements.
  uint64_t pair_sum = 0;
  std::vector<int64_t> send_displs(static_cast<size_t>(m.size)), recv_displs(static_cast<size_t>(m.size));
  if (error.empty()) {
    int64_t s_off = 0, r_off = 0;
    for (int p = 0; p < m.size; ++p) {
      pair_sum += pair_term(m.rank, p, send_counts[p]);
      pair_sum -= pair_term(p, m.rank, recv_counts[p]);
      send_displs[p] = s_off;
      recv_displs[p] = r_off;
      s_off += send_counts[p];
      r_off += recv_counts[p];
    }
  }
  const Signature sig{Op::kAllToAllV, call, static_cast<int64_t>(send.dtype())};
  const Impl::Agreement agreed = m.agree(sig, error, pair_sum);
  if (!agreed.pairs_match) m.fail_counts_mismatch(call, send_counts, recv_counts);

  // Nonblocking point-to-point messages (what MPI_Alltoallv does inside for small groups), so a
  // timeout can name the peers whose data did not move; each peer's run is split into messages of
  // at most limit() elements. Messages between one pair on one communicator and tag arrive in
  // order, so the pieces need no numbering.
  const MPI_Datatype type = mpi_type(send.dtype());
  std::byte* send_base = host_bytes(send);
  std::byte* recv_base = host_bytes(recv);
  const auto es = static_cast<int64_t>(dtype_size(send.dtype()));
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  for (int k = 1; k < m.size; ++k) {
    const int p = (m.rank - k + m.size) % m.size;
    for (int64_t done = 0; done < recv_counts[p]; done += m.limit()) {
      const int n = static_cast<int>(std::min(m.limit(), recv_counts[p] - done));
      requests.emplace_back();
      peers.push_back(p);
      m.check(MPI_Irecv(recv_base + (recv_displs[p] + done) * es, n, type, p, kAllToAllVTag, m.comm,
                        &requests.back()),
              call, "MPI_Irecv");
    }
  }
  for (int k = 1; k < m.size; ++k) {
    const int p = (m.rank + k) % m.size;
    for (int64_t done = 0; done < send_counts[p]; done += m.limit()) {
      const int n = static_cast<int>(std::min(m.limit(), send_counts[p] - done));
      requests.emplace_back();
      peers.push_back(p);
      m.check(MPI_Isend(send_base + (send_displs[p] + done) * es, n, type, p, kAllToAllVTag, m.comm,
                        &requests.back()),
              call, "MPI_Isend");
    }
  }
  std::memcpy(recv_base + recv_displs[m.rank] * es, send_base + send_displs[m.rank] * es,
              static_cast<size_t>(send_counts[m.rank] * es));
  m.wait_data(requests, call, peers);
}

void MpiCommunicator::all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) {
  const Impl& m = *impl_;
  const char* call = "all_to_all";
  std::string error;
  if (static_cast<int64_t>(send.size()) != m.size) {
    error = "send has " + std::to_string(send.size()) + " entries; it needs one per rank of the group (" +
            std::to_string(m.size) + ")";
  }
  m.agree(Signature{Op::kAllToAll, call}, error);
  const std::vector<int64_t> send_copy = &send == &recv ? send : std::vector<int64_t>();
  const std::vector<int64_t>& source = &send == &recv ? send_copy : send;
  recv.resize(static_cast<size_t>(m.size));
  m.collective(call, "MPI_Ialltoall", [&](MPI_Request* r) {
    return MPI_Ialltoall(source.data(), 1, MPI_INT64_T, recv.data(), 1, MPI_INT64_T, m.comm, r);
  });
}

void MpiCommunicator::all_reduce_sum(Tensor buffer) {
  const Impl& m = *impl_;
  const char* call = "all_reduce_sum";
  const std::string error = check_host_buffer(buffer, "buffer");
  m.agree(Signature{Op::kAllReduceSumTensor, call, static_cast<int64_t>(buffer.dtype()), buffer.numel()},
          error);
  const MPI_Datatype type = mpi_type(buffer.dtype());
  std::byte* base = host_bytes(buffer);
  const auto es = static_cast<int64_t>(dtype_size(buffer.dtype()));
  for (int64_t done = 0; done < buffer.numel(); done += m.limit()) {
    const int n = static_cast<int>(std::min(m.limit(), buffer.numel() - done));
    m.collective(call, "MPI_Iallreduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, base + done * es, n, type, MPI_SUM, m.comm, r);
    });
  }
}

namespace {
template <class T>
void scalar_all_reduce(const MpiCommunicator::Impl& m, T& value, Op op, const char* call, MPI_Datatype type,
                       MPI_Op reduction) {
  m.agree(Signature{op, call}, {});
  m.collective(call, "MPI_Iallreduce", [&](MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, &value, 1, type, reduction, m.comm, r);
  });
}
}  // namespace

void MpiCommunicator::all_reduce_sum(double& value) {
  scalar_all_reduce(*impl_, value, Op::kAllReduceSumF64, "all_reduce_sum(double)", MPI_DOUBLE, MPI_SUM);
}
void MpiCommunicator::all_reduce_sum(int64_t& value) {
  scalar_all_reduce(*impl_, value, Op::kAllReduceSumI64, "all_reduce_sum(int64)", MPI_INT64_T, MPI_SUM);
}
void MpiCommunicator::all_reduce_max(double& value) {
  scalar_all_reduce(*impl_, value, Op::kAllReduceMaxF64, "all_reduce_max(double)", MPI_DOUBLE, MPI_MAX);
}
void MpiCommunicator::all_reduce_max(int64_t& value) {
  scalar_all_reduce(*impl_, value, Op::kAllReduceMaxI64, "all_reduce_max(int64)", MPI_INT64_T, MPI_MAX);
}

void MpiCommunicator::broadcast(Tensor buffer, int root) {
  const Impl& m = *impl_;
  const char* call = "broadcast";
  std::string error = check_host_buffer(buffer, "buffer");
  if (error.empty()) error = comm_detail::check_root(root, m.size);
  m.agree(Signature{Op::kBroadcast, call, static_cast<int64_t>(buffer.dtype()), buffer.numel(), root}, error);
  const MPI_Datatype type = mpi_type(buffer.dtype());
  std::byte* base = host_bytes(buffer);
  const auto es = static_cast<int64_t>(dtype_size(buffer.dtype()));
  for (int64_t done = 0; done < buffer.numel(); done += m.limit()) {
    const int n = static_cast<int>(std::min(m.limit(), buffer.numel() - done));
    m.collective(call, "MPI_Ibcast",
                 [&](MPI_Request* r) { return MPI_Ibcast(base + done * es, n, type, root, m.comm, r); });
  }
}

void MpiCommunicator::broadcast_bytes(std::string& bytes, int root) {
  const Impl& m = *impl_;
  const char* call = "broadcast_bytes";
  m.agree(Signature{Op::kBroadcastBytes, call, -1, -1, root}, comm_detail::check_root(root, m.size));
  int64_t length = static_cast<int64_t>(bytes.size());
  m.collective(call, "MPI_Ibcast (length)",
               [&](MPI_Request* r) { return MPI_Ibcast(&length, 1, MPI_INT64_T, root, m.comm, r); });
  if (m.rank != root) bytes.resize(static_cast<size_t>(length));
  for (int64_t done = 0; done < length; done += m.limit()) {
    const int n = static_cast<int>(std::min(m.limit(), length - done));
    m.collective(call, "MPI_Ibcast",
                 [&](MPI_Request* r) { return MPI_Ibcast(bytes.data() + done, n, MPI_BYTE, root, m.comm, r); });
  }
}

void MpiCommunicator::all_gather(const Tensor& send, Tensor recv) {
  const Impl& m = *impl_;
  const char* call = "all_gather";
  std::string error = check_host_buffer(send, "send");
  if (error.empty()) error = check_host_buffer(recv, "recv");
  if (error.empty()) error = comm_detail::check_same_dtype(send, "send", recv, "recv");
  if (error.empty() && recv.numel() != send.numel() * m.size) {
    error = "recv has " + std::to_string(recv.numel()) + " elements; it needs group size " +
            std::to_string(m.size) + " x send's " + std::to_string(send.numel());
  }
  if (error.empty()) error = check_disjoint(send, "send", recv, "recv");
  m.agree(Signature{Op::kAllGather, call, static_cast<int64_t>(send.dtype()), send.numel()}, error);

  const MPI_Datatype type = mpi_type(send.dtype());
  std::byte* send_base = host_bytes(send);
  std::byte* recv_base = host_bytes(recv);
  const int64_t n = send.numel();
  if (n <= m.limit()) {
    const int count = static_cast<int>(n);
    m.collective(call, "MPI_Iallgather", [&](MPI_Request* r) {
      return MPI_Iallgather(send_base, count, type, recv_base, count, type, m.comm, r);
    });
    return;
  }
  // Piecewise: piece [done, done + c) of every rank's block; the receive datatype is c contiguous
  // elements with an extent of a whole block, so rank r's piece lands at r * n + done.
  const auto es = static_cast<int64_t>(dtype_size(send.dtype()));
  for (int64_t done = 0; done < n; done += m.limit()) {
    const int c = static_cast<int>(std::min(m.limit(), n - done));
    MPI_Datatype piece = MPI_DATATYPE_NULL, strided = MPI_DATATYPE_NULL;
    m.check(MPI_Type_contiguous(c, type, &piece), call, "MPI_Type_contiguous");
    m.check(MPI_Type_create_resized(piece, 0, static_cast<MPI_Aint>(n * es), &strided), call,
            "MPI_Type_create_resized");
    m.check(MPI_Type_commit(&strided), call, "MPI_Type_commit");
    m.collective(call, "MPI_Iallgather", [&](MPI_Request* r) {
      return MPI_Iallgather(send_base + done * es, c, type, recv_base + done * es, 1, strided, m.comm, r);
    });
    MPI_Type_free(&strided);
    MPI_Type_free(&piece);
  }
}

void MpiCommunicator::barrier() {
  // The agreement allreduce is itself a barrier: no rank's result exists before every rank's input.
  impl_->agree(Signature{Op::kBarrier, "barrier"}, {});
}

void MpiCommunicator::abort(int code, const std::string& message) { abort_job(impl_->world_rank, code, message); }

}  // namespace ampipe
