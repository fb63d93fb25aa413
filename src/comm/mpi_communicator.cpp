// The MPI backend's collectives (comm/mpi_communicator.h), on the agreement round and deadline-bounded
// waits of comm/mpi_group.h.
#include "comm/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "comm/check.h"
#include "comm/mpi_group.h"
#include "core/random.h"

namespace ampipe {

using namespace mpi_detail;  // NOLINT: the backend's internals (comm/mpi_group.h)

namespace {

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::I32:
      return MPI_INT32_T;
    case DType::BF16:
      return MPI_UINT16_T;  // moved, never reduced (check_reducible)
  }
  throw Error("no MPI datatype for tensor dtype " + std::string(dtype_name(dtype)));
}

// Host address of a checked (defined, CPU) tensor's first element.
std::byte* host_bytes(const Tensor& t) { return t.bytes(); }

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

}  // namespace

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
  std::string error = comm_detail::check_reducible(buffer, "buffer");
  if (error.empty()) error = check_host_buffer(buffer, "buffer");
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
    m.collective(call, "MPI_Ibcast", [&](MPI_Request* r) {
      return MPI_Ibcast(bytes.data() + done, n, MPI_BYTE, root, m.comm, r);
    });
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

void MpiCommunicator::reduce_scatter_sum(const Tensor& send, Tensor recv) {
  const Impl& m = *impl_;
  const char* call = "reduce_scatter_sum";
  std::string error = comm_detail::check_reduce_scatter(send, recv, m.size);
  if (error.empty()) error = check_host_buffer(send, "send");
  if (error.empty()) error = check_host_buffer(recv, "recv");
  if (error.empty()) error = check_disjoint(send, "send", recv, "recv");
  m.agree(Signature{Op::kReduceScatterSum, call, static_cast<int64_t>(send.dtype()), recv.numel()}, error);
  const int64_t n = recv.numel();
  if (n == 0) return;
  if (n <= m.limit()) {
    m.collective(call, "MPI_Ireduce_scatter_block", [&](MPI_Request* r) {
      return MPI_Ireduce_scatter_block(host_bytes(send), host_bytes(recv), static_cast<int>(n),
                                       mpi_type(send.dtype()), MPI_SUM, m.comm, r);
    });
    return;
  }
  // Blocks beyond one call's count: the contract's default, the sum of the whole buffer (in pieces,
  // all_reduce_sum) then this rank's block (the predefined reductions take no strided datatypes).
  Communicator::reduce_scatter_sum(send, recv);
}

void MpiCommunicator::barrier() {
  // The agreement allreduce is itself a barrier: no rank's result exists before every rank's input.
  impl_->agree(Signature{Op::kBarrier, "barrier"}, {});
}

void MpiCommunicator::agree_external(const ExternalCall& call, const std::string& local_error,
                                     const std::vector<int64_t>& send_counts,
                                     const std::vector<int64_t>& recv_counts) const {
  const Impl& m = *impl_;
  std::string error = local_error;
  const bool pairs = !send_counts.empty() || !recv_counts.empty();
  if (error.empty() && pairs &&
      (static_cast<int>(send_counts.size()) != m.size || static_cast<int>(recv_counts.size()) != m.size)) {
    error =
        "send_counts and recv_counts need one entry per rank of the group (" + std::to_string(m.size) + ")";
  }
  uint64_t pair_sum = 0;
  if (error.empty() && pairs) {
    for (int p = 0; p < m.size; ++p) {
      pair_sum += pair_term(m.rank, p, send_counts[p]);
      pair_sum -= pair_term(p, m.rank, recv_counts[p]);
    }
  }
  // The call's name enters the hash, so two different external calls never agree with each other.
  uint64_t name_hash = 0;
  for (const char* c = call.name; *c != 0; ++c) name_hash = mix_seed(name_hash, static_cast<uint64_t>(*c));
  const Signature sig{static_cast<Op>(mix_seed(static_cast<uint64_t>(Op::kExternal), name_hash)), call.name,
                      call.dtype, call.numel, call.root};
  if (!m.agree(sig, error, pair_sum).pairs_match) m.fail_counts_mismatch(call.name, send_counts, recv_counts);
}

void MpiCommunicator::abort(int code, const std::string& message) {
  abort_job(impl_->world_rank, code, message);
}

}  // namespace ampipe
