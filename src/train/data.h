// Training data: a text file as byte tokens, its train/validation split, and the batches drawn
// from it.
//
// The tokenizer is byte-level (vocabulary 256): token = byte value. The split is deterministic: the
// last 10% of tokens (rounded down) are validation, the rest training. Training batches are windows
// of seq_len + 1 tokens at offsets drawn from a stream seeded by (seed, iteration), so the batch of
// any iteration is known without replaying earlier ones (a resumed run sees the same data), and
// the global batch of an iteration is one list that data-parallel ranks cut into equal parts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace ampipe {

std::vector<int32_t> byte_encode(const std::string& text);
std::string byte_decode(const std::vector<int32_t>& tokens);

// Reads the whole file as byte tokens; refuses a missing, unreadable or empty file.
std::vector<int32_t> load_tokens(const std::string& path);

struct TextSplit {
  std::vector<int32_t> train, validation;
};
// Splits off the last 10% as validation; each part must hold one window of seq_len + 1 tokens.
TextSplit split_train_validation(std::vector<int32_t> tokens, int64_t seq_len, const std::string& path);

// Where windows of seq_len + 1 tokens come from, each named by an id: an offset into a token array
// (TokenWindows, below), or a sample number of an indexed dataset's split (train/gpt_dataset.h).
class WindowSource {
 public:
  virtual ~WindowSource() = default;
  // Writes window `id`'s seq_len + 1 tokens to out; refuses an id outside the source.
  virtual void window(int64_t id, int64_t seq_len, int32_t* out) const = 0;
};

// Windows of a token array (borrowed; it must outlive this): id = the window's first offset.
class TokenWindows final : public WindowSource {
 public:
  explicit TokenWindows(const std::vector<int32_t>& tokens) : tokens_(tokens) {}
  void window(int64_t offset, int64_t seq_len, int32_t* out) const override;

 private:
  const std::vector<int32_t>& tokens_;
};

// A batch of B windows: tokens and targets [B*N] int32 (targets are the tokens shifted by one), on
// the host; the trainer moves them to the model's device once per step.
struct Batch {
  Tensor tokens, targets;
  int64_t batch = 0;
};
Batch make_batch(const WindowSource& source, const std::vector<int64_t>& ids, int64_t seq_len);
Batch make_batch(const std::vector<int32_t>& data, const std::vector<int64_t>& offsets, int64_t seq_len);

// Window start offsets of the global batch of `iteration` (global_batch of them), uniform over the
// valid starts of a split of `data_len` tokens.
std::vector<int64_t> training_offsets(uint64_t seed, int64_t iteration, int64_t global_batch, int64_t data_len,
                                      int64_t seq_len);

// `count` window offsets evenly spread over a split (validation during training).
std::vector<int64_t> evaluation_offsets(int64_t count, int64_t data_len, int64_t seq_len);

}  // namespace ampipe
