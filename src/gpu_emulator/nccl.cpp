// The emulated NCCL's API (docs/GPU.md, "The emulator"; include/nccl.h states the contract):
// communicators, errors, groups, and the units of work queued on streams. A unit is what one
// ncclGroupEnd or one lone call issues for one communicator. Units of a communicator take a ticket
// at issue and run strictly in ticket order whatever their streams, so every rank's sockets carry
// the same messages in the same order; a unit whose ops use several streams runs on the first and
// holds the others until it is done (NCCL joins a group's streams the same way).
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>

#include "nccl_internal.h"

struct ncclComm {
  std::shared_ptr<ampipe_gpu_emulator::nccl::CommState> state;
};

namespace ampipe_gpu_emulator::nccl {

constexpr auto kPollInterval = std::chrono::milliseconds(10);
constexpr char kIdPrefix[] = "ampipe-nccl-emu:";

CommState::~CommState() {
  for (int fd : sockets) {
    if (fd >= 0) ::close(fd);
  }
}

void CommState::fail(ncclResult_t code, const std::string& text) {
  std::lock_guard<std::mutex> lock(mutex);
  if (status == ncclSuccess || status == ncclInProgress) {
    status = code;
    error_text = text;
  }
  changed.notify_all();
}

ncclResult_t CommState::current_status() {
  std::lock_guard<std::mutex> lock(mutex);
  return status;
}

void CommState::shutdown_sockets() {
  for (int fd : sockets) {
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  }
}

namespace {

// ---- Errors and the fault-injection hook ----------------------------------------------------------
thread_local std::string t_last_error;

ncclResult_t report(ncclResult_t code, std::string text) {
  t_last_error = std::move(text);
  return code;
}

long injected_unit() {
  static const long unit = [] {
    const char* v = std::getenv("AMPIPE_GPU_EMULATOR_NCCL_ERROR");
    if (v == nullptr || *v == '\0') return 0L;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    return *end == '\0' && n > 0 ? n : 0L;
  }();
  return unit;
}
std::atomic<long> g_units_issued{0};

// ---- Units ----------------------------------------------------------------------------------------
// The other streams of a unit that uses several: each waits on its stream until the unit has run.
struct StreamJoin {
  std::mutex mutex;
  std::condition_variable changed;
  size_t expected = 0;
  size_t arrived = 0;
  bool done = false;

  void arrive_and_wait(const CommState& comm) {
    std::unique_lock<std::mutex> lock(mutex);
    ++arrived;
    changed.notify_all();
    while (!done && !comm.aborted) changed.wait_for(lock, kPollInterval);
  }
  bool wait_arrivals(CommState& comm) {
    std::unique_lock<std::mutex> lock(mutex);
    while (arrived < expected) {
      if (comm.aborted || comm.current_status() != ncclSuccess) return false;
      changed.wait_for(lock, kPollInterval);
    }
    return true;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex);
    done = true;
    changed.notify_all();
  }
};

// A unit's turn. Finished exactly once: by the unit, or, if its stream drops it unrun (a faulted
// device runs no more work), by the destructor, so later units and ncclCommDestroy never wait on it.
struct UnitTicket {
  std::shared_ptr<CommState> comm;
  std::shared_ptr<StreamJoin> join;
  uint64_t number = 0;
  const char* what = "";
  bool finished = false;

  void finish(bool ran) {
    finished = true;
    if (!ran && !comm->aborted) {
      comm->fail(ncclUnhandledCudaError, std::string(what) + " on rank " + std::to_string(comm->rank) +
                                             " never ran: its stream's device has faulted (see "
                                             "cudaStreamSynchronize) or does not exist");
    }
    join->release();
    std::lock_guard<std::mutex> lock(comm->mutex);
    if (number == comm->running_ticket) {
      ++comm->running_ticket;
      while (comm->finished_early.erase(comm->running_ticket) > 0) ++comm->running_ticket;
    } else {
      comm->finished_early.insert(number);
    }
    --comm->pending_units;
    comm->changed.notify_all();
  }
  ~UnitTicket() {
    if (!finished) finish(false);
  }
};

// Waits for the unit's turn; false once the communicator has failed or been aborted.
bool wait_turn(CommState& comm, uint64_t ticket) {
  std::unique_lock<std::mutex> lock(comm.mutex);
  for (;;) {
    if (comm.aborted || comm.status != ncclSuccess) return false;
    if (comm.running_ticket == ticket) return true;
    comm.changed.wait_for(lock, kPollInterval);
  }
}

// Point-to-point operations first, as one exchange (a group's operations are concurrent, so every
// rank may take them in this order), then the collectives in issue order.
void run_unit(CommState& comm, const std::vector<Op>& ops, StreamJoin& join, uint64_t ticket, bool injected) {
  if (!wait_turn(comm, ticket) || !join.wait_arrivals(comm)) return;
  if (injected) {
    comm.fail(ncclSystemError, "rank " + std::to_string(comm.rank) + ": failure injected by " +
                                   "AMPIPE_GPU_EMULATOR_NCCL_ERROR=" + std::to_string(injected_unit()) +
                                   " (this unit moved no data)");
    return;
  }
  std::vector<Op> point_to_point;
  for (const Op& op : ops) {
    if (op.kind == OpKind::Send || op.kind == OpKind::Recv) point_to_point.push_back(op);
  }
  if (!point_to_point.empty() && !run_point_to_point(comm, point_to_point)) return;
  for (const Op& op : ops) {
    if (op.kind != OpKind::Send && op.kind != OpKind::Recv && !run_collective(comm, op)) return;
  }
}

void queue_unit(const std::shared_ptr<CommState>& comm, std::vector<Op> ops,
                const std::vector<cudaStream_t>& streams, bool injected, const char* what) {
  auto join = std::make_shared<StreamJoin>();
  join->expected = streams.size() - 1;
  auto ticket = std::make_shared<UnitTicket>();
  ticket->comm = comm;
  ticket->join = join;
  ticket->what = what;
  {
    std::lock_guard<std::mutex> lock(comm->mutex);
    ticket->number = comm->next_ticket++;
    ++comm->pending_units;
  }
  // A nullptr stream is the legacy stream of the communicator's device, as NCCL launches there.
  int caller_device = 0;
  (void)cudaGetDevice(&caller_device);
  (void)cudaSetDevice(comm->device);
  for (size_t i = 1; i < streams.size(); ++i) {
    enqueue(
        streams[i], [join, comm] { join->arrive_and_wait(*comm); }, what);
  }
  enqueue(
      streams[0],
      [comm, ops = std::move(ops), join, ticket, injected] {
        run_unit(*comm, ops, *join, ticket->number, injected);
        ticket->finish(true);
      },
      what);
  (void)cudaSetDevice(caller_device);
}

// ---- Groups ---------------------------------------------------------------------------------------
struct PendingOp {
  std::shared_ptr<CommState> comm;
  cudaStream_t stream;
  Op op;
};
struct GroupState {
  int depth = 0;
  std::vector<PendingOp> ops;
  ncclResult_t error = ncclSuccess;  // the first failed call inside the group
  std::string error_text;
};
thread_local GroupState t_group;

// One unit per communicator, in the order the communicators first appear.
void issue(const std::vector<PendingOp>& ops, const char* what) {
  const long unit = ++g_units_issued;
  const bool injected = injected_unit() > 0 && unit == injected_unit();
  std::vector<CommState*> done;
  for (const PendingOp& first : ops) {
    if (std::find(done.begin(), done.end(), first.comm.get()) != done.end()) continue;
    done.push_back(first.comm.get());
    std::vector<Op> unit_ops;
    std::vector<cudaStream_t> streams;
    for (const PendingOp& p : ops) {
      if (p.comm != first.comm) continue;
      unit_ops.push_back(p.op);
      if (std::find(streams.begin(), streams.end(), p.stream) == streams.end()) streams.push_back(p.stream);
    }
    queue_unit(first.comm, std::move(unit_ops), streams, injected, what);
  }
}

std::string range_text(int value, int nranks) {
  return std::to_string(value) + " is not a rank of a communicator of " + std::to_string(nranks);
}

// NCCL's argument checks, and a communicator that is not ready or has failed refuses new work.
ncclResult_t check(ncclComm_t comm, const Op& op, const std::string& call) {
  if (comm == nullptr) return report(ncclInvalidArgument, call + ": comm is NULL");
  CommState& c = *comm->state;
  ncclResult_t status;
  std::string text;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    status = c.status;
    text = c.error_text;
  }
  if (status == ncclInProgress) {
    return report(ncclInvalidArgument, call +
                                           ": the communicator is still connecting (ncclCommGetAsyncError "
                                           "returns ncclInProgress until it is ready)");
  }
  if (status != ncclSuccess) return report(status, call + ": the communicator has failed: " + text);
  if (type_size(op.type) == 0)
    return report(ncclInvalidArgument, call + ": unknown datatype " + std::to_string(op.type));
  const bool reduces = op.kind == OpKind::AllReduce || op.kind == OpKind::ReduceScatter;
  if (reduces && (static_cast<int>(op.reduction) < 0 || static_cast<int>(op.reduction) >= ncclNumOps)) {
    return report(ncclInvalidArgument, call + ": unknown reduction " + std::to_string(op.reduction));
  }
  const bool p2p = op.kind == OpKind::Send || op.kind == OpKind::Recv;
  if ((p2p || op.kind == OpKind::Broadcast) && (op.peer < 0 || op.peer >= c.nranks)) {
    return report(ncclInvalidArgument, call + (p2p ? ": peer " : ": root ") + range_text(op.peer, c.nranks));
  }
  const bool needs_send = op.kind != OpKind::Recv && (op.kind != OpKind::Broadcast || op.peer == c.rank);
  if (op.count > 0 &&
      ((needs_send && op.send == nullptr) || (op.kind != OpKind::Send && op.recv == nullptr))) {
    return report(ncclInvalidArgument, call + ": a buffer is NULL");
  }
  return ncclSuccess;
}

// Checks the call, then issues it as a unit of its own or adds it to the open group.
ncclResult_t submit(ncclComm_t comm, cudaStream_t stream, const Op& op, const char* call) {
  if (const ncclResult_t r = check(comm, op, call); r != ncclSuccess) {
    if (t_group.depth > 0 && t_group.error == ncclSuccess) {
      t_group.error = r;
      t_group.error_text = t_last_error;
    }
    return r;
  }
  if (t_group.depth > 0) {
    t_group.ops.push_back({comm->state, stream, op});
  } else {
    issue({{comm->state, stream, op}}, call);
  }
  return ncclSuccess;
}

// ---- Communicators --------------------------------------------------------------------------------
bool token_of(const ncclUniqueId& id, std::string& token) {
  const size_t prefix = sizeof kIdPrefix - 1;
  const size_t length = strnlen(id.internal, sizeof id.internal);
  if (length <= prefix || length - prefix >= 64 || std::strncmp(id.internal, kIdPrefix, prefix) != 0)
    return false;
  token.assign(id.internal + prefix, length - prefix);
  return true;
}

ncclResult_t init(ncclComm_t* out, int nranks, const ncclUniqueId& id, int rank, bool blocking) {
  if (out == nullptr) return report(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
  *out = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return report(ncclInvalidArgument, "ncclCommInitRank: rank " + range_text(rank, nranks));
  }
  auto state = std::make_shared<CommState>();
  if (!token_of(id, state->token)) {
    return report(ncclInvalidArgument, "ncclCommInitRank: the unique id does not come from ncclGetUniqueId");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    return report(ncclUnhandledCudaError, "ncclCommInitRank: no CUDA device (AMPIPE_GPU_EMULATOR_DEVICES=0)");
  }
  state->nranks = nranks;
  state->rank = rank;
  (void)cudaGetDevice(&state->device);
  if (!blocking) {
    state->init_thread = std::thread([state] {
      std::string text;
      const ncclResult_t r = connect_ranks(*state, text);
      if (r != ncclSuccess) return state->fail(r, text);
      std::lock_guard<std::mutex> lock(state->mutex);
      if (state->status == ncclInProgress) state->status = ncclSuccess;
      state->changed.notify_all();
    });
    *out = new ncclComm{state};
    return ncclInProgress;
  }
  std::string text;
  if (const ncclResult_t r = connect_ranks(*state, text); r != ncclSuccess) return report(r, text);
  state->status = ncclSuccess;  // not shared yet
  *out = new ncclComm{state};
  return ncclSuccess;
}

// Takes the state from the handle and frees the handle; the init thread, if any, is joined.
std::shared_ptr<CommState> release(ncclComm_t comm) {
  std::shared_ptr<CommState> state = std::move(comm->state);
  delete comm;
  if (state->init_thread.joinable()) state->init_thread.join();
  return state;
}

void wait_idle(CommState& comm) {
  std::unique_lock<std::mutex> lock(comm.mutex);
  comm.changed.wait(lock, [&] { return comm.pending_units == 0; });
}

}  // namespace
}  // namespace ampipe_gpu_emulator::nccl

using namespace ampipe_gpu_emulator::nccl;

// ---- Version, ids, errors -------------------------------------------------------------------------
ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return report(ncclInvalidArgument, "ncclGetVersion: version is NULL");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (uniqueId == nullptr) return report(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
  static std::atomic<unsigned long long> counter{0};
  std::random_device random;
  const unsigned long long bits = static_cast<unsigned long long>(random()) << 32 ^ random();
  std::memset(uniqueId->internal, 0, sizeof uniqueId->internal);
  std::snprintf(uniqueId->internal, sizeof uniqueId->internal, "%s%d-%llu-%016llx", kIdPrefix,
                static_cast<int>(::getpid()), counter++, bits);
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled CUDA error (GPU emulator: see ncclGetLastError)";
    case ncclSystemError:
      return "unhandled system error (GPU emulator: see ncclGetLastError)";
    case ncclInternalError:
      return "internal error (GPU emulator: see ncclGetLastError)";
    case ncclInvalidArgument:
      return "invalid argument (GPU emulator: see ncclGetLastError)";
    case ncclInvalidUsage:
      return "invalid usage (GPU emulator: see ncclGetLastError)";
    case ncclRemoteError:
      return "remote process exited or there was a network error (GPU emulator: see ncclGetLastError)";
    case ncclInProgress:
      return "operation in progress";
    case ncclNumResults:
      break;
  }
  return "unknown result code";
}

const char* ncclGetLastError(ncclComm_t comm) {
  thread_local std::string text;
  text = t_last_error;
  if (text.empty() && comm != nullptr) {
    std::lock_guard<std::mutex> lock(comm->state->mutex);
    text = comm->state->error_text;
  }
  return text.c_str();
}

// ---- Communicators --------------------------------------------------------------------------------
ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank,
                                    ncclConfig_t* config) {
  return init(comm, nranks, commId, rank, config == nullptr || config->blocking != 0);
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  return init(comm, nranks, commId, rank, true);
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return report(ncclInvalidArgument, "ncclCommFinalize: comm is NULL");
  wait_idle(*comm->state);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  const std::shared_ptr<CommState> state = release(comm);
  wait_idle(*state);
  state->shutdown_sockets();
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  comm->state->aborted = true;  // before the join: a connecting init thread gives up too
  const std::shared_ptr<CommState> state = release(comm);
  {
    std::lock_guard<std::mutex> lock(state->mutex);
    state->changed.notify_all();
  }
  state->shutdown_sockets();  // queued units see the flag within 10 ms; the descriptors close after them
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  if (comm == nullptr || asyncError == nullptr) {
    return report(ncclInvalidArgument, "ncclCommGetAsyncError: comm or asyncError is NULL");
  }
  std::lock_guard<std::mutex> lock(comm->state->mutex);
  *asyncError = comm->state->status;
  if (*asyncError != ncclSuccess && *asyncError != ncclInProgress) t_last_error = comm->state->error_text;
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (comm == nullptr || count == nullptr) return report(ncclInvalidArgument, "ncclCommCount: NULL argument");
  *count = comm->state->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (comm == nullptr || device == nullptr)
    return report(ncclInvalidArgument, "ncclCommCuDevice: NULL argument");
  *device = comm->state->device;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (comm == nullptr || rank == nullptr)
    return report(ncclInvalidArgument, "ncclCommUserRank: NULL argument");
  *rank = comm->state->rank;
  return ncclSuccess;
}

// ---- Groups ---------------------------------------------------------------------------------------
ncclResult_t ncclGroupStart() {
  ++t_group.depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (t_group.depth == 0) return report(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--t_group.depth > 0) return ncclSuccess;
  const std::vector<PendingOp> ops = std::move(t_group.ops);
  const ncclResult_t error = t_group.error;
  const std::string error_text = std::move(t_group.error_text);
  t_group = GroupState{};
  if (error != ncclSuccess) return report(error, error_text + " (the group issued nothing)");
  issue(ops, "ncclGroupEnd");
  return ncclSuccess;
}

// ---- Operations -----------------------------------------------------------------------------------
ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(comm, stream, {OpKind::Send, sendbuff, nullptr, count, datatype, ncclSum, peer}, "ncclSend");
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(comm, stream, {OpKind::Recv, nullptr, recvbuff, count, datatype, ncclSum, peer}, "ncclRecv");
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return submit(comm, stream, {OpKind::AllReduce, sendbuff, recvbuff, count, datatype, op, 0},
                "ncclAllReduce");
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  return submit(comm, stream, {OpKind::Broadcast, sendbuff, recvbuff, count, datatype, ncclSum, root},
                "ncclBroadcast");
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(comm, stream, {OpKind::AllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0},
                "ncclAllGather");
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
  return submit(comm, stream, {OpKind::ReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, 0},
                "ncclReduceScatter");
}
