#include "train/evaluate.h"

#include <algorithm>
#include <cmath>

#include "core/random.h"
#include "train/data.h"

namespace ampipe {

EvalResult evaluate_windows(const GptMoe& model, const std::vector<int32_t>& data,
                            const std::vector<int64_t>& offsets, int64_t seq_len, int64_t batch) {
  EvalResult result;
  double sum = 0;
  for (size_t first = 0; first < offsets.size(); first += static_cast<size_t>(batch)) {
    const size_t last = std::min(offsets.size(), first + static_cast<size_t>(batch));
    std::vector<int64_t> part(offsets.begin() + static_cast<std::ptrdiff_t>(first),
                              offsets.begin() + static_cast<std::ptrdiff_t>(last));
    Batch b = make_batch(data, part, seq_len);
    ForwardState state;
    LossParts loss = model.forward(state, b.tokens, b.targets, b.batch);
    const int64_t n = b.batch * seq_len;
    sum += loss.lm_loss * static_cast<double>(n);
    result.tokens += n;
  }
  result.loss = result.tokens > 0 ? sum / static_cast<double>(result.tokens) : 0.0;
  return result;
}

std::vector<int64_t> consecutive_windows(int64_t data_len, int64_t seq_len) {
  std::vector<int64_t> offsets;
  for (int64_t off = 0; off + seq_len + 1 <= data_len; off += seq_len + 1) offsets.push_back(off);
  return offsets;
}

std::vector<int32_t> generate(const GptMoe& model, const std::vector<int32_t>& prompt, int64_t count,
                              double temperature, uint64_t seed) {
  AMPIPE_CHECK(!prompt.empty()) << "the prompt must hold at least one token";
  AMPIPE_CHECK(temperature >= 0) << "--temperature must be >= 0, got " << temperature;
  const int64_t V = model.config().vocab_size;
  for (int32_t t : prompt)
    AMPIPE_CHECK(t >= 0 && t < V) << "prompt token " << t << " is outside the vocabulary [0, " << V << ")";
  Rng rng(seed);
  std::vector<int32_t> context = prompt;
  std::vector<int32_t> out;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(context.size()), model.config().max_seq_len);
    std::vector<int32_t> window(context.end() - n, context.end());
    Tensor logits = model.logits(Tensor::from_ints({n}, window), 1);
    const float* row = logits.data<float>() + (n - 1) * V;
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
