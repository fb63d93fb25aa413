#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/gpt.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/evaluate.h"

namespace ampipe {

static std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

static void validate(const TrainOptions& o) {
  o.model.validate();
  AMPIPE_CHECK(o.micro_batch_size >= 1) << "--micro-batch-size must be at least 1, got " << o.micro_batch_size;
  AMPIPE_CHECK(o.train_iters >= 1) << "--train-iters must be at least 1, got " << o.train_iters;
  AMPIPE_CHECK(o.eval_interval >= 0) << "--eval-interval must be >= 0, got " << o.eval_interval;
  AMPIPE_CHECK(o.eval_iters >= 1) << "--eval-iters must be at least 1, got " << o.eval_iters;
  AMPIPE_CHECK(o.log_interval >= 1) << "--log-interval must be at least 1, got " << o.log_interval;
  AMPIPE_CHECK(o.exit_interval >= 0) << "--exit-interval must be >= 0, got " << o.exit_interval;
  AMPIPE_CHECK(o.save_interval >= 0) << "--save-interval must be >= 0, got " << o.save_interval;
  AMPIPE_CHECK(o.lr.lr > 0) << "--lr must be positive, got " << o.lr.lr;
  AMPIPE_CHECK(o.lr.min_lr >= 0 && o.lr.min_lr <= o.lr.lr)
      << "--min-lr must be in [0, --lr " << o.lr.lr << "], got " << o.lr.min_lr;
  AMPIPE_CHECK(o.lr.warmup_iters >= 0) << "--lr-warmup-iters must be >= 0, got " << o.lr.warmup_iters;
  AMPIPE_CHECK(o.adamw.weight_decay >= 0) << "--weight-decay must be >= 0, got " << o.adamw.weight_decay;
  AMPIPE_CHECK(o.adamw.clip_grad >= 0) << "--clip-grad must be >= 0 (0 disables), got " << o.adamw.clip_grad;
}

TrainResult run_training(TrainOptions o, const std::function<void(const std::string&)>& log) {
  validate(o);
  o.lr.decay_iters = o.train_iters;
  const int64_t N = o.model.max_seq_len;
  const int64_t B = o.micro_batch_size;

  TextSplit data = split_train_validation(load_tokens(o.data_path), N, o.data_path);
  GptMoe model(o.model);
  model.initialize(o.seed);
  AdamW optimizer(model.params(), o.adamw);
  int64_t start = 0;
  if (!o.load.empty()) {
    load_model_weights(o.load, model);
    TrainingProgress progress = load_training_state(o.load, optimizer);
    AMPIPE_CHECK(progress.seed == o.seed) << "checkpoint '" << o.load << "' was trained with --seed "
                                          << progress.seed << ", flags say " << o.seed
                                          << "; resume with the same seed to continue its data order";
    start = progress.iteration;
    AMPIPE_CHECK(start <= o.train_iters) << "checkpoint '" << o.load << "' is at iteration " << start
                                         << ", past --train-iters " << o.train_iters;
    log("resumed from " + o.load + " at iteration " + std::to_string(start));
  }

  std::ofstream metrics;
  if (!o.metrics_file.empty()) {
    metrics.open(o.metrics_file, start > 0 ? std::ios::app : std::ios::trunc);
    AMPIPE_CHECK(metrics.good()) << "cannot open --metrics-file '" << o.metrics_file << "' for writing";
  }
  {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "model: %lld parameters, %lld layers, d=%lld, heads=%lld, experts=%lld (top-%lld), seq %lld; "
                  "data: %zu train / %zu validation tokens",
                  static_cast<long long>(model.params().num_elements()), static_cast<long long>(o.model.num_layers),
                  static_cast<long long>(o.model.hidden_size), static_cast<long long>(o.model.num_attention_heads),
                  static_cast<long long>(o.model.num_experts), static_cast<long long>(o.model.top_k),
                  static_cast<long long>(N), data.train.size(), data.validation.size());
    log(buf);
  }

  const std::vector<int64_t> val_offsets =
      evaluation_offsets(o.eval_iters * B, static_cast<int64_t>(data.validation.size()), N);
  auto validation_loss = [&]() { return evaluate_windows(model, data.validation, val_offsets, N, B).loss; };

  using clock = std::chrono::steady_clock;
  const auto run_start = clock::now();
  auto window_start = run_start;
  int64_t window_tokens = 0;
  TrainResult result;
  for (int64_t it = start; it < o.train_iters; ++it) {
    Batch batch = make_batch(data.train,
                             training_offsets(o.seed, it, B, static_cast<int64_t>(data.train.size()), N), N);
    model.params().zero_grad();
    ForwardState state;
    LossParts loss = model.forward(state, batch.tokens, batch.targets, B);
    AMPIPE_CHECK(std::isfinite(loss.total)) << "loss became " << loss.total << " at iteration " << it + 1
                                            << "; try a lower --lr or --clip-grad";
    model.backward(state);
    const double lr = learning_rate(o.lr, it);
    const double grad_norm = optimizer.step(lr);
    window_tokens += B * N;
    const auto step_end = clock::now();
    result.final_loss = loss.lm_loss;

    const int64_t done = it + 1;
    const bool last = done == o.train_iters;
    const bool eval_now = last || (o.eval_interval > 0 && done % o.eval_interval == 0);
    const bool log_now = eval_now || done % o.log_interval == 0;
    double val = NAN;
    if (eval_now) val = validation_loss();
    if (log_now) {
      const double secs = std::chrono::duration<double>(step_end - window_start).count();
      const double tps = secs > 0 ? static_cast<double>(window_tokens) / secs : 0.0;
      const double elapsed = std::chrono::duration<double>(step_end - run_start).count();
      const double eta = elapsed / static_cast<double>(done - start) * static_cast<double>(o.train_iters - done);
      char buf[256];
      std::snprintf(buf, sizeof buf, "iter %6lld/%lld | loss %.4f | aux %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | ETA %s",
                    static_cast<long long>(done), static_cast<long long>(o.train_iters), loss.lm_loss,
                    loss.aux_loss, lr, grad_norm, tps, format_duration(eta).c_str());
      std::string line = buf;
      if (eval_now) {
        std::snprintf(buf, sizeof buf, " | val loss %.4f", val);
        line += buf;
      }
      log(line);
      if (metrics.is_open()) {
        nlohmann::json j = {{"iter", done}, {"loss", loss.lm_loss}, {"aux_loss", loss.aux_loss},
                            {"lr", lr}, {"grad_norm", grad_norm}, {"tokens_per_sec", tps}};
        if (eval_now) j["val_loss"] = val;
        metrics << j.dump() << "\n" << std::flush;
      }
      window_start = clock::now();
      window_tokens = 0;
    }
    if (eval_now) result.final_val_loss = val;
    const bool exit_now = !last && o.exit_interval > 0 && done % o.exit_interval == 0;
    if (!o.save.empty() && (last || exit_now || (o.save_interval > 0 && done % o.save_interval == 0))) {
      save_checkpoint(o.save, model, optimizer, TrainingProgress{done, o.seed});
      log("saved checkpoint to " + o.save + " at iteration " + std::to_string(done));
    }
    if (exit_now) {
      log("exiting at iteration " + std::to_string(done) + " (--exit-interval " + std::to_string(o.exit_interval) + ")");
      result.iterations = done;
      result.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
      result.tokens_per_sec = static_cast<double>((done - start) * B * N) / std::max(result.seconds, 1e-9);
      return result;
    }
  }
  if (start == o.train_iters) result.final_val_loss = validation_loss();
  result.iterations = o.train_iters;
  result.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
  result.tokens_per_sec =
      result.seconds > 0 ? static_cast<double>((o.train_iters - start) * B * N) / result.seconds : 0.0;
  return result;
}

}  // namespace ampipe
