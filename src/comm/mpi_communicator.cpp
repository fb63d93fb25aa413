#include "comm/mpi_communicator.h"

// The MPI C API only (no deprecated C++ bindings; CMake also defines these via MPI_CXX_SKIP_MPICXX).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

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
  Options options;

  explicit Impl(MPI_Comm c, const Options& o) : comm(c), options(o) {
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
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

  struct Agreement {
    bool pairs_match = true;  // all_to_all_v: every send count equals its receiver's recv count
    bool chunked = false;     // some rank needs the piecewise path
  };

  // The agreement round (see the header). Throws on every rank when any rank's arguments are bad or
  // the ranks disagree on the call; returns what all_to_all_v needs to know.
  Agreement agree(const Signature& sig, const std::string& local_error, uint64_t pair_sum = 0,
                  bool needs_chunks = false) const {
    const uint64_t same =
        mix_seed(mix_seed(static_cast<uint64_t>(sig.op), static_cast<uint64_t>(sig.dtype)),
                 mix_seed(mix_seed(static_cast<uint64_t>(sig.numel), static_cast<uint64_t>(sig.root)),
                          static_cast<uint64_t>(limit())));
    const bool bad = !local_error.empty();
    uint64_t words[5] = {bad ? 1u : 0u, bad ? static_cast<uint64_t>(rank) + 1 : 0u, same, pair_sum,
                         needs_chunks ? 1u : 0u};
    check(MPI_Allreduce(MPI_IN_PLACE, words, 5, MPI_UINT64_T, MPI_SUM, comm), sig.name,
          "MPI_Allreduce (argument agreement)");
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
    return Agreement{words[3] == 0, words[4] > 0};
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
    check(MPI_Alltoall(mine.data(), 2, MPI_INT64_T, theirs.data(), 2, MPI_INT64_T, comm), call,
          "MPI_Alltoall (count diagnosis)");
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

  // Pairwise count hash, displacements, and whether one MPI_Alltoallv can carry it all.
  uint64_t pair_sum = 0;
  bool needs_chunks = false;
  std::vector<int64_t> send_displs(static_cast<size_t>(m.size)), recv_displs(static_cast<size_t>(m.size));
  if (error.empty()) {
    int64_t s_off = 0, r_off = 0;
    for (int p = 0; p < m.size; ++p) {
      pair_sum += pair_term(m.rank, p, send_counts[p]);
      pair_sum -= pair_term(p, m.rank, recv_counts[p]);
      send_displs[p] = s_off;
      recv_displs[p] = r_off;
      needs_chunks = needs_chunks || send_counts[p] > m.limit() || recv_counts[p] > m.limit() ||
                     s_off > m.limit() || r_off > m.limit();
      s_off += send_counts[p];
      r_off += recv_counts[p];
    }
  }
  const Signature sig{Op::kAllToAllV, call, static_cast<int64_t>(send.dtype())};
  const Impl::Agreement agreed = m.agree(sig, error, pair_sum, needs_chunks);
  if (!agreed.pairs_match) m.fail_counts_mismatch(call, send_counts, recv_counts);

  const MPI_Datatype type = mpi_type(send.dtype());
  std::byte* send_base = host_bytes(send);
  std::byte* recv_base = host_bytes(recv);
  if (!agreed.chunked) {
    std::vector<int> sc(m.size), sd(m.size), rc(m.size), rd(m.size);
    for (int p = 0; p < m.size; ++p) {
      sc[p] = static_cast<int>(send_counts[p]);
      sd[p] = static_cast<int>(send_displs[p]);
      rc[p] = static_cast<int>(recv_counts[p]);
      rd[p] = static_cast<int>(recv_displs[p]);
    }
    m.check(
        MPI_Alltoallv(send_base, sc.data(), sd.data(), type, recv_base, rc.data(), rd.data(), type, m.comm),
        call, "MPI_Alltoallv");
    return;
  }

  // Piecewise: every peer's run split into messages of at most limit() elements. Messages between
  // one pair on one communicator and tag arrive in order, so the pieces need no numbering.
  const auto es = static_cast<int64_t>(dtype_size(send.dtype()));
  std::vector<MPI_Request> requests;
  for (int k = 1; k < m.size; ++k) {
    const int p = (m.rank - k + m.size) % m.size;
    for (int64_t done = 0; done < recv_counts[p]; done += m.limit()) {
      const int n = static_cast<int>(std::min(m.limit(), recv_counts[p] - done));
      requests.emplace_back();
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
      m.check(MPI_Isend(send_base + (send_displs[p] + done) * es, n, type, p, kAllToAllVTag, m.comm,
                        &requests.back()),
              call, "MPI_Isend");
    }
  }
  std::memcpy(recv_base + recv_displs[m.rank] * es, send_base + send_displs[m.rank] * es,
              static_cast<size_t>(send_counts[m.rank] * es));
  m.check(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE), call,
          "MPI_Waitall");
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
  m.check(MPI_Alltoall(source.data(), 1, MPI_INT64_T, recv.data(), 1, MPI_INT64_T, m.comm), call,
          "MPI_Alltoall");
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
    m.check(MPI_Allreduce(MPI_IN_PLACE, base + done * es, n, type, MPI_SUM, m.comm), call, "MPI_Allreduce");
  }
}

namespace {
template <class T>
void scalar_all_reduce(const MpiCommunicator::Impl& m, T& value, Op op, const char* call, MPI_Datatype type,
                       MPI_Op reduction) {
  m.agree(Signature{op, call}, {});
  m.check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, type, reduction, m.comm), call, "MPI_Allreduce");
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
    m.check(MPI_Bcast(base + done * es, n, type, root, m.comm), call, "MPI_Bcast");
  }
}

void MpiCommunicator::broadcast_bytes(std::string& bytes, int root) {
  const Impl& m = *impl_;
  const char* call = "broadcast_bytes";
  m.agree(Signature{Op::kBroadcastBytes, call, -1, -1, root}, comm_detail::check_root(root, m.size));
  int64_t length = static_cast<int64_t>(bytes.size());
  m.check(MPI_Bcast(&length, 1, MPI_INT64_T, root, m.comm), call, "MPI_Bcast (length)");
  if (m.rank != root) bytes.resize(static_cast<size_t>(length));
  for (int64_t done = 0; done < length; done += m.limit()) {
    const int n = static_cast<int>(std::min(m.limit(), length - done));
    m.check(MPI_Bcast(bytes.data() + done, n, MPI_BYTE, root, m.comm), call, "MPI_Bcast");
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
    m.check(MPI_Allgather(send_base, count, type, recv_base, count, type, m.comm), call, "MPI_Allgather");
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
    const int rc = MPI_Allgather(send_base + done * es, c, type, recv_base + done * es, 1, strided, m.comm);
    MPI_Type_free(&strided);
    MPI_Type_free(&piece);
    m.check(rc, call, "MPI_Allgather");
  }
}

void MpiCommunicator::barrier() {
  // The agreement allreduce is itself a barrier: no rank's result exists before every rank's input.
  impl_->agree(Signature{Op::kBarrier, "barrier"}, {});
}

void MpiCommunicator::abort(int code, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "ampipe: rank %d: %s\n", impl_->world_rank, message.c_str());
  std::fflush(stderr);
  if (MpiRuntime::active()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace ampipe
