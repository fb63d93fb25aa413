// Shape and argument checks of the row kernels (kernels/layernorm.h, kernels/embedding.h,
// kernels/cross_entropy.h, kernels/rope.h), shared by the CPU and CUDA backends so that both accept
// and reject exactly the same calls with the same messages. Internal to kernels/. Each check throws
// ampipe::Error (through AMPIPE_CHECK) naming the kernel, the operand and what was expected.
//
// The shape checks read shapes and scalars only, so they run on the host for tensors on any device.
// The id checks (tokens, targets) read contents: the CPU backend calls check_token_id /
// check_target_id for every id; the CUDA backend finds the first bad id on the device
// (first_id_out_of_range_on_gpu) and passes that one through the same function, so the message is
// the same.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace ampipe::kernels::detail {

// layernorm_forward / layernorm_backward / rmsnorm_forward / rmsnorm_backward: x 2-D [R, C >= 1];
// y, dy, dx [R, C]; weight, bias, dweight, dbias [C]; mean, rstd [R]; eps >= 0.
void check_layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& y,
                             const Tensor& mean, const Tensor& rstd, float eps);
void check_layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                              const Tensor& rstd, const Tensor& dx, const Tensor& dweight, const Tensor& dbias);
void check_rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps);
void check_rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                            const Tensor& dx, const Tensor& dweight);

// embedding_forward / embedding_backward: every shape (x or dx 2-D [T, d]; tables [V, d] and
// [>= seq_len, d]; tokens int32 [T]; T a whole number of sequences of seq_len >= 1). Not the ids.
void check_embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                             int64_t seq_len, const Tensor& x);
void check_embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, const Tensor& dtoken_table,
                              const Tensor& dposition_table);
// Token `id` at `position` must lie in [0, vocab). `op` names the kernel.
inline void check_token_id(int32_t id, int64_t position, int64_t vocab, const char* op) {
  AMPIPE_CHECK(id >= 0 && id < vocab) << op << ": token id " << id << " at position " << position
                                      << " is outside the vocabulary [0, " << vocab << ")";
}

// cross_entropy_forward / cross_entropy_backward: logits 2-D [T, V >= 1]; targets int32 [T];
// losses [T]; dlogits shaped like logits. Not the target values.
void check_cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses);
void check_cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& dlogits);
// The target of token `token` must lie in [0, vocab).
inline void check_target_id(int32_t target, int64_t token, int64_t vocab, const char* op) {
  AMPIPE_CHECK(target >= 0 && target < vocab) << op << ": target " << target << " of token " << token
                                              << " is outside the vocabulary [0, " << vocab << ")";
}

// rope_forward / rope_backward: x a 2-D float tensor [batch * n, heads * head_dim], head_dim even;
// batch, num_heads >= 1; pos_begin >= 0; theta finite and > 0. Returns head_dim.
int64_t check_rope(const char* op, const Tensor& x, int64_t batch, int64_t num_heads, int64_t pos_begin,
                   double theta);
// RoPE's inverse frequencies in Hugging Face's float32 arithmetic (kernels/rope.h): for i < hd/2,
// inv_freq[i] = 1 / float32(theta^float32(2i / hd)), the power evaluated in double from the float
// inputs and rounded to float. Both backends use these exact values.
std::vector<float> rope_inv_freq(int64_t head_dim, double theta);

// GPU side of the id checks (defined in kernels/cuda/embedding.cu, CUDA builds only): the first
// index t (smallest) whose id ids[t] lies outside [0, limit) in an int32 1-D tensor on the GPU, and
// that id; index -1 when every id is in range. Waits for the calling thread's current CUDA stream.
struct IdOutOfRange {
  int64_t index;
  int32_t id;
};
IdOutOfRange first_id_out_of_range_on_gpu(const Tensor& ids, int64_t limit);

}  // namespace ampipe::kernels::detail
