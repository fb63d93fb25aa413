// The NCCL backend: the Communicator contract (comm/communicator.h) for GPU tensors, one rank per GPU,
// without host copies (docs/GPU.md, "Which backend moves GPU buffers").
//
// What moves where:
// - Device (Device::CUDA) buffers of all_to_all_v, all_reduce_sum, broadcast and all_gather move
//   through NCCL: all_to_all_v as grouped ncclSend/ncclRecv (ncclGroupStart/End), the others as
//   ncclAllReduce, ncclBroadcast, ncclAllGather.
// - Host buffers, the int64 all_to_all, the scalar reductions, broadcast_bytes and barrier go
//   through an MPI group over the same ranks, which is also the control channel: it carries each
//   group's NCCL unique id, and before any NCCL data moves every call runs the MPI backend's argument
//   agreement (MpiCommunicator::agree_external). So bad arguments are reported on EVERY rank before
//   data moves, as the contract asks, and a rank that never enters a call is named at the deadline.
//   The cost is one small MPI exchange per call on the host.
//
// Stream order: a call enqueues its NCCL operations on the calling thread's current CUDA stream
// (core/cuda/context.h; the communication stream's, in the engine), records an event behind them
// and waits on the host for that event alone (never a device-wide synchronisation), so compute on
// other streams runs on; when the call returns the data has moved.
//
// Errors and the deadline: communicators are made non-blocking (ncclConfig_t::blocking = 0). While
// a call waits it polls ncclCommGetAsyncError; an asynchronous NCCL error, or the deadline
// (MpiCommunicator::Options::timeout_seconds: --distributed-timeout-minutes) passing, ends the job:
// ncclCommAbort, then abort() with "error: <call> on rank R of N ...: <what>". A rank that stops
// inside a call (after the agreement) is named where NCCL lets us know which (a group of two).
//
// split() splits the MPI group and makes one NCCL communicator per new group (its unique id
// broadcast over the new MPI group). Thread-safety as the contract: one thread at a time.
//
// Builds: the real CUDA build links NCCL where CMake finds it (AMPIPE_HAVE_NCCL; NCCL_ROOT hints where
// it is); the emulated build (-DAMPIPE_CUDA=EMULATE) links the GPU emulator's NCCL, which carries
// the data between the ranks' processes on one machine. Elsewhere make_nccl_communicator throws and
// nccl_unavailable_reason says why.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

namespace ampipe {

// "" when this build has the NCCL backend, else why not ("built without CUDA", ...).
std::string nccl_unavailable_reason();
// "NCCL 2.28.9" or "NCCL 2.28.9 (GPU emulator)"; "" without NCCL.
std::string nccl_version_text();

// The ranks of `world` that would share a GPU (the same device index on the same host; NCCL
// refuses that), described for a message ("world ranks 0 and 1 both use GPU 0 of host 'x'"), or
// "" when every rank has its own. Each rank's GPU is its current CUDA device. Collective over
// `world` (host buffers only); every rank gets the same answer. Needs a CUDA build.
std::string shared_gpu_ranks(Communicator& world);

// An NCCL communicator over the ranks of `group` (their current CUDA devices), with its own MPI
// group split from `group` as the control channel (the same options: the deadline). Collective over
// `group`. Throws ampipe::Error on every rank when NCCL cannot be set up (the reason named).
std::unique_ptr<Communicator> make_nccl_communicator(const MpiCommunicator& group);

}  // namespace ampipe
