// The NCCL backend (comm/nccl_communicator.h). Compiled into every build; the NCCL code only where
// the build has NCCL (AMPIPE_HAVE_NCCL: the real library or the GPU emulator's).
#include "comm/nccl_communicator.h"

#include "core/error.h"

#if AMPIPE_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <sstream>

#include "comm/check.h"
#include "comm/poll_backoff.h"
#include "core/cuda/context.h"
#include "core/cuda/cuda_check.h"

namespace ampipe {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return ncclFloat32;
    case DType::I32:
      return ncclInt32;
    case DType::BF16:
      return ncclBfloat16;
  }
  throw Error("no NCCL datatype for tensor dtype " + std::string(dtype_name(dtype)));
}

std::string nccl_error_text(ncclResult_t result, ncclComm_t comm) {
  std::string text = ncclGetErrorString(result);
  const char* last = comm != nullptr ? ncclGetLastError(comm) : ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') text += ": " + std::string(last);
  return text;
}

std::string format_seconds(double t) {
  std::ostringstream s;
  if (t >= 60) {
    s << t / 60 << " min";
  } else {
    s << t << " s";
  }
  return s.str();
}

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `host`'s group.
  explicit NcclCommunicator(std::unique_ptr<MpiCommunicator> host);
  ~NcclCommunicator() override;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string backend() const override { return "nccl"; }
  bool moves_device_buffers() const override { return true; }
  std::unique_ptr<Communicator> split(int color, int key) const override;

  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                    const std::vector<int64_t>& recv_counts) override;
  void all_to_all(const std::vector<int64_t>& send, std::vector<int64_t>& recv) override {
    host_->all_to_all(send, recv);
  }
  void all_reduce_sum(Tensor buffer) override;
  void all_reduce_sum(double& value) override { host_->all_reduce_sum(value); }
  void all_reduce_sum(int64_t& value) override { host_->all_reduce_sum(value); }
  void all_reduce_max(double& value) override { host_->all_reduce_max(value); }
  void all_reduce_max(int64_t& value) override { host_->all_reduce_max(value); }
  void broadcast(Tensor buffer, int root) override;
  void broadcast_bytes(std::string& bytes, int root) override { host_->broadcast_bytes(bytes, root); }
  void all_gather(const Tensor& send, Tensor recv) override;
  void reduce_scatter_sum(const Tensor& send, Tensor recv) override;
  void barrier() override { host_->barrier(); }
  [[noreturn]] void abort(int code, const std::string& message) override;

 private:
  std::unique_ptr<MpiCommunicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaEvent_t done_ = nullptr;
  int device_ = 0;
  uint64_t calls_ = 0;  // NCCL calls made on this communicator (for messages)

  void initialise();
  std::string where(const char* call) const;
  Clock::time_point deadline() const;
  // Polls ncclCommGetAsyncError until the communicator leaves ncclInProgress (a non-blocking
  // communicator's init or enqueue) or the deadline passes; returns the state then.
  ncclResult_t wait_ready(Clock::time_point until) const;
  // Checks a synchronous NCCL return inside a call: anything but success (or in-progress, then
  // waited for) ends the job, since other ranks may already be inside the operation.
  void check_enqueue(const char* call, const char* function, ncclResult_t result);
  // Waits until the work enqueued so far on the current stream is done, polling NCCL's async error
  // and the deadline; either ends the job.
  void finish(const char* call);
  [[noreturn]] void end_job(const char* call, const std::string& what);
  // "" when every tensor is on the device, "host" when every one is on the host, else an error.
  static std::string placement(std::initializer_list<const Tensor*> tensors, bool* on_host);
};

NcclCommunicator::NcclCommunicator(std::unique_ptr<MpiCommunicator> host) : host_(std::move(host)) {
  AMPIPE_CUDA_CHECK(cudaGetDevice(&device_));
  initialise();
  AMPIPE_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
}

NcclCommunicator::~NcclCommunicator() {
  if (done_ != nullptr) (void)cudaEventDestroy(done_);
  if (comm_ != nullptr) (void)ncclCommDestroy(comm_);
}

std::string NcclCommunicator::where(const char* call) const {
  std::string w =
      comm_detail::where(call, rank(), size(), MpiRuntime::world_rank(), MpiRuntime::world_size());
  return w + " (nccl, call #" + std::to_string(calls_) + " of this group)";
}

Clock::time_point NcclCommunicator::deadline() const {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(host_->options().timeout_seconds));
}

ncclResult_t NcclCommunicator::wait_ready(Clock::time_point until) const {
  comm_detail::PollBackoff backoff;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) return r;
    if (state != ncclInProgress || Clock::now() >= until) return state;
    backoff.pause();
  }
}

// Rank 0 makes the unique id and the MPI group carries it (with rank 0's failure, if any, so that
// every rank throws alike); each rank starts a non-blocking init and waits for it with the
// deadline; then the ranks agree that every init succeeded.
void NcclCommunicator::initialise() {
  std::string payload;
  if (rank() == 0) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    payload.assign(1, r == ncclSuccess ? '1' : '0');
    if (r == ncclSuccess) {
      payload.append(reinterpret_cast<const char*>(&id), sizeof(id));
    } else {
      payload.append(nccl_error_text(r, nullptr));
    }
  }
  host_->broadcast_bytes(payload, 0);
  if (payload.empty() || payload[0] != '1' || payload.size() != 1 + sizeof(ncclUniqueId)) {
    throw Error(where("NCCL init") + ": rank 0 could not make an NCCL unique id (ncclGetUniqueId): " +
                payload.substr(payload.empty() ? 0 : 1));
  }
  ncclUniqueId id;
  std::memcpy(&id, payload.data() + 1, sizeof(id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&comm_, size(), id, rank(), &config);
  if ((r == ncclSuccess || r == ncclInProgress) && comm_ != nullptr) r = wait_ready(deadline());
  if (r == ncclInProgress) {
    end_job("NCCL init", "the NCCL communicator was not set up within " +
                             format_seconds(host_->options().timeout_seconds) +
                             " (--distributed-timeout-minutes): a rank did not join");
  }
  const std::string mine = r == ncclSuccess ? "" : nccl_error_text(r, comm_);
  int64_t failed = mine.empty() ? 0 : 1;
  host_->all_reduce_sum(failed);
  if (failed == 0) return;
  if (comm_ != nullptr) (void)ncclCommAbort(comm_);
  comm_ = nullptr;
  throw Error(where("NCCL init") + ": " +
              (mine.empty() ? std::to_string(failed) +
                                  " rank(s) of the group could not set up NCCL (their errors say why)"
                            : "ncclCommInitRankConfig failed: " + mine));
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) const {
  std::unique_ptr<Communicator> sub = host_->split(color, key);
  if (!sub) return nullptr;
  std::unique_ptr<MpiCommunicator> mpi(
      static_cast<MpiCommunicator*>(sub.release()));  // MpiCommunicator::split
  return std::make_unique<NcclCommunicator>(std::move(mpi));
}

std::string NcclCommunicator::placement(std::initializer_list<const Tensor*> tensors, bool* on_host) {
  int host = 0, device = 0;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    (t->device() == Device::CPU ? host : device) += 1;
  }
  *on_host = device == 0;
  if (host > 0 && device > 0) return "the buffers are on different devices (host and GPU); pass both on one";
  return {};
}

void NcclCommunicator::check_enqueue(const char* call, const char* function, ncclResult_t result) {
  if (result == ncclInProgress) result = wait_ready(deadline());
  if (result == ncclInProgress)
    end_job(call, std::string(function) + " did not finish enqueueing within the deadline");
  if (result != ncclSuccess)
    end_job(call, std::string(function) + " failed: " + nccl_error_text(result, comm_));
}

void NcclCommunicator::finish(const char* call) {
  const auto until = deadline();
  AMPIPE_CUDA_CHECK(cudaEventRecord(done_, current_cuda_stream()));
  comm_detail::PollBackoff backoff;
  for (;;) {
    const cudaError_t q = cudaEventQuery(done_);
    if (q != cudaSuccess && q != cudaErrorNotReady) {
      end_job(call, std::string("CUDA error while waiting: ") + cudaGetErrorString(q));
    }
    // Checked after the event too: an operation that failed may still let its stream move on.
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress) {
      end_job(call, "NCCL reported an asynchronous error: " + nccl_error_text(state, comm_));
    }
    if (q == cudaSuccess) return;
    if (Clock::now() >= until) {
      std::string who =
          size() == 2 ? "rank " + std::to_string(1 - rank()) : "a rank (NCCL does not say which)";
      end_job(call, "every rank entered it but its data did not move within " +
                        format_seconds(host_->options().timeout_seconds) +
                        " (--distributed-timeout-minutes): " + who + " stopped or died inside it");
    }
    backoff.pause();
  }
}

void NcclCommunicator::end_job(const char* call, const std::string& what) {
  const std::string message = "error: " + where(call) + ": " + what;
  if (comm_ != nullptr) (void)ncclCommAbort(comm_);
  comm_ = nullptr;
  host_->abort(1, message);
}

void NcclCommunicator::abort(int code, const std::string& message) {
  if (comm_ != nullptr) (void)ncclCommAbort(comm_);
  comm_ = nullptr;
  host_->abort(code, message);
}

std::byte* device_bytes(const Tensor& t) { return t.device_bytes(); }

void NcclCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, Tensor recv,
                                    const std::vector<int64_t>& recv_counts) {
  const char* call = "all_to_all_v";
  bool on_host = false;
  std::string error = placement({&send, &recv}, &on_host);
  if (on_host && error.empty()) return host_->all_to_all_v(send, send_counts, recv, recv_counts);
  if (error.empty()) error = comm_detail::check_buffer(send, "send");
  if (error.empty()) error = comm_detail::check_buffer(recv, "recv");
  if (error.empty()) error = comm_detail::check_same_dtype(send, "send", recv, "recv");
  if (error.empty())
    error = comm_detail::check_counts(send_counts, "send_counts", size(), send.numel(), "send");
  if (error.empty())
    error = comm_detail::check_counts(recv_counts, "recv_counts", size(), recv.numel(), "recv");
  host_->agree_external({call, static_cast<int64_t>(send.dtype())}, error, send_counts, recv_counts);
  ++calls_;
  const ncclDataType_t type = nccl_type(send.dtype());
  const auto es = static_cast<int64_t>(dtype_size(send.dtype()));
  const std::byte* send_base = device_bytes(send);
  std::byte* recv_base = device_bytes(recv);
  cudaStream_t stream = current_cuda_stream();
  int64_t s_off = 0, r_off = 0, self_s = 0, self_r = 0;
  check_enqueue(call, "ncclGroupStart", ncclGroupStart());
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) {
      self_s = s_off;
      self_r = r_off;
    } else {
      if (send_counts[p] > 0)
        check_enqueue(
            call, "ncclSend",
            ncclSend(send_base + s_off * es, static_cast<size_t>(send_counts[p]), type, p, comm_, stream));
      if (recv_counts[p] > 0)
        check_enqueue(
            call, "ncclRecv",
            ncclRecv(recv_base + r_off * es, static_cast<size_t>(recv_counts[p]), type, p, comm_, stream));
    }
    s_off += send_counts[p];
    r_off += recv_counts[p];
  }
  check_enqueue(call, "ncclGroupEnd", ncclGroupEnd());
  if (send_counts[rank()] > 0) {
    AMPIPE_CUDA_CHECK(cudaMemcpyAsync(recv_base + self_r * es, send_base + self_s * es,
                                      static_cast<size_t>(send_counts[rank()] * es), cudaMemcpyDeviceToDevice,
                                      stream));
  }
  finish(call);
}

void NcclCommunicator::all_reduce_sum(Tensor buffer) {
  const char* call = "all_reduce_sum";
  bool on_host = false;
  std::string error = placement({&buffer}, &on_host);
  if (on_host) return host_->all_reduce_sum(buffer);
  if (error.empty()) error = comm_detail::check_reducible(buffer, "buffer");
  host_->agree_external({call, static_cast<int64_t>(buffer.dtype()), buffer.numel()}, error);
  ++calls_;
  if (buffer.numel() == 0) return;
  void* base = device_bytes(buffer);
  check_enqueue(call, "ncclAllReduce",
                ncclAllReduce(base, base, static_cast<size_t>(buffer.numel()), nccl_type(buffer.dtype()),
                              ncclSum, comm_, current_cuda_stream()));
  finish(call);
}

void NcclCommunicator::broadcast(Tensor buffer, int root) {
  const char* call = "broadcast";
  bool on_host = false;
  std::string error = placement({&buffer}, &on_host);
  if (on_host) return host_->broadcast(buffer, root);
  if (error.empty()) error = comm_detail::check_buffer(buffer, "buffer");
  if (error.empty()) error = comm_detail::check_root(root, size());
  host_->agree_external({call, static_cast<int64_t>(buffer.dtype()), buffer.numel(), root}, error);
  ++calls_;
  if (buffer.numel() == 0) return;
  void* base = device_bytes(buffer);
  check_enqueue(call, "ncclBroadcast",
                ncclBroadcast(base, base, static_cast<size_t>(buffer.numel()), nccl_type(buffer.dtype()),
                              root, comm_, current_cuda_stream()));
  finish(call);
}

void NcclCommunicator::all_gather(const Tensor& send, Tensor recv) {
  const char* call = "all_gather";
  bool on_host = false;
  std::string error = placement({&send, &recv}, &on_host);
  if (on_host && error.empty()) return host_->all_gather(send, recv);
  if (error.empty()) error = comm_detail::check_buffer(send, "send");
  if (error.empty()) error = comm_detail::check_buffer(recv, "recv");
  if (error.empty()) error = comm_detail::check_same_dtype(send, "send", recv, "recv");
  if (error.empty() && recv.numel() != send.numel() * size()) {
    error = "recv has " + std::to_string(recv.numel()) + " elements; it needs group size " +
            std::to_string(size()) + " x send's " + std::to_string(send.numel());
  }
  host_->agree_external({call, static_cast<int64_t>(send.dtype()), send.numel()}, error);
  ++calls_;
  if (send.numel() == 0) return;
  check_enqueue(call, "ncclAllGather",
                ncclAllGather(device_bytes(send), device_bytes(recv), static_cast<size_t>(send.numel()),
                              nccl_type(send.dtype()), comm_, current_cuda_stream()));
  finish(call);
}

void NcclCommunicator::reduce_scatter_sum(const Tensor& send, Tensor recv) {
  const char* call = "reduce_scatter_sum";
  bool on_host = false;
  std::string error = placement({&send, &recv}, &on_host);
  if (on_host && error.empty()) return host_->reduce_scatter_sum(send, recv);
  if (error.empty()) error = comm_detail::check_reduce_scatter(send, recv, size());
  host_->agree_external({call, static_cast<int64_t>(send.dtype()), recv.numel()}, error);
  ++calls_;
  if (recv.numel() == 0) return;
  check_enqueue(call, "ncclReduceScatter",
                ncclReduceScatter(device_bytes(send), device_bytes(recv), static_cast<size_t>(recv.numel()),
                                  nccl_type(send.dtype()), ncclSum, comm_, current_cuda_stream()));
  finish(call);
}

}  // namespace

std::string nccl_unavailable_reason() { return {}; }

std::string nccl_version_text() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "NCCL (version unknown)";
  // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
  std::string text = "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                     std::to_string(v % 100);
#if AMPIPE_GPU_EMULATOR
  text += " (GPU emulator)";
#endif
  return text;
}

std::string shared_gpu_ranks(Communicator& world) {
  int device = 0;
  AMPIPE_CUDA_CHECK(cudaGetDevice(&device));
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the host name
  for (const char* c = host; *c != 0; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ull;
  Tensor mine = Tensor::empty({3}, DType::I32, Device::CPU);
  mine.data<int32_t>()[0] = static_cast<int32_t>(h & 0x7fffffff);
  mine.data<int32_t>()[1] = static_cast<int32_t>((h >> 32) & 0x7fffffff);
  mine.data<int32_t>()[2] = device;
  Tensor all = Tensor::empty({3 * world.size()}, DType::I32, Device::CPU);
  world.all_gather(mine, all);
  const int32_t* a = all.data<int32_t>();
  for (int j = 1; j < world.size(); ++j) {
    for (int i = 0; i < j; ++i) {
      if (a[3 * i] == a[3 * j] && a[3 * i + 1] == a[3 * j + 1] && a[3 * i + 2] == a[3 * j + 2]) {
        return "ranks " + std::to_string(i) + " and " + std::to_string(j) + " both use GPU " +
               std::to_string(a[3 * i + 2]) + " of one host";
      }
    }
  }
  return {};
}

std::unique_ptr<Communicator> make_nccl_communicator(const MpiCommunicator& group) {
  std::unique_ptr<Communicator> own = group.split(0, group.rank());
  std::unique_ptr<MpiCommunicator> mpi(
      static_cast<MpiCommunicator*>(own.release()));  // MpiCommunicator::split
  return std::make_unique<NcclCommunicator>(std::move(mpi));
}

}  // namespace ampipe

#else  // no NCCL in this build

namespace ampipe {

std::string nccl_unavailable_reason() {
#if AMPIPE_HAVE_CUDA
  return "this build found no NCCL (configure with -DNCCL_ROOT=<dir with include/nccl.h and lib/libnccl.so>)";
#else
  return "this build has no CUDA backend, so no NCCL";
#endif
}

std::string nccl_version_text() { return {}; }

std::string shared_gpu_ranks(Communicator&) { throw Error("shared_gpu_ranks: " + nccl_unavailable_reason()); }

std::unique_ptr<Communicator> make_nccl_communicator(const MpiCommunicator&) {
  throw Error("--distributed-backend nccl: " + nccl_unavailable_reason());
}

}  // namespace ampipe

#endif
