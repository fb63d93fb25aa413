// The MPI backend's internals (internal to comm/): MpiCommunicator::Impl, a group's state and the two
// mechanisms every collective shares, the argument agreement round and the deadline-bounded wait,
// plus the MPI helpers both source files use. mpi_group.cpp defines them; mpi_communicator.cpp
// defines the collectives on top. The contract is comm/mpi_communicator.h's.
#pragma once

// The MPI C API only (no deprecated C++ bindings; CMake also defines these via MPI_CXX_SKIP_MPICXX).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"

namespace ampipe {
namespace mpi_detail {

bool mpi_initialized();
bool mpi_finalized();
// MPI's text for an error code, with the code.
std::string mpi_error_text(int code);

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
  kReduceScatterSum,
  kExternal,  // agree_external: the signature hashes the call's name too
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
[[noreturn]] void abort_job(int world_rank, int code, const std::string& message);

// Pairwise all_to_all_v term: the sender adds it, the receiver subtracts it.
uint64_t pair_term(int src, int dst, int64_t count);

}  // namespace mpi_detail

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  int world_rank = 0;
  int world_size = 1;
  std::vector<int> world_rank_of;  // world rank of each rank of this group
  Options options;
  mutable uint64_t calls = 0;  // collectives entered on this communicator (for timeout messages)

  explicit Impl(MPI_Comm c, const Options& o);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  int64_t limit() const { return options.max_elements_per_call; }

  [[noreturn]] void fail(const char* call, const std::string& what) const;

  void check(int rc, const char* call, const char* mpi_function) const;

  // "rank 2" or "rank 2 (world rank 5)" for rank p of this group.
  std::string rank_name(int p) const;

  // Waits until every request has completed, driving MPI's progress, or until the deadline
  // (options.timeout_seconds after `since`), polling as comm/poll_backoff.h says. Returns false at
  // the deadline, with the requests still pending.
  bool wait_all(std::vector<MPI_Request>& requests, const char* call,
                std::chrono::steady_clock::time_point since) const;

  // Which of `requests` have not completed (MPI_Testall leaves them all untouched when some are
  // pending, so each is tested alone).
  std::vector<bool> pending(std::vector<MPI_Request>& requests) const;

  // The deadline passed: the group cannot go on (a rank is stopped, dead or elsewhere), and the
  // pending requests still point into buffers, so the whole job ends here with `what` named.
  [[noreturn]] void timed_out(const char* call, const std::string& what) const;

  std::string format_timeout() const;

  // Waits for a data phase (every rank has passed the agreement): on timeout, the ranks named are
  // those `peer_of_request` maps pending requests to, or, where MPI does not say (collective
  // requests), every other rank.
  void wait_data(std::vector<MPI_Request>& requests, const char* call,
                 const std::vector<int>& peer_of_request = {}) const;

  // Test hook: AMPIPE_INJECT_COMM_STOP=W:C stops world rank W (SIGSTOP) right after the agreement
  // of its C-th collective on any communicator, i.e. inside the call, before its data moves; the
  // fault-injection tests use it to stall a rank at an exact place. Unset: nothing happens.
  void maybe_stop_inside() const;

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
  Agreement agree(const mpi_detail::Signature& sig, const std::string& local_error,
                  uint64_t pair_sum = 0) const;

  // The agreement words of every rank, summed (the same sums on every rank): each rank sends its
  // words to every other rank. Point-to-point rather than one MPI_Allreduce so that, when the
  // deadline passes, the messages that never came name the ranks that did not enter the call.
  void exchange_agreement(const char* call, const uint64_t (&mine)[mpi_detail::kAgreementWords],
                          uint64_t (&sum)[mpi_detail::kAgreementWords]) const;

  // After the agreement found mismatched all_to_all_v counts: one more exchange so each rank can
  // name the pairs it is part of, then throw on every rank.
  [[noreturn]] void fail_counts_mismatch(const char* call, const std::vector<int64_t>& send_counts,
                                         const std::vector<int64_t>& recv_counts) const;
};

}  // namespace ampipe
