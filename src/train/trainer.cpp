#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "comm/self_communicator.h"
#include "comm/timed_communicator.h"
#include "core/atomic_file.h"
#include "core/trace.h"
#include "model/gpt.h"
#include "pipeline/streamed_block.h"
#include "plan/autotune.h"
#include "plan/calibrate.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/distributed.h"
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

// One "key=value" line per option that must agree across ranks.
static std::string describe(const TrainOptions& o) {
  std::ostringstream s;
  for (const auto& [k, v] : o.model.to_metadata()) s << k << "=" << v << "\n";
  s << "micro_batch_size=" << o.micro_batch_size << "\nlr=" << o.lr.lr << "\nmin_lr=" << o.lr.min_lr
    << "\nwarmup=" << o.lr.warmup_iters << "\nweight_decay=" << o.adamw.weight_decay
    << "\nclip_grad=" << o.adamw.clip_grad << "\ntrain_iters=" << o.train_iters << "\nseed=" << o.seed
    << "\ndata_path=" << o.data_path << "\nload=" << o.load << "\nsave=" << o.save
    << "\nexpert_parallel_size=" << o.expert_parallel_size << "\neval_interval=" << o.eval_interval
    << "\neval_iters=" << o.eval_iters << "\nexit_interval=" << o.exit_interval
    << "\nschedule=" << o.schedule.describe() << "\nstage_order=" << o.stage_order << "\n";
  return s.str();
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

// --pipe-degree auto: the planner's choice for this model on this machine (every rank gets the same
// profile, so the same choice).
static std::pair<PlanCandidate, double> plan_block(const TrainOptions& o, int64_t batch,
                                                   const TrainingGroups& groups, Communicator& world) {
  HardwareProfile hw;
  if (!o.hardware.empty()) {
    hw = load_hardware_profile(o.hardware);
  } else {
    CalibrateOptions co;
    co.quick = true;
    co.hidden_sizes = {o.model.hidden_size};
    hw = calibrate(world, co);
  }
  const BlockShape shape{o.model, batch, o.model.max_seq_len, groups.expert_group->size()};
  AutotuneOptions ao;
  if (o.schedule.kind == ScheduleKind::MoePipe) ao.schedules = {ScheduleKind::MoePipe};  // ampipe: both
  const std::vector<PlanCandidate> candidates = evaluate_candidates(shape, hw, ao);
  double sequential_seconds = 0;
  for (const PlanCandidate& c : candidates)
    if (c.schedule.kind == ScheduleKind::Sequential) sequential_seconds = c.prediction.total;
  return {choose_plan(candidates, ao.min_gain, ao.near_tie), sequential_seconds};
}

TrainResult run_training(TrainOptions o, const std::function<void(const std::string&)>& log_line,
                         Communicator* world_in) {
  validate(o);
  SelfCommunicator self;
  // Every collective goes through the timer, so progress lines can show the communication share.
  TimedCommunicator world(world_in != nullptr ? *world_in : static_cast<Communicator&>(self));
  check_same_configuration(world, describe(o));
  const int rank = world.rank();
  const int64_t R = world.size();
  auto log = [&](const std::string& line) {
    if (rank == 0) log_line(line);
  };
  TrainingGroups groups = make_training_groups(world, o.expert_parallel_size, o.model.num_experts);
  o.lr.decay_iters = o.train_iters;
  const int64_t N = o.model.max_seq_len;
  const int64_t B = o.micro_batch_size;

  TextSplit data = split_train_validation(load_tokens(o.data_path), N, o.data_path);
  GptMoe model(o.model, groups.model_parallel());
  model.initialize(o.seed);
  if (o.auto_plan && o.schedule.kind != ScheduleKind::Sequential && o.schedule.chunk_boundaries.empty()) {
    const auto [choice, sequential_seconds] = plan_block(o, B, groups, world);
    o.schedule = choice.schedule;
    o.stage_order = stage_order_name(choice.order);
    char line[256];
    std::snprintf(line, sizeof line, "planner: %s, predicted block %.2f ms (sequential %.2f ms)",
                  choice.describe().c_str(), choice.prediction.total * 1e3, sequential_seconds * 1e3);
    log(line);
  }
  if (o.schedule.chunk_policy == ChunkPolicy::Balanced && o.schedule.balance_weight == 0)
    o.schedule.balance_weight = balance_weight(o.model, o.schedule.moe_pipe_degree == 0);
  o.schedule.plan(N);  // refuse boundaries that do not fit the sequence before training
  // A trace covers iterations start+2 and start+3 (the first is warm-up). A sequential block runs
  // on the streams too when traced, so every schedule shows its stages.
  TraceRecorder trace;
  const bool tracing = !o.trace_file.empty();
  std::unique_ptr<BlockExecutor> block_executor;
  if (tracing || o.schedule.kind != ScheduleKind::Sequential)
    block_executor = std::make_unique<StreamedBlock>(o.schedule, parse_stage_order(o.stage_order),
                                                     tracing ? &trace : nullptr, rank);
  model.set_block_executor(block_executor.get());  // null: the sequential block
  AdamW optimizer(model.params(), o.adamw, groups.expert_group.get());
  int64_t start = 0;
  if (!o.load.empty() && !has_training_state(o.load)) {
    load_model_weights(o.load, model);
    log("starting from the weights of " + o.load + " (no training state: fresh optimizer, iteration 0)");
  } else if (!o.load.empty()) {
    load_model_weights(o.load, model);
    TrainingProgress progress = load_training_state(o.load, model, optimizer);
    AMPIPE_CHECK(progress.seed == o.seed) << "checkpoint '" << o.load << "' was trained with --seed "
                                          << progress.seed << ", flags say " << o.seed
                                          << "; resume with the same seed to continue its data order";
    start = progress.iteration;
    AMPIPE_CHECK(start <= o.train_iters) << "checkpoint '" << o.load << "' is at iteration " << start
                                         << ", past --train-iters " << o.train_iters;
    log("resumed from " + o.load + " at iteration " + std::to_string(start));
  }

  std::ofstream metrics;
  if (!o.metrics_file.empty() && rank == 0) {
    metrics.open(o.metrics_file, start > 0 ? std::ios::app : std::ios::trunc);
    AMPIPE_CHECK(metrics.good()) << "cannot open --metrics-file '" << o.metrics_file << "' for writing";
  }
  {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "model: %s family, %lld parameters on this rank, %lld layers, d=%lld, heads=%lld (kv %lld), "
                  "experts=%lld (top-%lld), seq %lld; data: %zu train / %zu validation tokens",
                  o.model.family.c_str(), static_cast<long long>(model.params().num_elements()),
                  static_cast<long long>(o.model.num_layers), static_cast<long long>(o.model.hidden_size),
                  static_cast<long long>(o.model.num_attention_heads), static_cast<long long>(o.model.kv_heads()),
                  static_cast<long long>(o.model.num_experts), static_cast<long long>(o.model.top_k),
                  static_cast<long long>(N), data.train.size(), data.validation.size());
    log(buf);
  }

  if (R > 1)
    log("parallel: " + std::to_string(R) + " ranks, expert-parallel size " + std::to_string(groups.expert_parallel_size) +
        " (" + std::to_string(o.model.num_experts / groups.expert_parallel_size) + " experts per rank), global batch " +
        std::to_string(B * R) + " sequences, transport " + world.backend());
  const std::vector<int64_t> val_offsets =
      evaluation_offsets(o.eval_iters * B * R, static_cast<int64_t>(data.validation.size()), N);
  auto validation_loss = [&]() { return evaluate_windows(model, data.validation, val_offsets, N, B, &world).loss; };

  using clock = std::chrono::steady_clock;
  const auto run_start = clock::now();
  auto window_start = run_start;
  int64_t window_tokens = 0;
  double window_comm_start = world.seconds();
  TrainResult result;
  for (int64_t it = start; it < o.train_iters; ++it) {
    maybe_inject_failure(rank, it + 1);
    if (tracing && it - start <= 1) trace.clear();  // keep only the traced iterations
    if (tracing && it - start == 1) {
      world.barrier();
      trace.mark_origin();
    }
    // The global batch of this iteration; this rank takes its B consecutive windows.
    const std::vector<int64_t> global =
        training_offsets(o.seed, it, B * R, static_cast<int64_t>(data.train.size()), N);
    Batch batch = make_batch(data.train, std::vector<int64_t>(global.begin() + rank * B, global.begin() + (rank + 1) * B), N);
    model.params().zero_grad();
    ForwardState state;
    LossParts loss = model.forward(state, batch.tokens, batch.targets, B);
    if (R > 1) {
      world.all_reduce_sum(loss.lm_loss);
      loss.lm_loss /= static_cast<double>(R);
      loss.total = loss.lm_loss + o.model.aux_loss_weight * loss.aux_loss;
    }
    const double lr = learning_rate(o.lr, it);
    double grad_norm = NAN;
    if (std::isfinite(loss.total)) {
      model.backward(state);
      average_gradients(model.params(), groups);
      grad_norm = optimizer.step(lr);
    } else {
      AMPIPE_CHECK(!o.abort_on_nan) << "loss became " << loss.total << " at iteration " << it + 1
                                    << " (--abort-on-nan); try a lower --lr or --clip-grad";
      log("warning: loss is " + std::to_string(loss.total) + " at iteration " + std::to_string(it + 1) +
          "; skipping this update (--abort-on-nan ends the run instead)");
    }
    window_tokens += B * N * R;
    const auto step_end = clock::now();
    const double comm_at_step_end = world.seconds();
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
      const double comm_share = secs > 0 ? (comm_at_step_end - window_comm_start) / secs : 0.0;
      const double elapsed = std::chrono::duration<double>(step_end - run_start).count();
      const double eta = elapsed / static_cast<double>(done - start) * static_cast<double>(o.train_iters - done);
      char buf[256];
      std::snprintf(buf, sizeof buf, "iter %6lld/%lld | loss %.4f | aux %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | ETA %s",
                    static_cast<long long>(done), static_cast<long long>(o.train_iters), loss.lm_loss,
                    loss.aux_loss, lr, grad_norm, tps, format_duration(eta).c_str());
      std::string line = buf;
      if (R > 1) {
        std::snprintf(buf, sizeof buf, " | comm %.0f%%", 100.0 * comm_share);
        line += buf;
      }
      if (eval_now) {
        std::snprintf(buf, sizeof buf, " | val loss %.4f", val);
        line += buf;
      }
      log(line);
      if (metrics.is_open()) {
        nlohmann::json j = {{"iter", done}, {"loss", loss.lm_loss}, {"aux_loss", loss.aux_loss},
                            {"lr", lr}, {"grad_norm", grad_norm}, {"tokens_per_sec", tps},
                            {"comm_fraction", comm_share}};
        if (eval_now) j["val_loss"] = val;
        metrics << j.dump() << "\n" << std::flush;
      }
      window_start = clock::now();
      window_tokens = 0;
      window_comm_start = world.seconds();
    }
    if (eval_now) result.final_val_loss = val;
    if (tracing && (done - start == 3 || (last && done - start < 3))) {
      // Rank 0 gathers every rank's slices and writes one trace; later iterations are not kept.
      std::vector<std::string> parts;
      for (int r = 0; r < R; ++r) {
        std::string json = r == rank ? trace.to_json() : std::string();
        world.broadcast_bytes(json, r);
        parts.push_back(std::move(json));
      }
      if (rank == 0) {
        write_file_atomically(o.trace_file, TraceRecorder::merge(parts));
        log("wrote a Chrome trace of " + std::to_string(std::min<int64_t>(done - start, 2)) + " iteration(s) to " +
            o.trace_file + " (open it in Perfetto or chrome://tracing)");
      }
    }
    if (tracing && done - start >= 3) trace.clear();
    const bool exit_now = !last && o.exit_interval > 0 && done % o.exit_interval == 0;
    if (!o.save.empty() && (last || exit_now || (o.save_interval > 0 && done % o.save_interval == 0))) {
      save_checkpoint(o.save, model, optimizer, TrainingProgress{done, o.seed}, &groups);
      log("saved checkpoint to " + o.save + " at iteration " + std::to_string(done));
    }
    if (exit_now) {
      log("exiting at iteration " + std::to_string(done) + " (--exit-interval " + std::to_string(o.exit_interval) + ")");
      result.iterations = done;
      result.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
      result.tokens_per_sec = static_cast<double>((done - start) * B * N * R) / std::max(result.seconds, 1e-9);
      return result;
    }
  }
  if (start == o.train_iters) result.final_val_loss = validation_loss();
  result.iterations = o.train_iters;
  result.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
  result.tokens_per_sec =
      result.seconds > 0 ? static_cast<double>((o.train_iters - start) * B * N * R) / result.seconds : 0.0;
  return result;
}

}  // namespace ampipe
