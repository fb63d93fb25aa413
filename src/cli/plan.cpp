#include "cli/plan.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <tuple>

#include "comm/communicator.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/trace.h"
#include "plan/autotune.h"
#include "plan/calibrate.h"

namespace ampipe {

namespace fs = std::filesystem;

CLI::App* add_plan_command(CLI::App& app, PlanOptions& o) {
  CLI::App* cmd = app.add_subcommand(
      "plan",
      "Predict the block time of every schedule and pipe degree on a hardware profile and pick the best "
      "(or, with --calibrate, measure this machine and write its profile)");
  add_grid_flags(*cmd, o.grid, "2 * the largest --ranks");
  cmd->add_option("--hardware", o.hardware,
                  "Hardware profile: a JSON path, or the name of one shipped under profiles/ (e.g. "
                  "h100-8gpu-400gbit); see src/plan/profile.h for the fields");
  cmd->add_option("--ranks", o.ranks, "Expert-parallel group sizes R (list); E must be divisible by R")
      ->capture_default_str();
  cmd->add_option("--micro-batch-size", o.micro_batch_size, "Sequences per block call (B)")->capture_default_str();
  cmd->add_option("--pipe-degree", o.pipe_degrees, "Pipe degrees P the planner considers (list)")
      ->capture_default_str();
  cmd->add_option("--min-gain", o.min_gain,
                  "Choose a pipelined schedule only when it is predicted faster than sequential by more than this "
                  "fraction")
      ->capture_default_str();
  cmd->add_option("--min-chunk", o.min_chunk_positions, "Fewest positions per chunk the planner considers")
      ->capture_default_str();
  cmd->add_option("--num-layers", o.num_layers,
                  "Transformer blocks L of the pass every candidate is priced over (times are for the whole "
                  "forward + backward pass). With L > 1 every pipelined candidate is priced in both pipeline "
                  "scopes: block (the blocks one after the other) and model (chunks flow across the blocks; "
                  "\"model-scope\" in the variant)")
      ->capture_default_str();
  cmd->add_flag("--overlap-grad-reduce", o.overlap_grad_reduce,
                "Price one gradient all-reduce per block in the backward, overlapped with the blocks below "
                "it (the dense gradients summed over the R ranks of --ranks, the data-parallel size here)");
  cmd->add_flag(
      "--use-distributed-optimizer", o.use_distributed_optimizer,
      "With --overlap-grad-reduce: price the gradient reduction as the distributed optimizer's "
      "reduce-scatter (half an all-reduce's bytes); the parameters' all-gather comes after the step "
      "unless --overlap-param-gather");
  cmd->add_flag("--overlap-param-gather", o.overlap_param_gather,
                "With --use-distributed-optimizer: price each block's parameter all-gather as a task of the "
                "forward's communication stream (train --overlap-param-gather)");
  cmd->add_option(
         "--micro-batches", o.micro_batches,
         "Also price a training step of this many micro-batches (the pass above each), one after the "
         "other and paired (train --overlap-moe-expert-parallel-comm: each backward beside the next "
         "forward), with the step bound, and say which train's =auto would take; with --trace, the "
         "chosen step's timeline")
      ->capture_default_str();
  cmd->add_flag(
      "--delay-wgrad-compute", o.delay_wgrad_compute,
      "With --micro-batches 2 or more: price the step with the experts' weight gradients split from their "
      "backward (train --delay-wgrad-compute)");
  cmd->add_flag("--bf16", o.bf16,
                "Price the --bf16 model: its all-to-alls at 2 bytes an element, its GEMMs at the profile's "
                "matrix_flops_bf16 (at matrix_flops where the profile has none; the header says which)");
  cmd->add_option(
         "--tensor-model-parallel-size", o.tensor_model_parallel_size,
         "Tensor-parallel size T (Megatron-LM): price attention with its heads and query groups split over "
         "T ranks of one node (T must divide both, and the profile's ranks_per_node), its all-reduces "
         "on the profile's tensor_link; --ranks stays the expert-parallel (and data-parallel) size, so the "
         "world is T x R")
      ->capture_default_str();
  cmd->add_flag(
      "--sequence-parallel", o.sequence_parallel,
      "With --tensor-model-parallel-size > 1: price sequence parallelism (norms, residuals, router and "
      "the MoE side on 1/T of the rows; all-gather + reduce-scatter instead of all-reduce); ignored "
      "at T = 1, as Megatron-LM does");
  cmd->add_option(
         "--expert-tensor-parallel-size", o.expert_tensor_parallel_size,
         "Expert tensor-parallel size ETP (Megatron-Core's MoE folding): each expert's FFN split over "
         "ETP ranks (ETP must divide --ffn-hidden-size; without --sequence-parallel also T), its "
         "collectives around every MoE chunk's experts")
      ->capture_default_str();
  cmd->add_flag("--summary", o.summary, "One line per shape (sequential, best moe-pipe, best ampipe, choice)");
  cmd->add_option("--json-out", o.json_out, "Write one JSON object per shape to this file (JSON Lines)");
  cmd->add_option("--trace", o.trace, "Write the predicted timeline of the first shape's choice (Chrome trace)");
  cmd->add_flag("--calibrate", o.calibrate,
                "Measure this machine with the real kernels, streams and all-to-all (run under mpirun for the "
                "link, under scripts/netem.sh for a shaped one) and write the profile to --out");
  cmd->add_flag("--quick", o.quick, "With --calibrate: the short start-up measurement (~2 s) instead of the full one");
  cmd->add_option("--out", o.out, "With --calibrate: the profile file to write (atomically)");
  cmd->add_option("--name", o.name, "With --calibrate: the profile's name")->capture_default_str();
  cmd->add_option("--threads", o.threads, "With --calibrate: compute threads per rank")->capture_default_str();
  return cmd;
}

namespace {

int run_calibrate(const PlanOptions& o, Communicator& world) {
  AMPIPE_CHECK(!o.out.empty()) << "--calibrate needs --out FILE (where to write the profile)";
  AMPIPE_CHECK(o.threads >= 1) << "--threads must be at least 1, got " << o.threads;
  if (world.rank() == 0) prepare_output_file("--out", o.out);  // before the minutes of measuring
  CalibrateOptions co;
  co.name = o.name;
  co.threads = o.threads;
  co.quick = o.quick;
  co.hidden_sizes = parse_int_list("--hidden-size", o.grid.hidden_size, 1);
  co.log = world.rank() == 0 ? &std::cerr : nullptr;
  const HardwareProfile hw = calibrate(world, co);
  if (world.rank() == 0) {
    save_profile(hw, o.out);
    std::printf("%s\nampipe plan: profile written to %s\n", profile_to_json(hw).c_str(), o.out.c_str());
  }
  return 0;
}

// One shape's candidates as `ampipe plan` reports them. Holds pointers into its own list: not copied.
class ShapeReport {
 public:
  ShapeReport(std::vector<PlanCandidate> candidates, const AutotuneOptions& ao)
      : all(std::move(candidates)), choice(choose_plan(this->all, ao.min_gain, ao.near_tie)) {
    for (const PlanCandidate& c : this->all) {
      const auto key = std::make_tuple(static_cast<int>(c.schedule.kind), c.schedule.pipe_degree,
                                       static_cast<int>(c.scope));
      keep_faster(best[key], c);
      if (c.schedule.kind == ScheduleKind::Sequential) seq = &c;
      if (c.schedule.kind == ScheduleKind::MoePipe) keep_faster(best_moe, c);
      if (c.schedule.kind == ScheduleKind::AmPipe) keep_faster(best_am, c);
      keep_faster(c.scope == PipelineScope::Model ? best_model : best_block, c);
    }
  }
  ShapeReport(const ShapeReport&) = delete;
  ShapeReport& operator=(const ShapeReport&) = delete;

  const std::vector<PlanCandidate> all;
  const PlanCandidate choice;
  // The best candidate per (schedule, P, scope), in that order.
  std::map<std::tuple<int, int64_t, int>, const PlanCandidate*> best;
  const PlanCandidate* seq = nullptr;
  const PlanCandidate* best_moe = nullptr;
  const PlanCandidate* best_am = nullptr;
  const PlanCandidate* best_block = nullptr;  // the best of each scope (sequential is block scope)
  const PlanCandidate* best_model = nullptr;

  double choice_ms() const { return choice.prediction.total * 1e3; }
  double seq_ms() const { return seq->prediction.total * 1e3; }
  double vs_moe() const { return best_moe ? best_moe->prediction.total / choice.prediction.total : NAN; }

 private:
  static void keep_faster(const PlanCandidate*& slot, const PlanCandidate& c) {
    if (!slot || c.prediction.total < slot->prediction.total) slot = &c;
  }
};

nlohmann::json ms_or_null(const PlanCandidate* c) {
  return c ? nlohmann::json(c->prediction.total * 1e3) : nlohmann::json(nullptr);
}

void print_summary_line(const GridShape& s, int64_t R, const ShapeReport& r) {
  auto cell = [](const PlanCandidate* c) {
    return c ? format_number("%.3f", c->prediction.total * 1e3) + " (" +
                   std::to_string(c->schedule.pipe_degree) + ")"
             : std::string("-");
  };
  const double am = r.best_am ? r.best_am->prediction.total : NAN;
  std::printf("%6lld %5lld %4lld %2lld %4lld %11.3f %18s %18s %8.2fx %8.2fx  %s (%.2fx)\n", (long long)s.N,
              (long long)s.d, (long long)s.E, (long long)s.k, (long long)R, r.seq_ms(),
              cell(r.best_moe).c_str(), cell(r.best_am).c_str(), r.seq->prediction.total / am,
              r.best_moe ? r.best_moe->prediction.total / am : NAN, r.choice.describe().c_str(),
              r.seq_ms() / r.choice_ms());
}

void print_table(const GridShape& s, int64_t B, int64_t R, const PassShape& pass, const ShapeReport& r) {
  std::printf("\n%s, B=%lld, R=%lld ranks", s.describe().c_str(), (long long)B, (long long)R);
  if (pass.num_layers > 1) std::printf(", a pass of %lld blocks", (long long)pass.num_layers);
  if (pass.reduce_gradients) std::printf(", gradients reduced per block");
  if (pass.gather_params) std::printf(", parameters gathered per block");
  std::printf("\n");
  int width = 46;  // the variant column: as wide as its longest entry
  for (const auto& [key, c] : r.best) width = std::max(width, static_cast<int>(c->describe().size()));
  std::printf("  %-10s %3s %-*s %10s %8s %11s %9s\n", "schedule", "P", width, "best variant", "pred ms",
              "speedup", "compute ms", "comm ms");
  for (const auto& [key, c] : r.best)
    std::printf("  %-10s %3lld %-*s %10.3f %7.2fx %11.3f %9.3f\n", schedule_name(c->schedule.kind),
                (long long)std::get<1>(key), width, c->describe().c_str(), c->prediction.total * 1e3,
                r.seq->prediction.total / c->prediction.total, c->prediction.compute_busy * 1e3,
                c->prediction.comm_busy * 1e3);
  std::printf("  choice: %s: %.3f ms, %.2fx over sequential%s\n", r.choice.describe().c_str(), r.choice_ms(),
              r.seq_ms() / r.choice_ms(),
              r.best_moe ? (", " + format_number("%.2f", r.vs_moe()) + "x over the best moe-pipe (" +
                            r.best_moe->describe() + ")")
                               .c_str()
                         : "");
  if (pass.num_layers > 1)
    std::printf("  pipeline scope: %s (best block scope %s ms, best model scope %s ms)\n",
                pipeline_scope_name(r.choice.scope),
                r.best_block ? format_number("%.3f", r.best_block->prediction.total * 1e3).c_str() : "-",
                r.best_model ? format_number("%.3f", r.best_model->prediction.total * 1e3).c_str() : "-");
}

nlohmann::json json_row(const GridShape& s, int64_t B, int64_t R, const PassShape& pass,
                        const std::string& profile, const ShapeReport& r, bool shape_bf16) {
  nlohmann::json per_schedule = nlohmann::json::array();
  for (const auto& [key, c] : r.best)
    per_schedule.push_back({{"schedule", schedule_name(c->schedule.kind)},
                            {"pipe_degree", std::get<1>(key)},
                            {"pipeline_scope", pipeline_scope_name(c->scope)},
                            {"variant", c->describe()},
                            {"predicted_ms", c->prediction.total * 1e3}});
  return {{"profile", profile},
          {"seq_length", s.N},
          {"hidden_size", s.d},
          {"heads", s.heads},
          {"ffn_hidden_size", s.ffn},
          {"num_experts", s.E},
          {"top_k", s.k},
          {"ranks", R},
          {"batch", B},
          {"family", s.parts.family},
          {"num_query_groups", s.config(0.0).kv_heads()},
          {"swiglu", s.parts.swiglu},
          {"num_layers", pass.num_layers},
          {"overlap_grad_reduce", pass.reduce_gradients},
          {"overlap_param_gather", pass.gather_params},
          {"bf16", shape_bf16},
          {"sequential_ms", r.seq_ms()},
          {"choice", r.choice.describe()},
          {"pipeline_scope", pipeline_scope_name(r.choice.scope)},
          {"choice_ms", r.choice_ms()},
          {"speedup_vs_sequential", r.seq_ms() / r.choice_ms()},
          {"speedup_vs_moe_pipe", r.best_moe ? nlohmann::json(r.vs_moe()) : nlohmann::json(nullptr)},
          {"best_ampipe_ms", ms_or_null(r.best_am)},
          {"best_block_scope_ms", ms_or_null(r.best_block)},
          {"best_model_scope_ms", ms_or_null(r.best_model)},
          {"schedules", per_schedule}};
}

nlohmann::json tensor_parallel_json(const BlockShape& shape, const PassPrediction& choice) {
  return {{"tensor_model_parallel_size", shape.tensor_parallel},
          {"sequence_parallel", shape.sequence_split()},
          {"expert_tensor_parallel_size", shape.expert_tensor_parallel},
          {"tp_collectives_ms", choice.tensor_parallel_seconds * 1e3},
          {"tp_collectives_share", choice.tensor_parallel_seconds / choice.total}};
}

void print_step(const PlanOptions& o, const PairingPrediction& r) {
  std::printf(
      "  step of %lld micro-batches%s: unpaired %.3f ms (%.2f of its bound), paired %.3f ms (%.2f of its "
      "bound), %.2fx; bound %.3f ms; pairing: %s\n",
      (long long)o.micro_batches, o.delay_wgrad_compute ? ", weight gradients delayed" : "",
      r.unpaired.total * 1e3, r.unpaired.step_bound / r.unpaired.total, r.paired.total * 1e3,
      r.paired.step_bound / r.paired.total, r.unpaired.total / r.paired.total, r.unpaired.step_bound * 1e3,
      r.pair ? "paired" : "unpaired");
}

nlohmann::json step_json(const PlanOptions& o, const PairingPrediction& r) {
  return {{"micro_batches", o.micro_batches},
          {"delay_wgrad_compute", o.delay_wgrad_compute},
          {"step_unpaired_ms", r.unpaired.total * 1e3},
          {"step_paired_ms", r.paired.total * 1e3},
          {"step_bound_ms", r.unpaired.step_bound * 1e3},
          {"paired_step_bound_ms", r.paired.step_bound * 1e3},
          {"pairing", r.pair ? "paired" : "unpaired"}};
}

// The planner's shape of one grid shape and expert-parallel size R, its layout checked against the
// profile (cost_model.h, check_layout).
BlockShape plan_shape(const PlanOptions& o, const GridShape& s, int64_t R, const HardwareProfile& hw) {
  AMPIPE_CHECK(s.E % R == 0) << "--moe-num-experts " << s.E << " is not divisible by --ranks " << R;
  // data_ranks 0: the dense gradients are all-reduced over the R ranks (GradReduce only).
  ModelConfig config = s.config(0.0);
  config.bf16 = o.bf16;
  BlockShape shape{config, o.micro_batch_size, s.N, R};
  shape.sharded_optimizer = o.use_distributed_optimizer;
  shape.tensor_parallel = o.tensor_model_parallel_size;
  shape.sequence_parallel = o.sequence_parallel && o.tensor_model_parallel_size > 1;
  shape.expert_tensor_parallel = o.expert_tensor_parallel_size;
  check_layout(shape, hw);
  return shape;
}

void print_tensor_parallel(const PlanOptions& o, const HardwareProfile& hw) {
  if (o.tensor_model_parallel_size == 1 && o.expert_tensor_parallel_size == 1) return;
  const LinkProfile& link = hw.tensor_parallel_link();
  std::printf("tensor parallelism: T=%lld%s, ETP=%lld; TP collectives on %s (%.1f GB/s, %.1f us a call)\n",
              (long long)o.tensor_model_parallel_size,
              o.sequence_parallel && o.tensor_model_parallel_size > 1 ? ", sequence parallel" : "",
              (long long)o.expert_tensor_parallel_size,
              hw.tensor_link.bandwidth > 0 ? "the profile's tensor_link" : "intra_node (no tensor_link)",
              link.bandwidth / 1e9, link.latency * 1e6);
}

AutotuneOptions autotune_options(const PlanOptions& o) {
  AMPIPE_CHECK(o.micro_batches >= 1) << "--micro-batches must be at least 1, got " << o.micro_batches;
  AMPIPE_CHECK(!o.delay_wgrad_compute || o.micro_batches >= 2)
      << "--delay-wgrad-compute prices the weight gradients of a paired step; it needs --micro-batches 2 or "
         "more";
  AutotuneOptions ao;
  ao.pipe_degrees = parse_int_list("--pipe-degree", o.pipe_degrees, 1);
  ao.min_gain = o.min_gain;
  ao.min_chunk_positions = o.min_chunk_positions;
  ao.num_layers = o.num_layers;
  ao.reduce_gradients = o.overlap_grad_reduce;
  AMPIPE_CHECK(!o.use_distributed_optimizer || o.overlap_grad_reduce)
      << "--use-distributed-optimizer prices the gradient reduction of --overlap-grad-reduce as a "
         "reduce-scatter; "
         "it needs --overlap-grad-reduce";
  AMPIPE_CHECK(!o.overlap_param_gather || o.use_distributed_optimizer)
      << "--overlap-param-gather prices the distributed optimizer's all-gather; it needs "
         "--use-distributed-optimizer";
  ao.gather_params = o.overlap_param_gather;
  ao.validate();
  return ao;
}

}  // namespace

int run_plan(const PlanOptions& o, Communicator& world) {
  if (o.calibrate) return run_calibrate(o, world);
  AMPIPE_CHECK(!o.hardware.empty()) << "ampipe plan needs --hardware PROFILE (or --calibrate to make one)";
  if (world.rank() == 0 && !o.json_out.empty()) prepare_output_file("--json-out", o.json_out);
  if (world.rank() == 0 && !o.trace.empty()) prepare_output_file("--trace", o.trace);
  AMPIPE_CHECK(o.micro_batch_size >= 1) << "--micro-batch-size must be at least 1, got " << o.micro_batch_size;
  AMPIPE_CHECK(o.num_layers >= 1) << "--num-layers must be at least 1, got " << o.num_layers;
  const HardwareProfile hw = load_hardware_profile(o.hardware);
  const std::vector<int64_t> ranks = parse_int_list("--ranks", o.ranks, 1);
  const AutotuneOptions ao = autotune_options(o);
  int64_t max_ranks = 1;
  for (int64_t r : ranks) max_ranks = std::max(max_ranks, r);
  const std::vector<GridShape> shapes = expand_grid(o.grid, 2 * max_ranks, 0.0);
  for (const GridShape& s : shapes)  // every layout refused before any work
    for (int64_t R : ranks) plan_shape(o, s, R, hw);
  if (world.rank() != 0) return 0;  // the prediction needs no other rank

  std::ofstream json;
  if (!o.json_out.empty()) {
    json.open(o.json_out, std::ios::out | std::ios::trunc);
    AMPIPE_CHECK(json.good()) << "--json-out: cannot open '" << o.json_out << "' for writing";
  }
  std::printf("ampipe plan: profile %s, %s collectives%s (its figures and their sources: the profile file)\n",
              hw.name.c_str(), hw.collectives.c_str(), hw.host_staging_bandwidth > 0 ? " staged through host memory" : "");
  if (o.bf16)
    std::printf("precision: bf16 (all-to-alls at 2 bytes an element; GEMMs at %s)\n",
                hw.matrix_flops_bf16 > 0 ? "the profile's matrix_flops_bf16"
                                         : "matrix_flops: the profile has no matrix_flops_bf16");
  print_tensor_parallel(o, hw);
  if (o.summary)
    std::printf("%6s %5s %4s %2s %4s %11s %18s %18s %9s %9s  %s\n", "N", "d", "E", "k", "R", "seq ms",
                "moe-pipe ms (P)", "ampipe ms (P)", "am/seq", "am/moe", "choice (speedup over sequential)");
  bool traced = false;
  for (const GridShape& s : shapes)
    for (int64_t R : ranks) {
      const BlockShape shape = plan_shape(o, s, R, hw);
      const ShapeReport r(evaluate_candidates(shape, hw, ao), ao);
      const PassShape chosen{ao.num_layers, r.choice.scope, ao.reduce_gradients, ao.gather_params,
                             o.delay_wgrad_compute};
      std::optional<PairingPrediction> step;  // --micro-batches: the chosen schedule's step
      if (o.micro_batches > 1)
        step = predict_pairing(r.choice.schedule, r.choice.order, shape, hw, chosen, o.micro_batches);
      if (o.summary) {
        print_summary_line(s, R, r);
      } else {
        print_table(s, o.micro_batch_size, R, chosen, r);
        if (shape.tensor_parallel > 1 || shape.expert_tensor_parallel > 1)
          std::printf(
              "  TP collectives of the choice: %.3f ms of comm-stream work, %.1f%% of its predicted time\n",
              r.choice.prediction.tensor_parallel_seconds * 1e3,
              100 * r.choice.prediction.tensor_parallel_seconds / r.choice.prediction.total);
        if (step) print_step(o, *step);
      }
      if (json.is_open()) {
        nlohmann::json row = json_row(s, o.micro_batch_size, R, chosen, hw.name, r, o.bf16);
        row.update(tensor_parallel_json(shape, r.choice.prediction));
        if (step) row.update(step_json(o, *step));
        json << row.dump() << "\n";
        AMPIPE_CHECK(json.good()) << "--json-out: writing '" << o.json_out << "' failed";
      }
      if (!o.trace.empty() && !traced) {
        TraceRecorder trace;
        if (step)
          predict_step(r.choice.schedule, r.choice.order, shape, hw, chosen, o.micro_batches, step->pair,
                       &trace);
        else
          predict_pass(r.choice.schedule, r.choice.order, shape, hw, chosen, &trace, 0, 0);
        write_file_atomically(o.trace, trace.to_json());
        traced = true;
      }
    }
  return 0;
}

}  // namespace ampipe
