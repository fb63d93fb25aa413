// Token + position embedding.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ampipe::kernels {

// x[b*N + i, :] = token_table[tokens[b*N + i], :] + position_table[i, :] (written).
// tokens [B*N] int32 in [0, V) (checked); token_table [V, d]; position_table [S >= N, d], or an
// undefined tensor for a model without a position table (rotary positions): x = token rows only.
// x [B*N, d].
void embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                       int64_t seq_len, Tensor x);

// dtoken_table[v] += sum of dx rows whose token is v; dposition_table[i] += sum over b of
// dx[b*N + i] (both accumulated, deterministic order; dposition_table may be undefined, as above).
void embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, Tensor dtoken_table,
                        Tensor dposition_table);

}  // namespace ampipe::kernels
