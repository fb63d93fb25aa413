#include "cli/bench.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cli/bench_cases.h"
#include "cli/command_util.h"
#include "cli/grid.h"
#include "cli/model_flags.h"
#include "cli/parallel_flags.h"
#include "comm/communicator.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/trace.h"
#include "kernels/gemm.h"
#include "pipeline/schedule.h"
#include "pipeline/task_list.h"
#include "plan/autotune.h"
#include "plan/calibrate.h"
#include "plan/cost_model.h"
#include "plan/profile.h"
#include "train/distributed.h"
#include "train/trainer.h"

namespace ampipe {

CLI::App* add_bench_command(CLI::App& app, BenchOptions& o) {
  o.threads = available_cores();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Time one step (forward + backward) of one transformer block, or of --num-layers blocks, over a grid of "
      "cases: every schedule, pipe degree, stage order and pipeline scope in one run; prints a table, optionally "
      "JSON Lines and a Chrome trace");
  add_grid_flags(*cmd, o.grid, "2 * the number of ranks");
  cmd->add_option("--moe-capacity-factor", o.capacity_factor, "Expert capacity factor; 0 = dropless")
      ->capture_default_str();
  cmd->add_option("--micro-batch-size", o.micro_batch_size, "Sequences per block call (B)")->capture_default_str();
  cmd->add_option("--schedule", o.schedules,
                  "Schedules (list of sequential, moe-pipe, ampipe, auto: the planner's choice of schedule, stage "
                  "order and pipeline scope for each shape and --num-layers)")
      ->capture_default_str();
  cmd->add_option(
      "--hardware", o.hardware,
      "Hardware profile (JSON path, or the name of one under profiles/) for the planner: `auto`, the "
      "predicted time of every case and the merge of paired micro-batches; default: with `auto` in "
      "--schedule or true in --overlap-moe-expert-parallel-comm, a quick calibration of this machine at "
      "start-up");
  cmd->add_option("--pipe-degree", o.pipe_degrees, "Pipe degrees P for moe-pipe and ampipe (list)")
      ->capture_default_str();
  cmd->add_option("--stage-order", o.stage_orders,
                  "Compute-stream stage orders for moe-pipe and ampipe (list of stage-major, interleaved)")
      ->capture_default_str();
  cmd->add_option("--chunk-boundaries", o.chunk_boundaries,
                  "Explicit ampipe chunk boundaries, e.g. 0,1024,3072,4096 (replace --pipe-degree for ampipe; the "
                  "last must equal every --seq-length)");
  cmd->add_option("--chunk-policy", o.chunk_policies,
                  "ampipe attention-side chunk policies (list of equal, balanced: chunks of equal length, or of equal "
                  "FLOPs with causal attention's growth counted)")
      ->capture_default_str();
  cmd->add_option("--moe-pipe-degree", o.moe_pipe_degrees,
                  "ampipe MoE-side pipe degrees (list): the all-to-all and experts in this many equal chunks behind a "
                  "token buffer; 0 = the attention chunks")
      ->capture_default_str();
  cmd->add_option("--num-layers", o.num_layers,
                  "Transformer blocks L per timed step (list): forward + backward of L blocks as one task list per "
                  "pass")
      ->capture_default_str();
  cmd->add_option("--pipeline-scope", o.pipeline_scopes,
                  "Pipeline scopes (list of block: each block drained before the next, model: chunks flow across "
                  "blocks as a wavefront); default block, and model too where L > 1; a case of one chunk "
                  "(sequential, P = 1) runs in block scope only");
  cmd->add_option(
         "--micro-batches", o.micro_batches,
         "Micro-batches M per timed step: each forward then its backward (F0 B0 F1 B1 ...), gradients "
         "accumulating")
      ->capture_default_str();
  cmd->add_option(
         "--overlap-moe-expert-parallel-comm", o.overlap_moe_expert_parallel_comm,
         "Pairing (list of false, true): true runs F0, then B(m) merged with F(m+1) as one task list on the "
         "two streams, then B(M-1) (needs --micro-batches >= 2); the merge orders the tasks by the cost "
         "model's seconds with the --hardware profile, else a quick calibration of this machine")
      ->capture_default_str();
  cmd->add_option("--delay-wgrad-compute", o.delay_wgrad_compute,
                  "Delayed expert weight gradients (list of false, true): true splits them from the experts' "
                  "backward into their own tasks; only in paired cases, so true needs true in "
                  "--overlap-moe-expert-parallel-comm")
      ->capture_default_str();
  cmd->add_option("--warmup", o.warmup, "Untimed repeats per case")->capture_default_str();
  cmd->add_option("--repeats", o.repeats, "Timed repeats per case (the median is reported)")->capture_default_str();
  cmd->add_option("--threads", o.threads, "Compute threads per rank")->capture_default_str();
  add_device_flags(*cmd, o.device, o.distributed_backend, "the blocks run");
  add_precision_flag(*cmd, o.bf16, "the blocks run");
  add_tensor_parallel_flags(*cmd, o.tensor_parallel, "the blocks run",
                            "Consecutive groups of T ranks read the same tokens (each its 1/T of them with "
                            "--sequence-parallel); every schedule runs the attention's collectives as "
                            "comm-stream tasks (their time is in comm_ms)");
  cmd->add_option("--expert-model-parallel-size", o.expert_parallel,
                  "Ranks that share the experts of each MoE layer (EP; each holds E/EP experts; Megatron-LM); "
                  "must divide the world size / ETP and --moe-num-experts. Default 0: the largest such divisor")
      ->capture_default_str();
  cmd->add_option("--link", o.link,
                  "Label of the link rate in the output; default $AMPIPE_LINK (set by scripts/netem.sh), else "
                  "'unshaped'");
  cmd->add_option("--json-out", o.json_out, "Write one JSON object per case to this file (JSON Lines; truncated)");
  cmd->add_option("--trace", o.trace, "Write a Chrome trace of every case's last repeat to this file");
  cmd->add_option("--seed", o.seed,
                  "Seed of the parameters and inputs (each data-parallel rank its own tokens; the ranks of a "
                  "tensor-parallel group the same)")
      ->check(unsigned_integer())
      ->capture_default_str();
  cmd->add_flag("--predict-only", o.predict_only,
                "With --hardware: print the planner's predicted time (and per-stage prices in --json-out) of "
                "every case, and time nothing; measured columns are empty");
  return cmd;
}

namespace {

// The flags' lists, parsed and checked: the grid's axes.
struct BenchGrid {
  std::vector<GridShape> shapes;
  std::vector<int64_t> layers;
  std::vector<ScheduleKind> kinds;  // sequential first: the others' speedups refer to it
  bool with_auto = false;
  std::vector<int64_t> degrees, moe_degrees, explicit_bounds;
  std::vector<ChunkPolicy> policies;
  std::vector<StageOrder> orders;
  std::vector<PipelineScope> scopes;  // empty: the default for each L
  // The step's (paired, delay_wgrad) settings: unpaired first, delayed only where paired.
  std::vector<std::pair<bool, bool>> steps;
};

void check_scalar_flags(const BenchOptions& o) {
  AMPIPE_CHECK(o.threads >= 1) << "--threads must be at least 1, got " << o.threads;
  AMPIPE_CHECK(o.repeats >= 1) << "--repeats must be at least 1, got " << o.repeats;
  AMPIPE_CHECK(o.warmup >= 0) << "--warmup must be >= 0, got " << o.warmup;
  AMPIPE_CHECK(o.micro_batch_size >= 1) << "--micro-batch-size must be at least 1, got " << o.micro_batch_size;
  AMPIPE_CHECK(o.micro_batches >= 1) << "--micro-batches must be at least 1, got " << o.micro_batches;
  AMPIPE_CHECK(o.capacity_factor >= 0 && std::isfinite(o.capacity_factor))
      << "--moe-capacity-factor must be >= 0 (0 = dropless), got " << o.capacity_factor;
  AMPIPE_CHECK(!o.predict_only || !o.hardware.empty())
      << "--predict-only prices the cases with a hardware profile: give --hardware PROFILE";
}

// The items of a list flag, each one of `allowed` (refused naming them), duplicates dropped.
template <typename T, typename Parse>
std::vector<T> parse_names(const char* flag, const std::string& text, const std::vector<std::string>& allowed,
                           const char* allowed_text, Parse parse) {
  std::vector<T> out;
  for (const std::string& name : split_list(text)) {
    AMPIPE_CHECK(std::find(allowed.begin(), allowed.end(), name) != allowed.end())
        << flag << " '" << text << "': '" << name << "' is not one of: " << allowed_text;
    const T value = parse(name);
    if (std::find(out.begin(), out.end(), value) == out.end()) out.push_back(value);
  }
  return out;
}

void parse_schedules(const BenchOptions& o, BenchGrid& g) {
  for (const std::string& name : split_list(o.schedules)) {
    AMPIPE_CHECK(name == "sequential" || name == "moe-pipe" || name == "moe_pipe" || name == "ampipe" ||
                 name == "auto")
        << "--schedule '" << o.schedules << "': '" << name << "' is not one of: sequential, moe-pipe, ampipe, auto";
    if (name == "auto") {
      g.with_auto = true;
      continue;
    }
    const ScheduleKind kind = parse_schedule(name);
    if (std::find(g.kinds.begin(), g.kinds.end(), kind) == g.kinds.end()) g.kinds.push_back(kind);
  }
  std::stable_partition(g.kinds.begin(), g.kinds.end(), [](ScheduleKind k) { return k == ScheduleKind::Sequential; });
}

bool parse_bool_word(const std::string& word) { return word == "true"; }

bool contains(const std::vector<bool>& values, bool value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

// --overlap-moe-expert-parallel-comm x --delay-wgrad-compute, with M: delayed weight gradients only
// where paired (Megatron's rule), and no flag value that no case would use.
void parse_step_axes(const BenchOptions& o, BenchGrid& g) {
  const char* pair_flag = "--overlap-moe-expert-parallel-comm";
  const std::vector<bool> pairing = parse_names<bool>(pair_flag, o.overlap_moe_expert_parallel_comm,
                                                      {"false", "true"}, "false, true", parse_bool_word);
  const std::vector<bool> delays = parse_names<bool>("--delay-wgrad-compute", o.delay_wgrad_compute,
                                                     {"false", "true"}, "false, true", parse_bool_word);
  AMPIPE_CHECK(!contains(pairing, true) || o.micro_batches >= 2)
      << pair_flag << " '" << o.overlap_moe_expert_parallel_comm
      << "': pairing merges one micro-batch's backward with the next one's forward, so it needs "
      << "--micro-batches 2 or more, got " << o.micro_batches;
  AMPIPE_CHECK(!contains(delays, true) || contains(pairing, true))
      << "--delay-wgrad-compute '" << o.delay_wgrad_compute << "': delayed weight gradients need paired "
      << "micro-batches (true in " << pair_flag << ", as in Megatron-LM), got " << pair_flag << " '"
      << o.overlap_moe_expert_parallel_comm << "'";
  for (bool paired : {false, true})
    for (bool delay : {false, true})
      if (contains(pairing, paired) && contains(delays, delay) && (paired || !delay))
        g.steps.emplace_back(paired, delay);
}

BenchGrid parse_grid(const BenchOptions& o, int64_t world_size) {
  BenchGrid g;
  g.shapes = expand_grid(o.grid, 2 * world_size, o.capacity_factor);
  g.layers = parse_int_list("--num-layers", o.num_layers, 1);
  g.degrees = parse_int_list("--pipe-degree", o.pipe_degrees, 1);
  g.moe_degrees = parse_int_list("--moe-pipe-degree", o.moe_pipe_degrees, 0);
  g.policies = parse_names<ChunkPolicy>("--chunk-policy", o.chunk_policies, {"equal", "balanced"}, "equal, balanced",
                                        parse_chunk_policy);
  parse_schedules(o, g);
  parse_step_axes(o, g);
  g.orders = parse_names<StageOrder>("--stage-order", o.stage_orders, {"stage-major", "stage_major", "interleaved"},
                                     "stage-major, interleaved", parse_stage_order);
  if (!o.pipeline_scopes.empty())
    g.scopes = parse_names<PipelineScope>("--pipeline-scope", o.pipeline_scopes, {"block", "model"}, "block, model",
                                          parse_pipeline_scope);
  if (!o.chunk_boundaries.empty()) {
    g.explicit_bounds = parse_chunk_boundaries(o.chunk_boundaries);
    BlockSchedule s;
    s.kind = ScheduleKind::AmPipe;
    s.chunk_boundaries = g.explicit_bounds;
    s.validate();
    for (const GridShape& shape : g.shapes)
      AMPIPE_CHECK(g.explicit_bounds.back() == shape.N)
          << "--chunk-boundaries " << o.chunk_boundaries << " must end at every --seq-length, but one is " << shape.N;
  }
  return g;
}

// The schedule axes without the scope: sequential, moe-pipe P x order, ampipe P (or explicit
// boundaries) x chunk policy x MoE-side pipe degree x order; `auto` last (filled per shape and L).
std::vector<BenchVariant> schedule_variants(const BenchGrid& g) {
  std::vector<BenchVariant> out;
  auto add = [&](const BlockSchedule& s, StageOrder order) { out.push_back({s, order, PipelineScope::Block, false, ""}); };
  for (ScheduleKind kind : g.kinds) {
    BlockSchedule base;
    base.kind = kind;
    if (kind == ScheduleKind::Sequential) {
      add(base, StageOrder::StageMajor);
    } else if (kind == ScheduleKind::MoePipe) {
      for (int64_t P : g.degrees)
        for (StageOrder order : g.orders) {
          base.pipe_degree = P;
          add(base, order);
          if (P == 1) break;  // one chunk: every stage order is the same sequence
        }
    } else {
      for (int64_t moe_p : g.moe_degrees) {
        base.moe_pipe_degree = moe_p;
        if (!g.explicit_bounds.empty()) {
          base.chunk_boundaries = g.explicit_bounds;
          for (StageOrder order : g.orders) add(base, order);
          continue;
        }
        for (int64_t P : g.degrees)
          for (ChunkPolicy policy : g.policies) {
            if (P == 1 && policy != g.policies.front()) continue;  // one chunk: every policy is the same
            base.pipe_degree = P;
            base.chunk_policy = policy;
            for (StageOrder order : g.orders) {
              add(base, order);
              if (P == 1 && moe_p <= 1) break;
            }
          }
      }
    }
  }
  if (g.with_auto) out.push_back({BlockSchedule{}, StageOrder::StageMajor, PipelineScope::Block, true, ""});
  return out;
}

std::string variant_label(const BenchVariant& v) {
  if (v.schedule.kind == ScheduleKind::Sequential) return v.schedule.describe();
  return v.schedule.describe() + " " + stage_order_name(v.order);
}

// The scopes of the grid for L blocks: --pipeline-scope, else block, and model too where L > 1.
std::vector<PipelineScope> scopes_for(const BenchGrid& g, int64_t L) {
  if (!g.scopes.empty()) return g.scopes;
  if (L > 1) return {PipelineScope::Block, PipelineScope::Model};
  return {PipelineScope::Block};
}

// The variants of one shape with L blocks: each schedule variant concrete (balanced chunks with
// their weight) in each scope, one chunk on both sides (sequential, P = 1) in block scope only;
// `auto` once, the planner's choice of schedule, order and scope for a pass of L blocks.
BenchJob make_job(const BenchGrid& g, const std::vector<BenchVariant>& schedules, const GridShape& shape, int64_t L,
                  const std::optional<PlanCandidate>& planned, double capacity_factor) {
  BenchJob job{shape, L, {}};
  const ModelConfig c = shape.config(capacity_factor);
  for (BenchVariant v : schedules) {
    if (v.planned) {
      v.schedule = planned->schedule;
      v.order = planned->order;
      v.scope = planned->scope;
      v.label = "auto: " + planned->describe();
      job.variants.push_back(v);
      continue;
    }
    if (v.schedule.chunk_policy == ChunkPolicy::Balanced)
      v.schedule.balance_weight = balance_weight(c, v.schedule.moe_pipe_degree == 0);
    v.label = variant_label(v);
    const ChunkPlan plan = v.schedule.plan(shape.N);
    if (plan.attention.size() == 2 && plan.moe.size() == 2) {  // one chunk: the scopes run the same
      v.scope = PipelineScope::Block;
      job.variants.push_back(v);
      continue;
    }
    for (PipelineScope scope : scopes_for(g, L)) {
      v.scope = scope;
      job.variants.push_back(v);
    }
  }
  return job;
}

// Each variant in each of the grid's step settings (pairing, delayed weight gradients), the
// settings innermost so that a paired case follows its unpaired twin.
void cross_step_settings(const BenchGrid& g, BenchJob& job) {
  std::vector<BenchVariant> crossed;
  for (BenchVariant v : job.variants)
    for (const auto& [paired, delay] : g.steps) {
      v.paired = paired;
      v.delay_wgrad = delay;
      crossed.push_back(v);
    }
  job.variants = std::move(crossed);
}

// The profile for `auto`, the predictions and the merge of paired micro-batches: --hardware, else
// with `auto` or a paired case a quick calibration (the same profile on every rank).
std::optional<HardwareProfile> planner_profile(const BenchOptions& o, const BenchGrid& g, const std::string& link,
                                               Communicator& world) {
  if (!o.hardware.empty()) return load_hardware_profile(o.hardware);
  const bool paired = std::any_of(g.steps.begin(), g.steps.end(), [](const auto& s) { return s.first; });
  if (!g.with_auto && !paired) return std::nullopt;
  CalibrateOptions co;
  co.quick = true;
  co.threads = o.threads;
  co.hidden_sizes = parse_int_list("--hidden-size", o.grid.hidden_size, 1);
  co.link = link;
  HardwareProfile hw = calibrate(world, co);
  kernels::set_kernel_threads(o.threads);
  return hw;
}

// Every job of the grid: shapes outermost, then L.
std::vector<BenchJob> make_jobs(const BenchRun& run, const BenchGrid& g, const std::vector<BenchVariant>& schedules) {
  const BenchOptions& o = run.options;
  std::vector<BenchJob> jobs;
  for (const GridShape& s : g.shapes)
    for (int64_t L : g.layers) {
      std::optional<PlanCandidate> planned;
      if (g.with_auto) {
        const BlockShape bshape{s.config(o.capacity_factor), o.micro_batch_size, s.N,
                                default_expert_parallel_size(run.world.size(), s.E)};
        AutotuneOptions options;
        options.num_layers = L;
        options.scopes = scopes_for(g, L);
        planned = choose_plan(bshape, *run.hw, options);
      }
      jobs.push_back(make_job(g, schedules, s, L, planned, o.capacity_factor));
      cross_step_settings(g, jobs.back());
    }
  return jobs;
}

// What runs the block's GEMMs: cuBLAS, OpenBLAS, or for bf16 on the CPU oneDNN's pick (or the
// widened OpenBLAS fallback where oneDNN has no bf16 matmul: kernels/cpu/gemm_bf16.h).
std::string gemm_implementation(Device device, bool bf16) {
  if (device == Device::CUDA) return bf16 ? "cublasGemmEx (bf16 inputs, float32 compute)" : "cublasSgemm";
  if (!bf16) return "OpenBLAS sgemm";
  const std::string impl = kernels::cpu_bf16_gemm_implementation();
  return impl.rfind("openblas", 0) == 0 ? impl + " (no oneDNN bf16 matmul on this CPU)" : "oneDNN " + impl;
}

void print_preamble(const BenchRun& run) {
  const BenchOptions& o = run.options;
  char buf[512];
  std::snprintf(
      buf, sizeof buf,
      "ampipe bench: %d rank(s), %d threads per rank, link %s, B=%lld, M=%lld micro-batch(es) per step, "
      "%lld warm-up + %lld repeats",
      run.world.size(), o.threads, run.link.c_str(), static_cast<long long>(o.micro_batch_size),
      static_cast<long long>(o.micro_batches), static_cast<long long>(o.warmup),
      static_cast<long long>(o.repeats));
  run.line(std::string(buf) + (run.device == Device::CUDA ? ", device cuda" : ""));
  if (o.tensor_parallel.tensor > 1)
    run.line("tensor-parallel size " + std::to_string(o.tensor_parallel.tensor) +
             " (--tensor-model-parallel-size): " +
             "the attention's all-reduces are comm-stream tasks, in comm and the bound");
  run.line(std::string("precision: ") + (o.bf16 ? "bf16 (--bf16)" : "float32") + ", GEMMs by " +
           run.gemm_implementation);
  if (run.hw) run.line("planner profile: " + run.hw->name);
  if (run.show_paired) run.line("paired micro-batches merged by the cost model with profile " + run.hw->name);
  print_bench_table_header(run);
}

// Rank 0 gathers every rank's trace (each rank in turn broadcasts its own) and writes it.
void write_bench_trace(BenchRun& run) {
  const std::string mine = run.trace.to_json();
  std::vector<std::string> traces;
  for (int r = 0; r < run.world.size(); ++r) {
    std::string bytes = r == run.world.rank() ? mine : std::string();
    run.world.broadcast_bytes(bytes, r);
    if (run.world.rank() == 0) traces.push_back(std::move(bytes));
  }
  if (run.world.rank() != 0) return;
  write_file_atomically(run.options.trace, TraceRecorder::merge(traces));
  std::fprintf(stderr, "bench: trace written to %s\n", run.options.trace.c_str());
}

}  // namespace

int run_bench(const BenchOptions& o, Communicator& world_in) {
  check_tensor_parallel_flags(o.tensor_parallel, world_in, "bench", /*runs_tensor_parallel=*/true);
  check_scalar_flags(o);
  const Device device = parse_device(o.device);
  std::unique_ptr<Communicator> staged;
  Communicator& world = device_world(world_in, device, o.distributed_backend, staged);
  kernels::set_kernel_threads(o.threads);
  if (world.rank() == 0 && !o.json_out.empty()) prepare_output_file("--json-out", o.json_out);
  if (world.rank() == 0 && !o.trace.empty()) prepare_output_file("--trace", o.trace);
  const BenchGrid grid = parse_grid(o, world.size());
  const std::vector<BenchVariant> schedules = schedule_variants(grid);
  // Collective check that every rank runs the same grid (else the collectives would not match).
  check_same_configuration(
      world, "grid=" + std::to_string(grid.shapes.size()) + "x" + std::to_string(grid.layers.size()) + "x" +
                 std::to_string(schedules.size()) + "\nscopes=" + o.pipeline_scopes +
                 "\nrepeats=" + std::to_string(o.warmup) + "+" + std::to_string(o.repeats) +
                 "\nbf16=" + (o.bf16 ? "1" : "0") + "\nmicro-batches=" + std::to_string(o.micro_batches) +
                 "\npaired=" + o.overlap_moe_expert_parallel_comm + "\ndelay-wgrad=" + o.delay_wgrad_compute);
  BenchRun run(o, world);
  run.device = device;
  run.gemm_implementation = gemm_implementation(device, o.bf16);
  run.link = o.link;
  if (run.link.empty()) {
    const char* env = std::getenv("AMPIPE_LINK");
    run.link = env && *env ? env : "unshaped";
  }
  if (world.rank() == 0 && !o.json_out.empty()) {
    run.json.open(o.json_out, std::ios::out | std::ios::trunc);
    AMPIPE_CHECK(run.json.good()) << "--json-out: cannot open '" << o.json_out << "' for writing";
  }
  run.hw = planner_profile(o, grid, run.link, world);
  const std::vector<BenchJob> jobs = make_jobs(run, grid, schedules);
  bool scopes[2] = {false, false};
  for (const BenchJob& job : jobs) {
    run.total_cases += job.variants.size();
    run.show_layers = run.show_layers || job.num_layers != 1;
    for (const BenchVariant& v : job.variants) {
      scopes[static_cast<int>(v.scope)] = true;
      run.show_paired = run.show_paired || v.paired;
      run.show_delay = run.show_delay || v.delay_wgrad;
    }
  }
  run.show_scope = scopes[0] && scopes[1];
  run.show_micro_batches = o.micro_batches != 1;

  run.trace.declare_track(world.rank(), "case");
  run.trace.declare_track(world.rank(), "compute");
  run.trace.declare_track(world.rank(), "comm");
  world.barrier();
  run.trace.mark_origin();
  print_preamble(run);
  for (const BenchJob& job : jobs) run_bench_job(run, job);
  if (!o.trace.empty()) write_bench_trace(run);
  return 0;
}

}  // namespace ampipe
