#include "core/cuda/cuda_check.h"

#include <sstream>
#include <string>

#include "core/error.h"

namespace ampipe::detail {

void throw_cuda_error(const char* call, cudaError_t error, const char* file, int line) {
  std::ostringstream os;
  os << "CUDA error in " << call << ": " << cudaGetErrorName(error) << " (" << cudaGetErrorString(error)
     << ") at " << file << ":" << line;
  throw Error(os.str());
}

void throw_cublas_error(const char* call, cublasStatus_t status, const char* file, int line) {
  std::ostringstream os;
  os << "cuBLAS error in " << call << ": " << cublasGetStatusName(status) << " ("
     << cublasGetStatusString(status) << ") at " << file << ":" << line;
  throw Error(os.str());
}

void check_launch(const char* kernel, const char* file, int line) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw_cuda_error((std::string("launch of ") + kernel).c_str(), error, file, line);
}

}  // namespace ampipe::detail
