// The GPU as the rest of the engine sees it, with no CUDA header: whether this build has the CUDA
// backend, whether a device is usable, and device memory for Tensor (core/tensor.h).
//
// In a build without the backend (AMPIPE_HAVE_CUDA unset) every query answers "no GPU" with the
// reason, and every memory call throws ampipe::Error saying the build has no CUDA backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ampipe {

enum class Device { CPU, CUDA };

// True when this binary was built with the CUDA backend.
bool cuda_built();
// Usable CUDA devices: 0 without the backend, without a driver or without a GPU (never throws).
int cuda_device_count();
// Why no GPU can be used ("built without CUDA", "no CUDA driver: ...", "no CUDA device"), or "" when
// one can. For tests that skip and for the CLI's error on --device cuda.
std::string cuda_unavailable_reason();
// Throws ampipe::Error naming the reason unless a GPU is usable; `what` names the caller ("--device cuda").
void require_cuda(const char* what);
// Picks this process's GPU: its local rank (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// MPI_LOCALRANKID; 0 outside a launcher) modulo the GPUs, so ranks on one machine spread over its
// GPUs and share them when there are more ranks than GPUs. Every later CUDA call of the process's
// threads (the caller, stream workers, the allocator) uses it. Returns the device index; throws
// like require_cuda without a usable GPU.
int use_local_cuda_device();
// Waits until the calling thread's current CUDA stream (core/cuda/context.h) has finished its work.
void cuda_synchronize();

// Device memory through the caching allocator (core/device_cache.h): at least `bytes` bytes,
// 256-byte aligned; *capacity is set to the bytes reserved and must be passed back to
// device_release. A block released here is reused only after every CUDA stream known to the
// allocator has passed the point of release (stream-ordered: a tensor freed while a stream still
// reads it is never handed out early). Thread-safe. Throws ampipe::Error when the device is out of
// memory even after the cache has been emptied, naming the request and the cache's state.
void* device_allocate(size_t bytes, size_t* capacity);
void device_release(void* p, size_t capacity);

// Copies `rows` rows of `row_bytes` bytes between host and device memory (either direction, or
// device to device); pitches are the distances between rows in bytes. Enqueued on the current
// stream; a copy to the host waits for it (the host reads the bytes next), a copy from the host
// returns once the source has been read.
void copy_rows(void* dst, Device dst_device, size_t dst_pitch, const void* src, Device src_device, size_t src_pitch,
               size_t row_bytes, size_t rows);
// Sets `rows` rows of `row_bytes` bytes of device memory to zero (enqueued on the current stream).
void device_zero_rows(void* dst, size_t pitch, size_t row_bytes, size_t rows);

// Device streams and events for core/stream (opaque handles; CUDA streams and events underneath).
// A device stream is created non-blocking and registered with the allocator's fences; the thread
// that will enqueue on it calls device_stream_make_current. Events come from a pool: release each
// one returned by device_event_record exactly once. All throw ampipe::Error on CUDA errors.
void* device_stream_create();
void device_stream_destroy(void* stream);  // waits for its work first
void device_stream_make_current(void* stream);
void device_stream_synchronize(void* stream);
void* device_event_record(void* stream);   // an event marking all work enqueued on `stream` so far
void device_stream_wait_event(void* stream, void* event);  // `stream`'s later work waits for it
bool device_event_query(void* event);       // non-blocking
void device_event_synchronize(void* event);  // the host waits
void device_event_release(void* event);

struct DeviceCacheStats {
  size_t cached_bytes = 0;
  size_t in_use_bytes = 0;
  size_t peak_in_use_bytes = 0;
  int64_t hits = 0, misses = 0, device_allocations = 0, device_frees = 0;
};
DeviceCacheStats device_cache_stats();

}  // namespace ampipe
