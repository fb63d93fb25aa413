#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "comm/host_staged_communicator.h"
#include "comm/self_communicator.h"
#include "comm/timed_communicator.h"
#include "core/atomic_file.h"
#include "core/exit_signal.h"
#include "core/memory.h"
#include "core/trace.h"
#include "model/gpt.h"
#include "pipeline/streamed_block.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data.h"
#include "train/distributed.h"
#include "train/evaluate.h"
#include "train/resume_schedule.h"
#include "train/training_executor.h"

namespace ampipe {

static std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  return buf;
}

// A test hook: AMPIPE_INJECT_FAILURE="RANK:ITERATION" makes that rank fail at that iteration, so
// tests can check that one failing rank ends the whole job.
static void maybe_inject_failure(int rank, int64_t iteration) {
  const char* spec = std::getenv("AMPIPE_INJECT_FAILURE");
  if (spec == nullptr) return;
  int fail_rank = -1;
  long long fail_iter = -1;
  const bool now = std::sscanf(spec, "%d:%lld", &fail_rank, &fail_iter) == 2 && fail_rank == rank && fail_iter == iteration;
  AMPIPE_CHECK(!now) << "injected failure at iteration " << iteration << " (AMPIPE_INJECT_FAILURE)";
}

// A test hook: AMPIPE_INJECT_NAN="RANK:ITERATION" makes that rank's loss NaN at that iteration (as
// a diverging step would), so tests can check the skip / --abort-on-nan paths on every rank.
static bool inject_nan(int rank, int64_t iteration) {
  const char* spec = std::getenv("AMPIPE_INJECT_NAN");
  if (spec == nullptr) return false;
  int nan_rank = -1;
  long long nan_iter = -1;
  return std::sscanf(spec, "%d:%lld", &nan_rank, &nan_iter) == 2 && nan_rank == rank && nan_iter == iteration;
}

namespace {

// Everything a run holds while it trains.
struct Run {
  TrainOptions& o;
  TimedCommunicator& world;
  const std::function<void(const std::string&)>& log;
  const TrainingGroups& groups;
  GptMoe& model;
  AdamW& optimizer;
  const TrainingCorpus& corpus;
  TraceRecorder& trace;
  bool tracing;
  int64_t start;
  GradientBuckets& buckets;
};

// The tokenizer of the run: the flags', or (resuming) the checkpoint's own tokenizer file. Sets the
// model's vocabulary (padded) and its tokenizer identity.
std::unique_ptr<Tokenizer> open_tokenizer(TrainOptions& o) {
  // Resuming without tokenizer flags: the checkpoint's own (o.model holds its config by now).
  const bool from_checkpoint = !o.load.empty() && o.tokenizer_model.empty() && o.model.tokenizer != "byte";
  std::unique_ptr<Tokenizer> tokenizer = from_checkpoint ? checkpoint_tokenizer(o.load, o.model)
                                                         : make_tokenizer(o.tokenizer_type, o.tokenizer_model);
  o.tokenizer_type = tokenizer->type();
  AMPIPE_CHECK(o.make_vocab_size_divisible_by >= 1)
      << "--make-vocab-size-divisible-by must be at least 1, got " << o.make_vocab_size_divisible_by;
  // Megatron-LM's padding: a multiple of the divisor times T, so each rank's vocabulary shard is whole.
  const int64_t T = o.tensor_parallel_size;
  o.model.vocab_size = padded_vocab_size(tokenizer->vocab_size(), o.make_vocab_size_divisible_by * T);
  // Resuming: the checkpoint's padded vocabulary wherever T splits it, so a checkpoint resumes at any
  // tensor-parallel size (T = 4's 512 byte ids at T = 1, T = 1's 256 at T = 4).
  if (!o.load.empty()) {
    const int64_t stored = read_checkpoint_config(o.load).vocab_size;
    if (stored >= tokenizer->vocab_size() && stored % T == 0) o.model.vocab_size = stored;
  }
  o.model.tokenizer = tokenizer->identity();
  return tokenizer;
}

// Loads --load: a Hugging Face directory's weights (fresh optimizer), or a checkpoint to resume.
// Returns the iteration to start from.
int64_t load_or_resume(const TrainOptions& o, GptMoe& model, AdamW& optimizer,
                       const std::function<void(const std::string&)>& log) {
  if (o.load.empty()) return 0;
  load_model_weights(o.load, model);
  if (!has_training_state(o.load)) {
    log("starting from the weights of " + o.load + " (no training state: fresh optimizer, iteration 0)");
    return 0;
  }
  TrainingProgress progress = load_training_state(o.load, model, optimizer);
  AMPIPE_CHECK(progress.seed == o.seed) << "checkpoint '" << o.load << "' was trained with --seed " << progress.seed
                                        << ", flags say " << o.seed
                                        << "; resume with the same seed to continue its data order";
  AMPIPE_CHECK(progress.iteration <= o.train_iters) << "checkpoint '" << o.load << "' is at iteration "
                                                    << progress.iteration << ", past --train-iters " << o.train_iters;
  log("resumed from " + o.load + " at iteration " + std::to_string(progress.iteration));
  return progress.iteration;
}

// What the distributed optimizer keeps on this rank, against the whole model's state.
std::string optimizer_shards_line(const Run& r) {
  int64_t held = 0;
  for (const MomentRange& m : r.optimizer.held_ranges()) held += 2 * m.numel;
  const int64_t whole = 2 * r.model.params().num_elements();
  char line[320];
  std::snprintf(
      line, sizeof line,
      "optimizer: distributed (--use-distributed-optimizer): rank %d holds %.2f MiB of AdamW moments, "
      "%.3f of its %.2f MiB unsharded; gradients reduce-scattered, parameters all-gathered",
      r.world.rank(), static_cast<double>(held) * 4.0 / (1 << 20),
      static_cast<double>(held) / static_cast<double>(std::max<int64_t>(whole, 1)),
      static_cast<double>(whole) * 4.0 / (1 << 20));
  return line;
}

void log_startup(const Run& r) {
  const TrainOptions& o = r.o;
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "model: %s family, %lld parameters on this rank, %lld layers, d=%lld, heads=%lld (kv %lld), "
                "experts=%lld (top-%lld), seq %lld, vocabulary %lld (%s)",
                o.model.family.c_str(), static_cast<long long>(r.model.params().num_elements()),
                static_cast<long long>(o.model.num_layers), static_cast<long long>(o.model.hidden_size),
                static_cast<long long>(o.model.num_attention_heads), static_cast<long long>(o.model.kv_heads()),
                static_cast<long long>(o.model.num_experts), static_cast<long long>(o.model.top_k),
                static_cast<long long>(o.model.max_seq_len), static_cast<long long>(o.model.vocab_size),
                o.tokenizer_type.c_str());
  r.log(buf);
  if (o.device == Device::CUDA) r.log("device: cuda (parameters, activations and optimizer state on the GPU)");
  if (r.world.size() > 1) {  // which ranks form each group (train/layout.h)
    std::istringstream layout(r.groups.layout.describe());
    for (std::string line; std::getline(layout, line);) r.log(line);
  }
  if (o.model.bf16)
    r.log(
        "precision: bf16 GEMM operands and all-to-alls, float32 accumulation, main parameters, gradients and "
        "optimizer state (--bf16)");
  r.log("schedule: " + o.schedule.describe() + (o.schedule.kind == ScheduleKind::Sequential ? "" : " " + o.stage_order) +
        ", pipeline scope " + o.pipeline_scope + ", gradient reduction " +
        (o.overlap_grad_reduce ? "overlapped with the backward" : "after the backward"));
  if (o.overlap_moe_expert_parallel_comm == "on")
    r.log(
        std::string("micro-batches: paired, each backward beside the next micro-batch's forward on the same "
                    "streams (--overlap-moe-expert-parallel-comm)") +
        (o.delay_wgrad_compute
             ? "; experts' weight gradients after their dispatch all-to-all (--delay-wgrad-compute)"
             : ""));
  else if (o.delay_wgrad_compute)
    r.log(
        "micro-batches: unpaired (the planner's choice); experts' weight gradients after their dispatch "
        "all-to-all "
        "(--delay-wgrad-compute)");
  if (o.use_distributed_optimizer)
    r.log(optimizer_shards_line(r) +
          (o.overlap_param_gather ? "; each block's "
                                    "parameters all-gathered under the next forward (--overlap-param-gather)"
                                  : ""));
  if (o.recompute_granularity == "selective")
    r.log("recompute: selective (each block recomputes its attention's normed input and its experts' "
          "activation output in the backward; results unchanged)");
  if (o.recompute_granularity == "full")
    r.log("recompute: " + o.recompute_granularity + ", method " + o.recompute_method + ", " +
          std::to_string(o.recompute_num_layers) +
          (o.recompute_method == "uniform" ? " block(s) per recomputed group" : " block(s) recomputed") +
          " (the forward runs again before the backward; results unchanged)");
  for (const std::string& line : r.corpus.summary()) r.log(line);
  const int64_t R = r.world.size(), D = r.groups.data_parallel_group()->size(),
                A = micro_batches_per_step(o, D);
  if (R > 1)
    r.log("parallel: " + std::to_string(R) + " ranks, " +
          (R != D ? "tensor-parallel size " + std::to_string(R / D) + " (data-parallel " + std::to_string(D) +
                        "), "
                  : std::string()) +
          "expert-parallel size " + std::to_string(r.groups.expert_parallel_size) + " (" +
          std::to_string(o.model.num_experts / r.groups.expert_parallel_size) +
          " experts per rank), global batch " + std::to_string(global_batch(o, D)) +
          " sequences, transport " + r.world.backend());
  if (A > 1)
    r.log("batch: global " + std::to_string(global_batch(o, D)) + " sequences = " + std::to_string(A) +
          " micro-batches of " + std::to_string(o.micro_batch_size) + " x " + std::to_string(D) +
          " data-parallel rank(s), gradients accumulated (--global-batch-size)");
}

struct Step {
  LossParts loss;
  double lr = 0, grad_norm = NAN;
  double data_seconds = 0;  // building this rank's batch
};

// Micro-batch m of this rank in iteration `it`: Megatron's order, so the samples of a step do not
// depend on how it is split. The global batch [it G, (it + 1) G) is taken B x DP at a time,
// data-parallel rank d reading the d-th B of each (m-th) piece (every rank of a tensor group the same).
Batch micro_batch(const Run& r, const std::vector<int64_t>& global, int64_t m) {
  const Communicator& data = *r.groups.data_parallel_group();
  const int64_t B = r.o.micro_batch_size, N = r.o.model.max_seq_len, D = data.size();
  const int64_t first = (m * D + data.rank()) * B;
  return make_batch(r.corpus.train(), std::vector<int64_t>(global.begin() + first, global.begin() + first + B), N);
}

// One iteration: this rank's micro-batches of the global batch, each forward then backward with its
// gradient accumulated (scaled by 1/A, so the step's gradient is that of the mean loss), then one
// reduction and the update. The loss and the aux loss reported are the means over micro-batches.
Step train_step(Run& r, int64_t it) {
  const TrainOptions& o = r.o;
  const int64_t B = o.micro_batch_size, rank = r.world.rank(), R = r.world.size();
  const int64_t D = r.groups.data_parallel_group()->size(), A = micro_batches_per_step(o, D);
  Step step;
  const std::vector<int64_t> global = r.corpus.training_ids(it, global_batch(o, D));
  r.model.params().zero_grad();
  step.lr = learning_rate(o.lr, it);
  bool finite = true;
  // --overlap-moe-expert-parallel-comm: micro-batch m's forward runs beside m-1's backward; the
  // first forward and the last backward run alone. The same arithmetic in the same order either way.
  const bool paired = o.overlap_moe_expert_parallel_comm == "on";
  ForwardState states[2];  // micro-batch m's in states[m % 2]
  const double scale = 1.0 / static_cast<double>(A);
  for (int64_t m = 0; m < A && finite; ++m) {
    const auto data_start = std::chrono::steady_clock::now();
    const Batch batch = micro_batch(r, global, m);
    step.data_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - data_start).count();
    // The batch moves to the model's device once per micro-batch (no copy on the CPU).
    const Tensor tokens = batch.tokens.to(r.model.device()), targets = batch.targets.to(r.model.device());
    ForwardState& state = states[m % 2];
    // --overlap-param-gather: the last update's parameters, each block's gathered under the previous
    // block's work, the rest (embeddings, final norm, head) first.
    std::function<void(int64_t)> gather;
    if (m == 0 && r.buckets.param_gathers_deferred()) {
      r.buckets.gather_rest();
      gather = [&r](int64_t l) { r.buckets.gather_block(l); };
    }
    LossParts loss = paired && m > 0
                         ? r.model.backward_and_forward(states[(m - 1) % 2], scale, state, tokens, targets, B)
                         : r.model.forward(state, tokens, targets, B, gather);
    if (m == 0 && inject_nan(static_cast<int>(rank), it + 1)) loss.lm_loss = NAN;
    if (R > 1) {  // every rank decides on the same, reduced value
      r.world.all_reduce_sum(loss.lm_loss);
      loss.lm_loss /= static_cast<double>(R);
    }
    loss.total = loss.lm_loss + o.model.aux_loss_weight * loss.aux_loss;
    step.loss.lm_loss += loss.lm_loss / static_cast<double>(A);
    step.loss.aux_loss += loss.aux_loss / static_cast<double>(A);
    step.loss.total += loss.total / static_cast<double>(A);
    finite = std::isfinite(loss.total);
    if (!finite) break;  // every rank breaks here: the value was reduced
    if (paired && m < A - 1) continue;  // its backward runs beside the next forward
    if (o.overlap_grad_reduce && m == A - 1) {
      // Each block's bucket is reduced on the executor's comm stream once its backward is done: in
      // the last micro-batch, when the block's accumulated gradient is final.
      r.model.backward(state, scale, [&r](int64_t layer) { r.buckets.reduce_block(layer); });
      r.buckets.reduce_rest();
    } else {
      r.model.backward(state, scale);
      if (m == A - 1) r.buckets.reduce_all();
    }
  }
  if (finite) {
    step.grad_norm = r.optimizer.step(step.lr);
  } else {
    step.loss.lm_loss = step.loss.total = NAN;
    AMPIPE_CHECK(!o.abort_on_nan) << "loss became " << step.loss.total << " at iteration " << it + 1
                                  << " (--abort-on-nan); try a lower --lr or --clip-grad";
    r.log("warning: loss is " + std::to_string(step.loss.total) + " at iteration " + std::to_string(it + 1) +
          "; skipping this update (--abort-on-nan ends the run instead)");
  }
  return step;
}

// Rank 0 gathers every rank's trace slices and writes one trace.
void write_trace(Run& r, int64_t traced) {
  std::vector<std::string> parts;
  for (int64_t i = 0; i < r.world.size(); ++i) {
    std::string json = i == r.world.rank() ? r.trace.to_json() : std::string();
    r.world.broadcast_bytes(json, static_cast<int>(i));
    parts.push_back(std::move(json));
  }
  if (r.world.rank() != 0) return;
  write_file_atomically(r.o.trace_file, TraceRecorder::merge(parts));
  r.log("wrote a Chrome trace of " + std::to_string(traced) + " iteration(s) to " + r.o.trace_file +
        " (open it in Perfetto or chrome://tracing)");
}

// The progress window between two logged iterations.
struct Window {
  std::chrono::steady_clock::time_point start;
  int64_t tokens = 0;
  double comm_start = 0, data_seconds = 0;
};

void log_progress(Run& r, std::ofstream& metrics, Window& window, const Step& step, int64_t done, double val,
                  std::chrono::steady_clock::time_point run_start) {
  const TrainOptions& o = r.o;
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - window.start).count();
  const double tps = secs > 0 ? static_cast<double>(window.tokens) / secs : 0.0;
  const double comm_share = secs > 0 ? (r.world.seconds() - window.comm_start) / secs : 0.0;
  const double data_share = secs > 0 ? window.data_seconds / secs : 0.0;
  const double elapsed = std::chrono::duration<double>(now - run_start).count();
  const double eta = elapsed / static_cast<double>(done - r.start) * static_cast<double>(o.train_iters - done);
  char buf[256];
  std::snprintf(buf, sizeof buf, "iter %6lld/%lld | loss %.4f | aux %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | ETA %s",
                static_cast<long long>(done), static_cast<long long>(o.train_iters), step.loss.lm_loss,
                step.loss.aux_loss, step.lr, step.grad_norm, tps, format_duration(eta).c_str());
  std::string line = buf;
  if (r.world.size() > 1) {
    std::snprintf(buf, sizeof buf, " | comm %.0f%%", 100.0 * comm_share);
    line += buf;
  }
  const double bytes_per_token = r.corpus.bytes_per_token();
  if (std::isfinite(val)) {
    std::snprintf(buf, sizeof buf, " | val loss %.4f", val);
    line += buf;
    if (o.tokenizer_type != "byte" && bytes_per_token > 0) {
      std::snprintf(buf, sizeof buf, " (%.4f nats/byte)", val / bytes_per_token);
      line += buf;
    }
  }
  r.log(line);
  if (metrics.is_open()) {
    nlohmann::json j = {{"iter", done},       {"loss", step.loss.lm_loss}, {"aux_loss", step.loss.aux_loss},
                        {"lr", step.lr},      {"grad_norm", step.grad_norm}, {"tokens_per_sec", tps},
                        {"comm_fraction", comm_share}, {"data_fraction", data_share},
                        {"rss_mb", static_cast<double>(resident_bytes()) / (1 << 20)}};
    if (std::isfinite(val)) {
      j["val_loss"] = val;
      if (bytes_per_token > 0) j["val_nats_per_byte"] = val / bytes_per_token;
    }
    metrics << j.dump() << "\n" << std::flush;
  }
  window = Window{std::chrono::steady_clock::now(), 0, r.world.seconds(), 0};
}

// A root of iteration checkpoints in --load -> its latest (or --ckpt-step's) directory.
void resolve_load(TrainOptions& o, const std::function<void(const std::string&)>& log) {
  if (o.load.empty()) return;
  const CheckpointLocation where = locate_checkpoint(o.load, o.ckpt_step);
  if (!where.notice.empty()) log(where.notice);
  o.load = where.path;
  o.ckpt_step = -1;
}

// --exit-signal-handler: the signal any rank received (every rank gets the same answer, so all
// stop after the same step); 0 = none. One small collective per step, only with the flag.
int agreed_exit_signal(Run& r) {
  if (!r.o.exit_signal_handler) return 0;
  int64_t signal = exit_signal_received();
  if (r.world.size() > 1) r.world.all_reduce_max(signal);
  return static_cast<int>(signal);
}

// --load with training state: the checkpoint's optimizer and schedule settings for the flags left
// out (train/resume_schedule.h).
void resume_schedule(TrainOptions& o, int64_t world_size,
                     const std::function<void(const std::string&)>& log) {
  if (o.load.empty()) return;
  const std::optional<ScheduleSettings> stored = read_schedule_settings(o.load);
  if (!stored) {
    if (o.opt_param_scheduler == OptParamScheduler::UseCheckpoint)
      log("--use-checkpoint-opt_param-scheduler: " + o.load +
          " records no schedule; the flags' values are used");
    return;
  }
  for (const std::string& line : apply_checkpoint_schedule(o, *stored, world_size)) log(line);
  validate_train_options(o);
}

// What happens after iteration `done`'s update: validation, the progress line, the trace, a save.
// Returns true if the run must stop here (--exit-interval, or a signal with --exit-signal-handler).
bool after_step(Run& r, std::ofstream& metrics, Window& window, const Step& step, int64_t done,
                std::chrono::steady_clock::time_point run_start, const Tokenizer* tokenizer, TrainResult& result,
                const std::function<double()>& validation_loss) {
  const TrainOptions& o = r.o;
  const bool last = done == o.train_iters;
  const bool eval_now = last || (o.eval_interval > 0 && done % o.eval_interval == 0);
  // --overlap-param-gather: the parameters are whole again before anything but a step reads them.
  if (eval_now) r.buckets.gather_all();
  const double val = eval_now ? validation_loss() : NAN;
  if (eval_now) result.final_val_loss = val;
  if (eval_now || done % o.log_interval == 0) log_progress(r, metrics, window, step, done, val, run_start);
  if (r.tracing && (done - r.start == 3 || (last && done - r.start < 3)))
    write_trace(r, std::min<int64_t>(done - r.start, 2));
  if (r.tracing && done - r.start >= 3) r.trace.clear();
  const int signal = last ? 0 : agreed_exit_signal(r);
  const bool exit_now = !last && (signal != 0 || (o.exit_interval > 0 && done % o.exit_interval == 0));
  bool saved = false;
  if (!o.save.empty() && (last || exit_now || (o.save_interval > 0 && done % o.save_interval == 0))) {
    try {
      TrainingProgress progress{done, o.seed, schedule_settings(o, r.groups.data_parallel_group()->size())};
      const auto save_start = std::chrono::steady_clock::now();
      const int64_t resident_before = resident_bytes();
      r.buckets.gather_all();
      save_iteration_checkpoint(
          o.save, r.model, r.optimizer, progress, &r.groups, tokenizer, o.ckpt_keep,
          o.ckpt_format == "sharded" ? CheckpointFormat::Sharded : CheckpointFormat::Gathered);
      // Freed memory stays in the process (core/memory.h), so the resident size after the save
      // covers its peak: the growth is what the save needed beyond what training already held.
      char how[160];
      std::snprintf(how, sizeof how, " (%s, %.2f s; resident %.0f -> %.0f MiB on rank %d)",
                    o.ckpt_format.c_str(),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - save_start).count(),
                    static_cast<double>(resident_before) / (1 << 20),
                    static_cast<double>(resident_bytes()) / (1 << 20), r.world.rank());
      r.log("saved checkpoint " + iteration_dir_name(done) + " to " + o.save + how);
      saved = true;
    } catch (const Error& e) {
      if (o.exit_on_save_failure) throw;  // every rank throws the same error
      r.log(std::string("warning: ") + e.what() + "; training goes on (--exit-on-save-failure false), the next "
            "save retries");
    }
  }
  if (signal != 0) {
    result.exit_signal = signal;
    r.log(std::string("received ") + exit_signal_name(signal) + ": exiting at iteration " +
          std::to_string(done) + " of " + std::to_string(o.train_iters) + " (--exit-signal-handler), " +
          (saved ? "checkpoint " + iteration_dir_name(done) + " saved to " + o.save
                 : std::string(o.save.empty() ? "no checkpoint (no --save)"
                                              : "no checkpoint (the save failed)")));
  } else if (exit_now) {
    r.log("exiting at iteration " + std::to_string(done) + " (--exit-interval " + std::to_string(o.exit_interval) + ")");
  }
  return exit_now;
}

// The iterations from r.start to --train-iters (or --exit-interval).
TrainResult train_loop(Run& r, const Tokenizer* tokenizer) {
  const TrainOptions& o = r.o;
  const int rank = r.world.rank();
  const int64_t N = o.model.max_seq_len, B = o.micro_batch_size, D = r.groups.data_parallel_group()->size();
  std::ofstream metrics;
  if (!o.metrics_file.empty() && rank == 0) {
    metrics.open(o.metrics_file, r.start > 0 ? std::ios::app : std::ios::trunc);
    AMPIPE_CHECK(metrics.good()) << "cannot open --metrics-file '" << o.metrics_file << "' for writing";
  }
  const std::vector<int64_t> val_ids = r.corpus.validation_ids(o.eval_iters * B * D);
  auto validation_loss = [&]() {  // each tensor group evaluates its data-parallel rank's windows
    return evaluate_windows(r.model, r.corpus.validation(), val_ids, N, B, r.groups.data_parallel_group())
        .loss;
  };
  using clock = std::chrono::steady_clock;
  const auto run_start = clock::now();
  Window window{run_start, 0, r.world.seconds(), 0};
  TrainResult result;
  auto finish = [&](int64_t done) {
    result.iterations = done;
    result.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
    result.tokens_per_sec =
        result.seconds > 0 ? static_cast<double>((done - r.start) * global_batch(o, D) * N) / result.seconds
                           : 0.0;
    if (r.corpus.bytes_per_token() > 0)
      result.final_val_nats_per_byte = result.final_val_loss / r.corpus.bytes_per_token();
    return result;
  };
  for (int64_t it = r.start; it < o.train_iters; ++it) {
    maybe_inject_failure(rank, it + 1);
    // A trace covers iterations start+2 and start+3 (the first is warm-up).
    if (r.tracing && it - r.start <= 1) r.trace.clear();
    if (r.tracing && it - r.start == 1) {
      r.world.barrier();
      r.trace.mark_origin();
    }
    const Step step = train_step(r, it);
    window.tokens += global_batch(o, D) * N;
    window.data_seconds += step.data_seconds;
    result.final_loss = step.loss.lm_loss;
    if (after_step(r, metrics, window, step, it + 1, run_start, tokenizer, result, validation_loss))
      return finish(it + 1);
  }
  return finish(o.train_iters);
}

// A test hook: AMPIPE_INJECT_TASK_FAILURE="RANK:LABEL" makes that rank's task with trace label
// LABEL (e.g. "experts bwd c1 L0") fail inside the streamed executor.
void maybe_inject_task_failure(BlockExecutor* executor, int rank) {
  const char* spec = std::getenv("AMPIPE_INJECT_TASK_FAILURE");
  if (spec == nullptr || executor == nullptr) return;
  const std::string s = spec;
  const size_t colon = s.find(':');
  AMPIPE_CHECK(colon != std::string::npos) << "AMPIPE_INJECT_TASK_FAILURE '" << s << "' is not RANK:LABEL";
  if (std::stoi(s.substr(0, colon)) != rank) return;
  if (auto* streamed = dynamic_cast<StreamedBlock*>(executor)) streamed->inject_failure(s.substr(colon + 1));
}

}  // namespace

TrainResult run_training(TrainOptions o, const std::function<void(const std::string&)>& log_line,
                         Communicator* world_in) {
  validate_train_options(o);
  SelfCommunicator self;
  // GPU buffers between ranks: NCCL, or host copies over MPI (comm/device_communicator.h).
  std::unique_ptr<Communicator> device_comm;
  Communicator& base = communicator_for_device(world_in != nullptr ? *world_in : static_cast<Communicator&>(self),
                                               o.device, o.distributed_backend, device_comm);
  // Every collective goes through the timer, so progress lines can show the communication share.
  TimedCommunicator world(base);
  const int rank = world.rank();
  const int64_t R = world.size();
  auto log = [&](const std::string& line) {
    if (rank == 0) log_line(line);
  };
  // One job per --save directory; taken by the writing rank before anything is read or written.
  std::optional<SaveDirectoryLock> save_lock;
  if (!o.save.empty() && rank == 0) save_lock.emplace(o.save);
  // The other outputs too, before the data is read: a run never trains only to fail writing them.
  if (rank == 0 && !o.metrics_file.empty()) prepare_output_file("--metrics-file", o.metrics_file);
  if (rank == 0 && !o.trace_file.empty()) prepare_output_file("--trace", o.trace_file);
  resolve_load(o, log);
  const int64_t D = data_parallel_size(o, R);  // the ranks of a tensor group share each micro-batch
  resume_schedule(o, D, log);
  // Refuses a global batch that does not divide, and pairing with nothing to pair, before any data is read.
  const int64_t A = micro_batches_per_step(o, D);
  AMPIPE_CHECK(o.overlap_moe_expert_parallel_comm == "off" || A >= 2)
      << "--overlap-moe-expert-parallel-comm pairs one micro-batch's backward with the next one's forward, "
      << "and each step runs " << A << " micro-batch (global batch " << global_batch(o, D)
      << " = micro-batch " << o.micro_batch_size << " x " << D
      << " data-parallel rank(s)); give --global-batch-size of at least " << 2 * o.micro_batch_size * D;
  // A finished run restarted (e.g. by a job script): said before any data is read.
  if (const int64_t at = o.load.empty() ? -1 : checkpoint_iteration(o.load); at == o.train_iters) {
    log("nothing to do: the checkpoint is at iteration " + std::to_string(at) + " of " +
        std::to_string(o.train_iters) + " (--train-iters)");
    TrainResult done;
    done.iterations = at;
    done.nothing_to_do = true;
    return done;
  }
  const std::unique_ptr<Tokenizer> tokenizer = open_tokenizer(o);
  check_same_configuration(world, describe_train_options(o));
  TrainingGroups groups = make_training_groups(world, make_layout(R, parallel_sizes(o), o.model));
  o.lr.decay_iters = o.train_iters;
  const int64_t N = o.model.max_seq_len, B = o.micro_batch_size;
  CorpusOptions co{o.data_path, o.split, N, o.seed, o.train_iters * global_batch(o, D), o.eval_iters * B * D};
  const TrainingCorpus corpus(co, *tokenizer, o.model.vocab_size);
  o.model.selective_recompute = o.recompute_granularity == "selective";
  GptMoe model(o.model, groups.model_parallel(), o.device);
  model.initialize(o.seed);
  TraceRecorder trace;
  const bool tracing = !o.trace_file.empty();
  const std::unique_ptr<BlockExecutor> block_executor =
      make_block_executor(o, groups, world, tracing ? &trace : nullptr, log);
  maybe_inject_task_failure(block_executor.get(), rank);
  model.set_block_executor(block_executor.get());  // null: the sequential block
  if (o.recompute_granularity == "full")
    model.set_recompute(recompute_groups(o.recompute_method, o.recompute_num_layers, o.model.num_layers));
  GradientBuckets buckets(model.params(), groups, o.model.num_layers, o.use_distributed_optimizer);
  buckets.defer_param_gathers(o.overlap_param_gather);
  AdamW optimizer(model.params(), o.adamw, groups.expert_group.get(), &buckets);
  optimizer.set_tensor_group(groups.tensor_group.get());
  optimizer.set_expert_tensor_group(groups.expert_tensor_group.get());
  const int64_t start = load_or_resume(o, model, optimizer, log);
  Run run{o, world, log, groups, model, optimizer, corpus, trace, tracing, start, buckets};
  log_startup(run);
  return train_loop(run, tokenizer.get());
}

}  // namespace ampipe
