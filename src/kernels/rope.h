// Rotary position embedding (RoPE), "rotate half" layout as in Hugging Face Llama / Mixtral.
//
// For a head vector u of size hd (even) at position pos, pair i < hd/2 couples u[i] with
// u[i + hd/2] and rotates it by angle_i = pos * inv_freq_i, inv_freq_i = theta^(-2i/hd):
//   u[i]        <- u[i] cos(angle_i) - u[i + hd/2] sin(angle_i)
//   u[i + hd/2] <- u[i + hd/2] cos(angle_i) + u[i] sin(angle_i)
//
// Angles follow Hugging Face's float32 arithmetic (LlamaRotaryEmbedding): inv_freq_i =
// 1 / float32(theta^float32(2i / hd)) and angle = float32(pos) * inv_freq_i, both rounded to
// float32; cos and sin of that float angle are then evaluated in double and rounded to float. A
// model trained with HF therefore sees the same rotations here to ~1 ulp of cos / sin (the angle
// itself carries HF's float32 rounding, about pos * 2^-24 rad).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ampipe::kernels {

// Rotates every head of x in place. x [B*n, heads*hd] (row-strided column-slice views allowed):
// row b*n + i holds position pos_begin + i of sequence b. hd = x.dim(1) / heads must be even.
// batch >= 1 must divide x.dim(0); pos_begin >= 0; theta > 0. x may be bfloat16 (elementwise.h,
// "bfloat16 operands": rotated in float32, rounded once).
void rope_forward(Tensor x, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta);

// The gradient: rotates dx in place by the opposite angles (the transpose of the forward's rotation).
// Same shapes and checks as rope_forward.
void rope_backward(Tensor dx, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta);

}  // namespace ampipe::kernels
