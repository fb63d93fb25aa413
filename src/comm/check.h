// Argument checks shared by the communicator backends (internal to comm/).
//
// Each returns an empty string when the argument is good, else what is wrong (without the call and
// rank: the backend prefixes those). They do not throw, so a backend can first let the ranks agree
// that everyone's arguments are good (a rank that throws alone would leave the others waiting).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ampipe::comm_detail {

// "<call> on rank R of N" plus " (world rank W)" when the group is not the world.
std::string where(const char* call, int rank, int size, int world_rank, int world_size);

// A buffer that a collective reads or writes: defined, float32, bfloat16 or int32, contiguous.
std::string check_buffer(const Tensor& t, const char* name);
// A buffer that all_reduce_sum sums: check_buffer, and not bfloat16 (summed in float32 only).
std::string check_reducible(const Tensor& t, const char* name);

// Per-rank element counts: `size` entries, each >= 0, summing to at most `capacity` elements.
std::string check_counts(const std::vector<int64_t>& counts, const char* name, int size, int64_t capacity,
                         const char* buffer_name);

// The same dtype for two buffers.
std::string check_same_dtype(const Tensor& a, const char* a_name, const Tensor& b, const char* b_name);

// reduce_scatter_sum's buffers: both reducible, the same dtype, send = size x recv elements.
std::string check_reduce_scatter(const Tensor& send, const Tensor& recv, int size);

// root in [0, size).
std::string check_root(int root, int size);

}  // namespace ampipe::comm_detail
