#include "core/cuda/context.h"

#include <algorithm>
#include <mutex>

namespace ampipe {
namespace {
thread_local cudaStream_t t_current_stream = nullptr;
std::mutex g_streams_mutex;
std::vector<cudaStream_t>& streams() {
  static std::vector<cudaStream_t> s;
  return s;
}
}  // namespace

cudaStream_t current_cuda_stream() { return t_current_stream; }
void set_current_cuda_stream(cudaStream_t stream) { t_current_stream = stream; }

void register_cuda_stream(cudaStream_t stream) {
  if (stream == nullptr) return;
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  auto& s = streams();
  if (std::find(s.begin(), s.end(), stream) == s.end()) s.push_back(stream);
}

void unregister_cuda_stream(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  auto& s = streams();
  s.erase(std::remove(s.begin(), s.end(), stream), s.end());
}

std::vector<cudaStream_t> registered_cuda_streams() {
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  std::vector<cudaStream_t> out{nullptr};
  out.insert(out.end(), streams().begin(), streams().end());
  return out;
}

}  // namespace ampipe
