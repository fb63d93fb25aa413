// What the emulated NCCL's files share (internal to src/gpu_emulator; include/nccl.h states the
// contract): nccl.cpp owns the API, groups and the queued units; nccl_transport.cpp connects the
// ranks and moves messages; nccl_collectives.cpp builds the collectives from messages.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "include/nccl.h"

namespace ampipe_gpu_emulator::nccl {

// One rank's view of a communicator. Shared (std::shared_ptr) by the handle, the init thread and
// every queued unit, so it outlives ncclCommAbort until the last queued unit has finished.
struct CommState {
  int nranks = 0;
  int rank = 0;
  int device = 0;
  std::string token;  // from the unique id: names the listeners

  std::atomic<bool> aborted{false};  // ncclCommAbort: queued and in-flight work ends at once

  // Written by init (before `status` leaves ncclInProgress) or by the unit holding the ticket.
  std::vector<int> sockets;             // per peer; -1 for the rank itself
  std::vector<uint64_t> sent_messages;  // per peer: the next message's sequence number
  std::vector<uint64_t> received_messages;

  std::mutex mutex;  // guards what follows
  std::condition_variable changed;
  ncclResult_t status = ncclInProgress;  // ncclSuccess once connected; the first error sticks
  std::string error_text;
  uint64_t next_ticket = 0;           // issue order of units
  uint64_t running_ticket = 0;        // the unit whose turn it is
  std::set<uint64_t> finished_early;  // units that ended before their turn (after an error)
  int pending_units = 0;
  std::thread init_thread;

  ~CommState();
  // Records `code` with `text` as the communicator's error unless one is already recorded.
  void fail(ncclResult_t code, const std::string& text);
  ncclResult_t current_status();
  // Shuts the connections down (the peers see end of file); the descriptors close with the state.
  void shutdown_sockets();
};

// ---- Transport (nccl_transport.cpp) -------------------------------------------------------------
// Listens, connects to every lower rank and accepts every higher one, exchanging hellos (rank,
// device, host); refuses two ranks on one device of one host. On failure `error` says why.
ncclResult_t connect_ranks(CommState& comm, std::string& error);

// A message to or from a peer: `bytes` from `send_data`, or into `recv_data`.
struct Message {
  int peer = 0;
  bool is_send = false;
  const void* send_data = nullptr;
  void* recv_data = nullptr;
  size_t bytes = 0;
};
// Moves `messages` (per peer, sends and receives each in the listed order; none to the rank itself)
// over the non-blocking sockets in one poll loop that wakes every 10 ms to check the abort flag.
// A failure becomes the communicator's error; returns whether everything moved.
bool exchange(CommState& comm, const std::vector<Message>& messages);

// ---- Operations (nccl_collectives.cpp) ----------------------------------------------------------
enum class OpKind { Send, Recv, AllReduce, Broadcast, AllGather, ReduceScatter };
struct Op {
  OpKind kind = OpKind::Send;
  const void* send = nullptr;
  void* recv = nullptr;
  size_t count = 0;
  ncclDataType_t type = ncclInt8;
  ncclRedOp_t reduction = ncclSum;
  int peer = 0;  // Send/Recv: the peer; Broadcast: the root
};
size_t type_size(ncclDataType_t type);  // 0 for an unknown type
// Runs the point-to-point operations of a unit as one exchange (self pairs copied).
bool run_point_to_point(CommState& comm, const std::vector<Op>& ops);
// Runs one collective.
bool run_collective(CommState& comm, const Op& op);

}  // namespace ampipe_gpu_emulator::nccl
