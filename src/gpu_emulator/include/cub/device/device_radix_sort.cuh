// The GPU emulator's cub::DeviceRadixSort::SortPairs (docs/GPU.md, "The emulator"): CUB's contract,
// including the temporary-storage query (d_temp_storage == nullptr sets temp_storage_bytes and does
// nothing else) and a too-small buffer refused; a stable sort of the pairs by key bits
// [begin_bit, end_bit), run on the stream in the caller's temporary storage. EMULATE build only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../../cuda_runtime.h"

namespace cub {

struct DeviceRadixSort {
  template <class Key, class Value, class NumItems>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const Key* d_keys_in,
                               Key* d_keys_out, const Value* d_values_in, Value* d_values_out,
                               NumItems num_items, int begin_bit = 0, int end_bit = sizeof(Key) * 8,
                               cudaStream_t stream = nullptr) {
    static_assert(std::is_unsigned_v<Key>,
                  "the emulator sorts unsigned keys (CUB's signed-key bit twiddling is not used)");
    const size_t n = num_items > 0 ? static_cast<size_t>(num_items) : 0;
    const size_t needed = n * sizeof(size_t) + 256;  // one permutation index per item
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = needed;
      return cudaSuccess;
    }
    if (temp_storage_bytes < needed || begin_bit < 0 || end_bit > static_cast<int>(sizeof(Key) * 8) ||
        begin_bit >= end_bit)
      return cudaErrorInvalidValue;
    auto* order = static_cast<size_t*>(d_temp_storage);
    ampipe_gpu_emulator::enqueue(
        stream,
        [=] {
          const Key bits = end_bit - begin_bit >= static_cast<int>(sizeof(Key) * 8)
                               ? static_cast<Key>(~Key(0))
                               : static_cast<Key>((Key(1) << (end_bit - begin_bit)) - 1);
          auto digit = [&](size_t i) { return static_cast<Key>((d_keys_in[i] >> begin_bit) & bits); };
          for (size_t i = 0; i < n; ++i) order[i] = i;
          std::stable_sort(order, order + n, [&](size_t a, size_t b) { return digit(a) < digit(b); });
          for (size_t i = 0; i < n; ++i) {
            d_keys_out[i] = d_keys_in[order[i]];
            d_values_out[i] = d_values_in[order[i]];
          }
        },
        "cub::DeviceRadixSort::SortPairs");
    return cudaSuccess;
  }
};

}  // namespace cub
