// Communicator: the collectives that expert and data parallelism need, over a group of ranks.
//
// Backends: `SelfCommunicator` (one rank, comm/self_communicator.h), `MpiCommunicator` (CPU tensors
// over MPI, comm/mpi_communicator.h); a NCCL backend for CUDA tensors fits behind the same class.
// `make_world_communicator()` (comm/world.h) picks one. This layer knows nothing of what the
// tensors mean: buffers are flat runs of elements.
//
// Contract, for every backend:
// - Thread-safety: a communicator is used by one thread at a time. MPI is initialised with
//   MPI_THREAD_SERIALIZED, so this holds for all communicators of a process together: in the
//   engine, every call comes from the one communication stream's thread.
// - Collectives (every method except rank(), size() and abort()) must be called by every rank of
//   the group, in the same order, with arguments that agree: the same root, the same element
//   counts where sizes must match, the same dtype.
// - Buffers are Tensors of one dtype (float32, bfloat16 or int32) on one device, contiguous;
//   counts and offsets are in ELEMENTS of that dtype, never bytes (a bfloat16 all-to-all moves
//   half the bytes of a float32 one). bfloat16 is moved, never summed: all_reduce_sum refuses it. The MPI backend takes Device::CPU only.
//   A rank-major buffer holds the elements for (or from) rank 0 first, then rank 1, and so on.
// - Errors throw ampipe::Error with a message naming the call and the rank ("all_to_all_v on rank
//   1 of 4: ..."). Bad arguments are found before any data moves and are reported on EVERY rank of
//   the group (the backend makes the ranks agree first, see MpiCommunicator), so a wrong count on
//   one rank ends the call everywhere instead of leaving the others waiting; the communicator stays
//   usable afterwards. An error inside MPI itself (a lost peer) may leave the group unusable: end
//   the job with abort().
// - No hang: a backend that waits on other processes bounds every wait by a deadline and ends the
//   job naming the rank that did not arrive (the MPI backend's Options::timeout_seconds).
// - No size limit: counts beyond what one MPI call takes (INT_MAX elements) are split into several
//   calls by the MPI backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ampipe {

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // This rank's index in the group, in [0, size()), and the group's size.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "self", "mpi", ... (for logs).
  virtual std::string backend() const = 0;

  // Sub-groups, like MPI_Comm_split: ranks that pass the same `color` form one new group, ordered
  // by `key` (ties by rank in this group). A negative color means "in no group": that rank gets
  // nullptr. Collective over this group. The new communicator is independent of this one (its
  // messages never match this one's) and may outlive it.
  // E.g. with EP-sized expert groups: split(rank / ep, rank) and data-parallel replicas
  // split(rank % ep, rank).
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // Variable all-to-all. `send` holds send_counts[0] elements for rank 0, then send_counts[1] for
  // rank 1, ...; `recv` receives recv_counts[0] elements from rank 0 first, then rank 1, ... .
  // Both counts vectors have size() entries, each >= 0; their sums must fit in send.numel() and
  // recv.numel() (elements past the sum are left untouched). send and recv: same dtype,
  // contiguous, distinct storage. send_counts[j] on rank i must equal recv_counts[i] on rank j:
  // exchange counts with all_to_all() first. The MPI backend verifies that too (see there).
  virtual void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                            const std::vector<int64_t>& recv_counts) = 0;
  // One int64 per rank: recv[i] = what rank i put in its send[rank()]. send has size() entries;
  // recv is resized to size().
  virtual void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) = 0;

  // In-place element-wise sum over the group (float32 or int32; the same numel on every rank).
  virtual void all_reduce_sum(Tensor buffer) = 0;
  // Scalar helpers (e.g. a loss, a token count, a gradient norm): in place.
  virtual void all_reduce_sum(double& value) = 0;
  virtual void all_reduce_sum(int64_t& value) = 0;
  virtual void all_reduce_max(double& value) = 0;
  virtual void all_reduce_max(int64_t& value) = 0;

  // Copies root's buffer into every rank's buffer (the same dtype and numel everywhere).
  virtual void broadcast(Tensor buffer, int root) = 0;
  // Variable length: every rank's `bytes` becomes root's (any length, any bytes).
  virtual void broadcast_bytes(std::string& bytes, int root) = 0;
  // recv (size() * send.numel() elements, same dtype) = every rank's send, rank-major. The same
  // send.numel() on every rank.
  virtual void all_gather(const Tensor& send, Tensor recv) = 0;
  // Sum, then scatter (the data-parallel gradient reduction of a sharded optimizer): send holds
  // size() blocks of recv.numel() elements, rank-major; recv on rank i becomes the element-wise sum
  // over every rank of its send's block i. float32 or int32; send and recv distinct storage, the
  // same recv.numel() on every rank. Half the traffic of all_reduce_sum over the same send.
  // The default is correct for any backend (all_reduce_sum on a copy of send, then this rank's
  // block); the MPI and NCCL backends override it with their own reduce-scatter.
  virtual void reduce_scatter_sum(const Tensor& send, Tensor recv);

  // Returns once every rank of the group has entered it.
  virtual void barrier() = 0;

  // Whether buffers on Device::CUDA may be passed (the one-rank backend copies them on the device;
  // HostStagedCommunicator stages them through the host). The MPI backend takes host buffers only.
  virtual bool moves_device_buffers() const { return false; }

  // Ends the whole job, not just this group and not just this rank (MPI_Abort on the world), after
  // printing "ampipe: rank R: <message>" (R = world rank) to stderr. Not collective: for a rank
  // that cannot go on while others may be waiting for it. `code` becomes the exit status (use a
  // non-zero one).
  [[noreturn]] virtual void abort(int code, const std::string& message) = 0;
};

}  // namespace ampipe
