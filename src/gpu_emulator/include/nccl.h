// The GPU emulator's NCCL (docs/GPU.md, "The emulator"): the part of NCCL 2.28's API that ampipe
// uses, with NCCL's names, signatures and enum values, for the -DAMPIPE_CUDA=EMULATE build. A real
// CUDA build includes the real <nccl.h> and never sees this file.
//
// Ranks are threads or processes on one host. A communicator is a full mesh of Unix-domain stream
// sockets (Linux abstract namespace), one per pair of ranks, made at init. Every operation is queued
// on its cudaStream_t (nullptr: the legacy stream of the communicator's device) and moves its data
// when the stream reaches it, so it reads and writes device memory in stream order.
//
// Contracts kept from NCCL: one communicator per (host, device) per rank (two ranks of one
// communicator on one device fail init with ncclInvalidUsage); non-blocking init (config.blocking
// = 0) returns ncclInProgress and connects in the background; a group (ncclGroupStart/End, nested)
// is issued as one unit at its outermost end, so sends and receives to many peers cannot deadlock;
// a communicator's operations run in the order they were issued, whatever their streams; a lost
// peer, a socket error or mismatched message sizes become the communicator's asynchronous error
// (ncclCommGetAsyncError), after which its operations fail fast; ncclCommAbort ends in-flight work
// within about 10 ms. Thread safety: one thread at a time per communicator, as NCCL asks;
// different communicators and streams run concurrently.
//
// Emulator-only: AMPIPE_GPU_EMULATOR_NCCL_ERROR=C (read once per process) makes the C-th unit this
// process issues (a group or a lone call) move nothing and set ncclSystemError instead.
#pragma once

#include <climits>
#include <cstddef>

#include "cuda_runtime.h"

// The version of NCCL whose API this file follows (the emulator's, not an installed library's).
#define NCCL_MAJOR 2
#define NCCL_MINOR 28
#define NCCL_PATCH 9
#define NCCL_SUFFIX "-ampipe-gpu-emulator"
#define NCCL_VERSION(X, Y, Z) (((X) <= 2 && (Y) <= 8) ? (X)*1000 + (Y)*100 + (Z) : (X)*10000 + (Y)*100 + (Z))
#define NCCL_VERSION_CODE NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH)
#define AMPIPE_GPU_EMULATOR_NCCL 1

typedef struct ncclComm* ncclComm_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;

typedef enum {
  ncclInt8 = 0,
  ncclChar = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclInt = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclHalf = 6,
  ncclFloat32 = 7,
  ncclFloat = 7,
  ncclFloat64 = 8,
  ncclDouble = 8,
  ncclBfloat16 = 9
} ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

// NCCL's configuration. The emulator reads `blocking` (any value but 0 blocks); it accepts and
// ignores the tuning fields.
#define NCCL_CONFIG_UNDEF_INT INT_MIN
#define NCCL_CONFIG_UNDEF_PTR NULL
typedef struct ncclConfig_v22800 {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
  int splitShare;
  int trafficClass;
  const char* commName;
} ncclConfig_t;
#define NCCL_CONFIG_INITIALIZER                                                                     \
  {                                                                                                 \
    sizeof(ncclConfig_t), 0xcafebeef, NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH), 1,          \
        NCCL_CONFIG_UNDEF_INT, NCCL_CONFIG_UNDEF_INT, NCCL_CONFIG_UNDEF_INT, NCCL_CONFIG_UNDEF_PTR, \
        NCCL_CONFIG_UNDEF_INT, NCCL_CONFIG_UNDEF_INT, NCCL_CONFIG_UNDEF_PTR                         \
  }

// ---- Version, ids, errors -----------------------------------------------------------------------
ncclResult_t ncclGetVersion(int* version);
// A fresh token (process id, a per-process counter, random bits): give it to every rank.
ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId);
const char* ncclGetErrorString(ncclResult_t result);
// The text of the latest failure reported to the calling thread (a call that returned an error,
// ncclCommGetAsyncError reporting one included); if none, `comm`'s asynchronous error, else "".
const char* ncclGetLastError(ncclComm_t comm);

// ---- Communicators ------------------------------------------------------------------------------
// Connects to every other rank of `commId` on the calling thread's current device. Blocking: returns
// once connected, or the error (then *comm is nullptr). Non-blocking (config->blocking == 0): returns
// ncclInProgress with a valid *comm; ncclCommGetAsyncError says when it is ready.
ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank,
                                    ncclConfig_t* config);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank);
// Waits for the operations queued on `comm`; the handle stays valid for ncclCommDestroy.
ncclResult_t ncclCommFinalize(ncclComm_t comm);
// Waits for the operations queued on `comm`, then closes its connections and frees it.
ncclResult_t ncclCommDestroy(ncclComm_t comm);
// Ends `comm`'s in-flight and queued operations at once (they move nothing more), closes its
// connections (its peers see a lost rank) and frees it.
ncclResult_t ncclCommAbort(ncclComm_t comm);
// ncclInProgress while a non-blocking init runs, then ncclSuccess or the communicator's error.
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError);
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count);
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank);

// ---- Groups -------------------------------------------------------------------------------------
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();

// ---- Operations (queued on `stream`; argument errors are returned at the call) -------------------
ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream);
// Sum, prod, max, min and avg; element i is reduced over ranks 0..n-1 in that order by one rank and
// sent to the others, so every rank gets the same bits. In place when sendbuff == recvbuff.
ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           int root, ncclComm_t comm, cudaStream_t stream);
// Rank-major: rank p's sendcount elements land at recvbuff + p * sendcount.
ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
