// The MPI backend's internals: the runtime, a group's agreement round and deadline-bounded waits
// (comm/mpi_group.h).
#include "comm/mpi_group.h"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "comm/check.h"
#include "comm/poll_backoff.h"
#include "core/random.h"

namespace ampipe {
namespace {

std::mutex g_runtime_mutex;
bool g_we_initialised = false;

void finalize_at_exit() {
  if (mpi_detail::mpi_initialized() && !mpi_detail::mpi_finalized()) MPI_Finalize();
}

}  // namespace

namespace mpi_detail {

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

void abort_job(int world_rank, int code, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "ampipe: rank %d: %s\n", world_rank, message.c_str());
  std::fflush(stderr);
  if (mpi_initialized() && !mpi_finalized()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

uint64_t pair_term(int src, int dst, int64_t count) {
  return mix_seed(mix_seed(static_cast<uint64_t>(src), static_cast<uint64_t>(dst)),
                  static_cast<uint64_t>(count));
}

}  // namespace mpi_detail

using namespace mpi_detail;  // NOLINT: the internals' own helpers

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

MpiCommunicator::Impl::Impl(MPI_Comm c, const Options& o) : comm(c), options(o) {
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

MpiCommunicator::Impl::~Impl() {
  if (comm != MPI_COMM_NULL && MpiRuntime::active()) MPI_Comm_free(&comm);
}

void MpiCommunicator::Impl::fail(const char* call, const std::string& what) const {
  throw Error(comm_detail::where(call, rank, size, world_rank, world_size) + ": " + what);
}

void MpiCommunicator::Impl::check(int rc, const char* call, const char* mpi_function) const {
  if (rc != MPI_SUCCESS) fail(call, std::string(mpi_function) + " failed: " + mpi_error_text(rc));
}

std::string MpiCommunicator::Impl::rank_name(int p) const {
  std::string name = "rank " + std::to_string(p);
  if (world_rank_of[p] != p) name += " (world rank " + std::to_string(world_rank_of[p]) + ")";
  return name;
}

bool MpiCommunicator::Impl::wait_all(std::vector<MPI_Request>& requests, const char* call,
                                     std::chrono::steady_clock::time_point since) const {
  using Clock = std::chrono::steady_clock;
  const auto deadline = since + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(options.timeout_seconds));
  comm_detail::PollBackoff backoff;
  for (;;) {
    int done = 0;
    check(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), call,
          "MPI_Testall");
    if (done) return true;
    if (Clock::now() >= deadline) return false;
    backoff.pause();
  }
}

std::vector<bool> MpiCommunicator::Impl::pending(std::vector<MPI_Request>& requests) const {
  std::vector<bool> result(requests.size(), false);
  for (size_t i = 0; i < requests.size(); ++i) {
    int done = 0;
    MPI_Test(&requests[i], &done, MPI_STATUS_IGNORE);
    result[i] = done == 0;
  }
  return result;
}

void MpiCommunicator::Impl::timed_out(const char* call, const std::string& what) const {
  std::ostringstream s;
  s << comm_detail::where(call, rank, size, world_rank, world_size) << " (collective #" << calls
    << " of this group): " << what << " within " << format_timeout() << " (--distributed-timeout-minutes)";
  abort_job(world_rank, 1, "error: " + s.str());
}

std::string MpiCommunicator::Impl::format_timeout() const {
  std::ostringstream s;
  const double t = options.timeout_seconds;
  if (t >= 60) {
    s << t / 60 << " min";
  } else {
    s << t << " s";
  }
  return s.str();
}

void MpiCommunicator::Impl::wait_data(std::vector<MPI_Request>& requests, const char* call,
                                      const std::vector<int>& peer_of_request) const {
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

void MpiCommunicator::Impl::maybe_stop_inside() const {
  static const std::pair<long, long> target = [] {
    const char* text = std::getenv("AMPIPE_INJECT_COMM_STOP");
    long w = -1, c = -1;
    if (text != nullptr && std::sscanf(text, "%ld:%ld", &w, &c) != 2) w = c = -1;
    return std::pair<long, long>{w, c};
  }();
  static long entered = 0;  // collectives of this process (calls are serialised: see the header)
  if (target.first != world_rank) return;
  if (++entered == target.second) {
    std::fprintf(stderr, "ampipe: rank %d: AMPIPE_INJECT_COMM_STOP: stopping inside collective %ld\n",
                 world_rank, entered);
    std::fflush(stderr);
    raise(SIGSTOP);
  }
}

MpiCommunicator::Impl::Agreement MpiCommunicator::Impl::agree(const Signature& sig,
                                                              const std::string& local_error,
                                                              uint64_t pair_sum) const {
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

void MpiCommunicator::Impl::exchange_agreement(const char* call, const uint64_t (&mine)[kAgreementWords],
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
    check(MPI_Irecv(theirs.data() + kAgreementWords * p, kAgreementWords, MPI_UINT64_T, p, kAgreementTag,
                    comm, &requests.back()),
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

void MpiCommunicator::Impl::fail_counts_mismatch(const char* call, const std::vector<int64_t>& send_counts,
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

}  // namespace ampipe
