// Loss evaluation and text generation with a trained model.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "model/gpt.h"
#include "train/data.h"

namespace ampipe {

struct EvalResult {
  double loss = 0;     // mean cross-entropy per target token (no aux term)
  int64_t tokens = 0;  // targets counted
};

// Mean LM loss over windows of seq_len + 1 tokens of `data` starting at `offsets`, `batch` windows
// per forward pass (the last pass may be smaller). With a world of R ranks (collective), rank r
// evaluates windows r, r + R, ...; every rank runs the same number of forward passes (padding with
// uncounted windows) and the result is the global mean over all windows. Under tensor parallelism
// `world` is the data-parallel group: the ranks of a tensor group evaluate the same windows.
EvalResult evaluate_windows(const GptMoe& model, const std::vector<int32_t>& data,
                            const std::vector<int64_t>& offsets, int64_t seq_len, int64_t batch,
                            Communicator* world = nullptr);
// The same over windows of any source (train/data.h), named by their ids.
EvalResult evaluate_windows(const GptMoe& model, const WindowSource& source, const std::vector<int64_t>& ids,
                            int64_t seq_len, int64_t batch, Communicator* world = nullptr);

// Offsets of consecutive non-overlapping windows of seq_len + 1 tokens covering `data_len` tokens
// (a final partial window is dropped).
std::vector<int64_t> consecutive_windows(int64_t data_len, int64_t seq_len);

// Continues `prompt` by `count` tokens. temperature 0 picks the most likely token; otherwise
// samples from softmax(logits / temperature) with a stream seeded by `seed`. The context is the
// last max_seq_len tokens. Only ids below tokenizer_vocab are drawn (0: the model's whole
// vocabulary), so the padding of a subword vocabulary never reaches the decoder.
std::vector<int32_t> generate(const GptMoe& model, const std::vector<int32_t>& prompt, int64_t count,
                              double temperature, uint64_t seed, int64_t tokenizer_vocab = 0);

}  // namespace ampipe
