#include "train/evaluate.h"

#include <algorithm>
#include <cmath>

#include "core/random.h"
#include "train/data.h"

namespace ampipe {

EvalResult evaluate_windows(const GptMoe& model, const std::vector<int32_t>& data,
                            const std::vector<int64_t>& offsets, int64_t seq_len, int64_t batch,
                            Communicator* world) {
  return evaluate_windows(model, TokenWindows(data), offsets, seq_len, batch, world);
}

EvalResult evaluate_windows(const GptMoe& model, const WindowSource& source, const std::vector<int64_t>& offsets,
                            int64_t seq_len, int64_t batch, Communicator* world) {
  const int64_t R = world ? world->size() : 1;
  const int64_t rank = world ? world->rank() : 0;
  const int64_t n = static_cast<int64_t>(offsets.size());
  const int64_t per_rank = (n + R - 1) / R;
  // This rank's windows; padding (to keep forward passes matched across ranks) is not counted.
  std::vector<int64_t> mine;
  std::vector<bool> counted;
  for (int64_t j = 0; j < per_rank; ++j) {
    const int64_t i = rank + j * R;
    mine.push_back(i < n ? offsets[i] : offsets.empty() ? 0 : offsets[0]);
    counted.push_back(i < n);
  }
  double sum = 0;
  int64_t tokens = 0;
  for (size_t first = 0; first < mine.size(); first += static_cast<size_t>(batch)) {
    const size_t last = std::min(mine.size(), first + static_cast<size_t>(batch));
    std::vector<int64_t> part(mine.begin() + static_cast<std::ptrdiff_t>(first),
                              mine.begin() + static_cast<std::ptrdiff_t>(last));
    Batch b = make_batch(source, part, seq_len);
    const Tensor targets = b.targets.to(model.device());
    ForwardState state;
    model.forward(state, b.tokens.to(model.device()), targets, b.batch);
    const Tensor& losses = state.losses;  // the forward's per-token cross-entropy
    // host round trip (GPU): the per-token losses [B*N] cross to the host, where the counted
    // windows' losses are summed.
    const Tensor host_losses = losses.to(Device::CPU);
    const float* lp = host_losses.data<float>();
    for (int64_t w = 0; w < b.batch; ++w) {
      if (!counted[first + static_cast<size_t>(w)]) continue;
      for (int64_t t = 0; t < seq_len; ++t) sum += lp[w * seq_len + t];
      tokens += seq_len;
    }
  }
  if (world != nullptr && R > 1) {
    world->all_reduce_sum(sum);
    world->all_reduce_sum(tokens);
  }
  EvalResult result;
  result.tokens = tokens;
  result.loss = tokens > 0 ? sum / static_cast<double>(tokens) : 0.0;
  return result;
}

std::vector<int64_t> consecutive_windows(int64_t data_len, int64_t seq_len) {
  std::vector<int64_t> offsets;
  for (int64_t off = 0; off + seq_len + 1 <= data_len; off += seq_len + 1) offsets.push_back(off);
  return offsets;
}

std::vector<int32_t> generate(const GptMoe& model, const std::vector<int32_t>& prompt, int64_t count,
                              double temperature, uint64_t seed, int64_t tokenizer_vocab) {
  AMPIPE_CHECK(!prompt.empty()) << "the prompt must hold at least one token";
  AMPIPE_CHECK(temperature >= 0) << "--temperature must be >= 0, got " << temperature;
  AMPIPE_CHECK(tokenizer_vocab <= model.config().vocab_size)
      << "the tokenizer's vocabulary " << tokenizer_vocab << " exceeds the model's " << model.config().vocab_size;
  // Padded ids (beyond the tokenizer's vocabulary) are never drawn.
  const int64_t V = tokenizer_vocab > 0 ? tokenizer_vocab : model.config().vocab_size;
  for (int32_t t : prompt)
    AMPIPE_CHECK(t >= 0 && t < V) << "prompt token " << t << " is outside the vocabulary [0, " << V << ")";
  Rng rng(seed);
  std::vector<int32_t> context = prompt;
  std::vector<int32_t> out;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(context.size()), model.config().max_seq_len);
    std::vector<int32_t> window(context.end() - n, context.end());
    Tensor logits = model.logits(Tensor::from_ints({n}, window).to(model.device()), 1);
    // host round trip (GPU): the last position's logits [V] cross to the host to pick the next token.
    const Tensor last = logits.rows(n - 1, n).to(Device::CPU);
    const float* row = last.data<float>();
    int32_t next = 0;
    if (temperature == 0) {
      next = static_cast<int32_t>(std::max_element(row, row + V) - row);
    } else {
      const float mx = *std::max_element(row, row + V);
      std::vector<double> w(V);
      double total = 0;
      for (int64_t v = 0; v < V; ++v) total += (w[v] = std::exp((row[v] - mx) / temperature));
      double r = rng.uniform() * total;
      next = static_cast<int32_t>(V - 1);
      for (int64_t v = 0; v < V; ++v) {
        if ((r -= w[v]) < 0) {
          next = static_cast<int32_t>(v);
          break;
        }
      }
    }
    context.push_back(next);
    out.push_back(next);
  }
  return out;
}

}  // namespace ampipe
