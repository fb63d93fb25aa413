// MpiCommunicator: the Communicator over MPI (CPU tensors), and the process-wide MPI runtime.
//
// Runtime: MpiRuntime::init() initialises MPI once per process with MPI_Init_thread asking for
// MPI_THREAD_SERIALIZED (calls may come from any one thread at a time: the engine makes them all
// from its communication thread) and registers MPI_Finalize to run at exit. MPI_COMM_WORLD gets the
// MPI_ERRORS_RETURN error handler, inherited by every communicator made from it, and MPI error codes
// become ampipe::Error with MPI_Error_string's text. MPI can be initialised only once per process:
// after finalize() it cannot come back.
//
// Agreement: every collective starts with an exchange of four 64-bit words between every pair of
// ranks (point-to-point, nonblocking), in which the ranks share whether their arguments passed the
// local checks, a hash of what must be equal on every rank (the call itself, dtype, element count,
// root, chunk size), and for all_to_all_v a hash that sums to zero exactly when send_counts[j] on
// rank i == recv_counts[i] on rank j for every pair. So bad arguments on any rank, collectives called
// in a different order, and counts that disagree across ranks all throw ampipe::Error on every rank
// of the group, before any data moves, and the communicator stays usable. The cost is one
// latency-bound exchange of size()-1 small messages per rank per call (see
// bench/bench_all_to_all.cpp); a hash collision could hide a disagreement with probability ~2^-64.
//
// Deadline: every wait (the agreement, then the data) is nonblocking MPI polled until it completes
// or Options::timeout_seconds pass (train's --distributed-timeout-minutes, default 10 minutes, as
// Megatron-LM). Past the deadline the whole job ends (MPI_Abort, exit status 1) after printing
// "ampipe: rank W: error: <call> on rank R of N (collective #C of this group): rank P did not enter
// it ... within T (--distributed-timeout-minutes)": the agreement's messages that never came name the
// ranks that did not arrive; in all_to_all_v the pending messages name the peers whose data did not
// move. (It ends the job rather than throwing: a pending request still points into the caller's
// buffers, and a group with a stopped or dead rank cannot be used again anyway.) The agreement's
// deadline counts from the call's entry, each data exchange's from its start, so a rank that waits
// longer than it for a peer (a peer writing a long checkpoint, for instance) is ended too: set it
// above the longest such stretch. A wait polls and yields the core for its first second, then polls
// every millisecond.
//
// Large counts: one MPI call takes at most INT_MAX elements. Beyond that the backend splits:
// all_reduce_sum / broadcast / broadcast_bytes loop over pieces of at most `max_elements_per_call`
// elements, all_gather gathers piece by piece with a resized datatype, and all_to_all_v (always
// point-to-point messages, one per peer) sends runs longer than the limit as several messages.
// `max_elements_per_call` exists so tests can exercise these paths with small buffers.
#pragma once

#include <cstdint>
#include <memory>

#include "comm/communicator.h"

namespace ampipe {

class MpiRuntime {
 public:
  // Initialises MPI if nobody has yet (idempotent, thread-safe); throws ampipe::Error if MPI was
  // already finalized or cannot give MPI_THREAD_SERIALIZED. If something else initialised MPI
  // first, it is left to that code to finalize.
  static void init();
  // True between init() and finalize.
  static bool active();
  // Finalizes MPI now if this runtime initialised it (otherwise at exit). Every rank must call it;
  // communicators still alive become unusable (their destructors are then no-ops).
  static void finalize();
  // Rank and size in MPI_COMM_WORLD (init() first).
  static int world_rank();
  static int world_size();
};

class MpiCommunicator final : public Communicator {
 public:
  struct Options {
    // Largest element count of a single MPI call, in [1, INT_MAX]. Must be the same on every rank
    // (checked). Only tests set it lower.
    int64_t max_elements_per_call = 2147483647;
    // Deadline of one collective, in seconds (> 0; see "Deadline" above). May differ across ranks.
    double timeout_seconds = 600.0;
  };

  // A communicator over every process of the job (a duplicate of MPI_COMM_WORLD, so its messages
  // never mix with other code's). Initialises the runtime. Collective over the world.
  static std::unique_ptr<MpiCommunicator> world();
  static std::unique_ptr<MpiCommunicator> world(const Options& options);
  ~MpiCommunicator() override;

  // Children made by split() inherit the options.
  const Options& options() const;
  void set_options(const Options& options);

  int rank() const override;
  int size() const override;
  std::string backend() const override { return "mpi"; }
  std::unique_ptr<Communicator> split(int color, int key) const override;

  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                    const std::vector<int64_t>& recv_counts) override;
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override;

  void all_reduce_sum(Tensor buffer) override;
  void all_reduce_sum(double& value) override;
  void all_reduce_sum(int64_t& value) override;
  void all_reduce_max(double& value) override;
  void all_reduce_max(int64_t& value) override;

  void broadcast(Tensor buffer, int root) override;
  void broadcast_bytes(std::string& bytes, int root) override;
  void all_gather(const Tensor& send, Tensor recv) override;
  void reduce_scatter_sum(const Tensor& send, Tensor recv) override;

  void barrier() override;
  [[noreturn]] void abort(int code, const std::string& message) override;

  // A collective whose data another transport moves over the same ranks (the NCCL backend,
  // comm/nccl_communicator.h): its name (the Communicator method's, for messages) and what must be
  // equal on every rank (-1: nothing).
  struct ExternalCall {
    const char* name = "";
    int64_t dtype = -1;  // a DType
    int64_t numel = -1;
    int64_t root = -1;
  };
  // The argument agreement round alone, for such a call: every rank reports `local_error` (empty:
  // its arguments are good) and the call; for an all-to-all also its counts (send_counts[j] on rank
  // i must equal recv_counts[i] on rank j; both empty for other calls). Throws on EVERY rank, as the
  // collectives do, when any rank's arguments are bad or the ranks disagree on the call; a rank
  // that does not arrive ends the job at the deadline, naming it and `call.name`. It counts as a
  // collective of this group: AMPIPE_INJECT_COMM_STOP can stop a rank right after it, that is,
  // inside the external call before its data moves.
  void agree_external(const ExternalCall& call, const std::string& local_error,
                      const std::vector<int64_t>& send_counts = {},
                      const std::vector<int64_t>& recv_counts = {}) const;

  struct Impl;  // holds the MPI_Comm; defined in the .cpp so no MPI header leaks out of comm/

 private:
  explicit MpiCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ampipe
