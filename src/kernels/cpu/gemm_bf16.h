// Dense matrix multiply on raw row-major buffers with bf16 inputs and float32 accumulation and
// output, through oneDNN's matmul (the layer under a bf16 Tensor gemm; kernels/gemm.h states the
// Tensor contract this one mirrors).
//
// c = alpha * op(a) @ op(b) + beta * c, where op(x) is x or x^T. op(a) is [M, K], op(b) is [K, N],
// c is [M, N]; lda / ldb / ldc are the row strides of the buffers as stored (a is [M, lda] or, when
// transposed, [K, lda]; likewise b), at least the stored row's width, so column-slice views work.
// beta == 0 overwrites c without reading it (NaN there does not propagate); K == 0 gives
// c = beta * c; M == 0 or N == 0 touches nothing. Products of two bf16 values are exact in float32
// and every sum is accumulated in float32: the result is that of a float32 GEMM on the inputs
// widened to float32, up to the order of the sums.
//
// oneDNN picks the instruction set at run time (AVX512-BF16 / AMX where present). On a CPU where
// it has no bf16 matmul at all (oneDNN 2.6 needs AVX-512 for bf16), the inputs are widened to
// float32 and OpenBLAS sgemm runs them: same contract, float32 speed. gemm_bf16_implementation()
// says which ran. Threads: the calling thread's OpenMP count (core/parallel.h), which Debian's
// oneDNN (OpenMP runtime) follows. Thread-safe: primitives are cached by shape, strides,
// transposes, alpha, beta and thread count (bounded, least recently used evicted), and each call
// brings its own scratchpad. Errors (bad sizes or strides) throw ampipe::Error.
#pragma once

#include <cstdint>
#include <string>

#include "core/bf16.h"

namespace ampipe::kernels::cpu {

void gemm_bf16(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, float alpha,
               const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The same contract on float32 inputs through oneDNN's float32 matmul. For measurement against
// OpenBLAS (bench/bench_gemm_bf16.cpp); the engine's float32 GEMM stays OpenBLAS (kernels/gemm.h).
void gemm_f32_onednn(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                     int64_t ldc);

// oneDNN's name of the implementation it picks for a 1024 x 1024 x 1024 product without transposes
// on this CPU and thread count (e.g. "brg:avx512_core_bf16", "gemm:jit"), or
// "openblas_sgemm(widened)" where gemm_bf16 falls back as described above.
std::string gemm_bf16_implementation();
std::string gemm_f32_onednn_implementation();

}  // namespace ampipe::kernels::cpu
