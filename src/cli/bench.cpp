#include "cli/bench.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/communicator.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/random.h"
#include "core/trace.h"
#include "kernels/gemm.h"
#include "model/block.h"
#include "pipeline/schedule.h"
#include "pipeline/streamed_block.h"
#include "cli/grid.h"
#include "cli/plan.h"
#include "plan/autotune.h"
#include "plan/calibrate.h"
#include "plan/cost_model.h"
#include "pipeline/task_list.h"
#include "train/distributed.h"

namespace ampipe {

CLI::App* add_bench_command(CLI::App& app, BenchOptions& o) {
  o.threads = available_cores();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Time one transformer block (forward + backward) over a grid of cases: every schedule, pipe degree "
      "and stage order in one run; prints a table, optionally JSON Lines and a Chrome trace");
  add_grid_flags(*cmd, o.grid, "2 * the number of ranks");
  cmd->add_option("--moe-capacity-factor", o.capacity_factor, "Expert capacity factor; 0 = dropless")
      ->capture_default_str();
  cmd->add_option("--micro-batch-size", o.micro_batch_size, "Sequences per block call (B)")->capture_default_str();
  cmd->add_option("--schedule", o.schedules,
                  "Schedules (list of sequential, moe-pipe, ampipe, auto: the planner's choice for each case)")
      ->capture_default_str();
  cmd->add_option("--hardware", o.hardware,
                  "Hardware profile (JSON path, or the name of one under profiles/) for the planner: `auto` and the "
                  "predicted time of every case; default: with `auto` in --schedule, a quick calibration of this "
                  "machine at start-up");
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
  cmd->add_option("--warmup", o.warmup, "Untimed repeats per case")->capture_default_str();
  cmd->add_option("--repeats", o.repeats, "Timed repeats per case (the median is reported)")->capture_default_str();
  cmd->add_option("--threads", o.threads, "Compute threads per rank")->capture_default_str();
  cmd->add_option("--link", o.link,
                  "Label of the link rate in the output; default $AMPIPE_LINK (set by scripts/netem.sh), else "
                  "'unshaped'");
  cmd->add_option("--json-out", o.json_out, "Write one JSON object per case to this file (JSON Lines; truncated)");
  cmd->add_option("--trace", o.trace, "Write a Chrome trace of every case's last repeat to this file");
  cmd->add_option("--seed", o.seed, "Seed of the parameters and inputs (rank r uses its own tokens)")
      ->capture_default_str();
  cmd->add_flag("--predict-only", o.predict_only,
                "With --hardware: print the planner's predicted time (and per-stage prices in --json-out) of "
                "every case, and time nothing; measured columns are empty");
  return cmd;
}

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void fill_normal(Tensor& t, uint64_t seed, float scale) {
  Rng rng(seed);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal()) * scale;
}

struct Variant {
  BlockSchedule schedule;  // the balance weight is set per shape
  StageOrder order;
  bool planned = false;    // `auto`: the planner's choice for each shape
};

struct Measured {
  double time_ms, compute_ms, comm_ms;
};

// Stages are indexed by their enum value (pipeline/task_list.h: AttnBegin first, AttnFinishBwd last).
constexpr int kNumStages = static_cast<int>(Stage::AttnFinishBwd) + 1;

// The stage a trace slice of StreamedBlock belongs to, from the label it gives each task
// ("attention c2", "ln1+qkv"), or -1.
int slice_stage(const std::string& name) {
  for (int i = 0; i < kNumStages; ++i) {
    const std::string stage = stage_name(static_cast<Stage>(i));
    if (name == stage) return i;
    const std::string prefix = stage + " c";
    if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
        std::isdigit(static_cast<unsigned char>(name[prefix.size()])))
      return i;
  }
  return -1;
}

std::string variant_label(const Variant& v) {
  if (v.schedule.kind == ScheduleKind::Sequential) return v.schedule.describe();
  return v.schedule.describe() + " " + stage_order_name(v.order);
}

}  // namespace

int run_bench(const BenchOptions& o, Communicator& world) {
  // ---- Flags.
  AMPIPE_CHECK(o.threads >= 1) << "--threads must be at least 1, got " << o.threads;
  AMPIPE_CHECK(o.repeats >= 1) << "--repeats must be at least 1, got " << o.repeats;
  AMPIPE_CHECK(o.warmup >= 0) << "--warmup must be >= 0, got " << o.warmup;
  AMPIPE_CHECK(o.micro_batch_size >= 1) << "--micro-batch-size must be at least 1, got " << o.micro_batch_size;
  AMPIPE_CHECK(o.capacity_factor >= 0 && std::isfinite(o.capacity_factor))
      << "--moe-capacity-factor must be >= 0 (0 = dropless), got " << o.capacity_factor;
  AMPIPE_CHECK(!o.predict_only || !o.hardware.empty())
      << "--predict-only prices the cases with a hardware profile: give --hardware PROFILE";
  kernels::set_kernel_threads(o.threads);

  const std::vector<GridShape> shapes = expand_grid(o.grid, 2 * int64_t{world.size()}, o.capacity_factor);
  const std::vector<int64_t> seqs = parse_int_list("--seq-length", o.grid.seq_length, 1);
  const std::vector<int64_t> degrees = parse_int_list("--pipe-degree", o.pipe_degrees, 1);
  const std::vector<int64_t> moe_degrees = parse_int_list("--moe-pipe-degree", o.moe_pipe_degrees, 0);
  std::vector<ChunkPolicy> policies;
  for (const std::string& name : split_list(o.chunk_policies)) {
    AMPIPE_CHECK(name == "equal" || name == "balanced")
        << "--chunk-policy '" << o.chunk_policies << "': '" << name << "' is not one of: equal, balanced";
    const ChunkPolicy policy = parse_chunk_policy(name);
    if (std::find(policies.begin(), policies.end(), policy) == policies.end()) policies.push_back(policy);
  }

  std::vector<ScheduleKind> kinds;
  bool with_auto = false;
  for (const std::string& name : split_list(o.schedules)) {
    AMPIPE_CHECK(name == "sequential" || name == "moe-pipe" || name == "moe_pipe" || name == "ampipe" ||
                 name == "auto")
        << "--schedule '" << o.schedules << "': '" << name << "' is not one of: sequential, moe-pipe, ampipe, auto";
    if (name == "auto") {
      with_auto = true;
      continue;
    }
    const ScheduleKind kind = parse_schedule(name);
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
  }
  // sequential first: the others' speedups refer to it.
  std::stable_partition(kinds.begin(), kinds.end(), [](ScheduleKind k) { return k == ScheduleKind::Sequential; });
  std::vector<StageOrder> orders;
  for (const std::string& name : split_list(o.stage_orders)) {
    AMPIPE_CHECK(name == "stage-major" || name == "stage_major" || name == "interleaved")
        << "--stage-order '" << o.stage_orders << "': '" << name << "' is not one of: stage-major, interleaved";
    const StageOrder order = parse_stage_order(name);
    if (std::find(orders.begin(), orders.end(), order) == orders.end()) orders.push_back(order);
  }
  std::vector<int64_t> explicit_bounds;
  if (!o.chunk_boundaries.empty()) {
    explicit_bounds = parse_chunk_boundaries(o.chunk_boundaries);
    BlockSchedule s;
    s.kind = ScheduleKind::AmPipe;
    s.chunk_boundaries = explicit_bounds;
    s.validate();
    for (int64_t N : seqs)
      AMPIPE_CHECK(explicit_bounds.back() == N)
          << "--chunk-boundaries " << o.chunk_boundaries << " must end at every --seq-length, but one is " << N;
  }
  std::string link = o.link;
  if (link.empty()) {
    const char* env = std::getenv("AMPIPE_LINK");
    link = env && *env ? env : "unshaped";
  }

  // ---- The grid.
  std::vector<Variant> variants;
  for (ScheduleKind kind : kinds) {
    BlockSchedule base;
    base.kind = kind;
    if (kind == ScheduleKind::Sequential) {
      variants.push_back({base, StageOrder::StageMajor});
      continue;
    }
    if (kind == ScheduleKind::MoePipe) {
      for (int64_t P : degrees)
        for (StageOrder order : orders) {
          base.pipe_degree = P;
          variants.push_back({base, order});
          if (P == 1) break;  // one chunk: every stage order is the same sequence
        }
      continue;
    }
    // ampipe: P (or explicit boundaries) x chunk policy x MoE-side pipe degree x order.
    for (int64_t moe_p : moe_degrees) {
      base.moe_pipe_degree = moe_p;
      if (!explicit_bounds.empty()) {
        base.chunk_boundaries = explicit_bounds;
        for (StageOrder order : orders) variants.push_back({base, order});
        continue;
      }
      for (int64_t P : degrees)
        for (ChunkPolicy policy : policies) {
          if (P == 1 && policy != policies.front()) continue;  // one chunk: every policy is the same
          base.pipe_degree = P;
          base.chunk_policy = policy;
          for (StageOrder order : orders) {
            variants.push_back({base, order});
            if (P == 1 && moe_p <= 1) break;
          }
        }
    }
  }
  if (with_auto) variants.push_back({BlockSchedule{}, StageOrder::StageMajor, true});

  const int rank = world.rank();
  const bool root = rank == 0;
  const size_t total_cases = shapes.size() * variants.size();
  std::ofstream json;
  if (root && !o.json_out.empty()) {
    json.open(o.json_out, std::ios::out | std::ios::trunc);
    AMPIPE_CHECK(json.good()) << "--json-out: cannot open '" << o.json_out << "' for writing";
  }
  // Collective check that every rank runs the same grid (else the collectives would not match).
  {
    std::string desc = "grid=" + std::to_string(shapes.size()) + "x" + std::to_string(variants.size()) +
                       "\nrepeats=" + std::to_string(o.warmup) + "+" + std::to_string(o.repeats);
    check_same_configuration(world, desc);
  }
  // The planner's profile: for `auto`, and a predicted time for every case.
  std::optional<HardwareProfile> hw;
  if (!o.hardware.empty()) {
    hw = load_hardware_profile(o.hardware);
  } else if (with_auto) {
    CalibrateOptions co;
    co.quick = true;
    co.threads = o.threads;
    co.hidden_sizes = parse_int_list("--hidden-size", o.grid.hidden_size, 1);
    co.link = link;
    hw = calibrate(world, co);
    kernels::set_kernel_threads(o.threads);
  }

  TraceRecorder trace_out;
  trace_out.declare_track(rank, "case");
  trace_out.declare_track(rank, "compute");
  trace_out.declare_track(rank, "comm");
  world.barrier();
  trace_out.mark_origin();

  auto line = [&](const std::string& text) {
    if (!root) return;
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  };
  char buf[512];
  std::snprintf(buf, sizeof buf, "ampipe bench: %d rank(s), %d threads per rank, link %s, B=%lld, %lld warm-up + %lld repeats",
                world.size(), o.threads, link.c_str(), static_cast<long long>(o.micro_batch_size),
                static_cast<long long>(o.warmup), static_cast<long long>(o.repeats));
  line(buf);
  if (hw) line("planner profile: " + hw->name);
  std::snprintf(buf, sizeof buf, "%-15s %2s %-11s %-8s %3s %6s %5s %3s %2s %5s %-9s %10s %7s %9s %5s %5s %s",
                "schedule", "P", "order", "chunks", "moe", "N", "d", "E", "k", "ranks", "link", "time ms", "speedup",
                "bound ms", "eff", "comm", hw ? "   pred ms" : "");
  line(buf);

  size_t case_index = 0;
  const int64_t B = o.micro_batch_size;
  for (const GridShape& s : shapes) {
    const ModelConfig c = s.config(o.capacity_factor);
    TrainingGroups groups = make_training_groups(world, 0, s.E);
    ModelParallel parallel{groups.expert_group.get(), nullptr};
    StandaloneBlock standalone(c, parallel);
    standalone.initialize(o.seed);
    Tensor x = Tensor::empty({B * s.N, s.d}), dy = Tensor::empty({B * s.N, s.d});
    fill_normal(x, mix_seed(o.seed + static_cast<uint64_t>(rank), 1), 1.0f);
    fill_normal(dy, mix_seed(o.seed + static_cast<uint64_t>(rank), 2), 1e-3f);
    const Block block = standalone.block();
    const BlockShape bshape{c, B, s.N, groups.expert_group->size()};
    std::optional<PlanCandidate> planned;
    if (with_auto) planned = choose_plan(bshape, *hw);

    // Every variant of the shape runs once per round, round after round, so a slow spell of the
    // machine falls on all of them alike instead of on whichever variant ran then.
    struct Case {
      const Variant* v;
      BlockSchedule schedule;
      StageOrder stage_order;
      double predicted_ms;
      ChunkPlan plan;
      int64_t shown_P;
      std::string case_name;
      std::unique_ptr<TraceRecorder> rec;
      std::unique_ptr<StreamedBlock> exec;
      std::vector<double> times, computes, comms;
      std::vector<std::vector<double>> stage_ms;  // per stage: the rank mean of each timed run
      std::vector<double> predicted_stage_ms;     // per stage: the cost model's sum over its tasks
    };
    std::vector<Case> cases;
    for (const Variant& v : variants) {
      Case k;
      k.v = &v;
      // sequential too runs on the streams (one chunk), so its stages are timed
      k.schedule = v.planned ? planned->schedule : v.schedule;
      k.stage_order = v.planned ? planned->order : v.order;
      if (!v.planned && k.schedule.chunk_policy == ChunkPolicy::Balanced)
        k.schedule.balance_weight = balance_weight(c, k.schedule.moe_pipe_degree == 0);
      k.predicted_ms = hw ? predict_block(k.schedule, k.stage_order, bshape, *hw).total * 1e3
                          : std::numeric_limits<double>::quiet_NaN();
      k.plan = k.schedule.plan(s.N);
      k.stage_ms.assign(kNumStages, {});
      if (hw) {
        // Each task priced alone (no slowdown beside the other stream), summed per stage.
        k.predicted_stage_ms.assign(kNumStages, 0.0);
        for (const std::vector<StageTask>& list :
             {forward_tasks(k.plan, k.stage_order), backward_tasks(k.plan, k.stage_order)}) {
          const std::vector<double> secs = task_seconds(list, k.plan, bshape, *hw);
          for (size_t t = 0; t < list.size(); ++t)
            k.predicted_stage_ms[static_cast<int>(list[t].stage)] += secs[t] * 1e3;
        }
      }
      k.shown_P = static_cast<int64_t>(k.schedule.kind == ScheduleKind::MoePipe ? k.plan.moe.size() - 1
                                                                                : k.plan.attention.size() - 1);
      const std::string label = v.planned ? "auto: " + planned->describe() : variant_label(v);
      k.case_name = label + " " + s.describe();
      k.rec = std::make_unique<TraceRecorder>();
      k.exec = std::make_unique<StreamedBlock>(k.schedule, k.stage_order, k.rec.get(), rank);
      cases.push_back(std::move(k));
    }
    const int64_t runs = o.predict_only ? 0 : o.warmup + o.repeats;
    for (int64_t r = 0; r < runs; ++r) {
      for (size_t ci = 0; ci < cases.size(); ++ci) {
        Case& k = cases[ci];
        standalone.params().zero_grad();
        k.rec->clear();
        RoutingStats stats;
        stats.reset(s.E);
        BlockContext ctx;
        world.barrier();
        const double start_us = trace_clock_us();
        const auto t0 = Clock::now();
        Tensor y = k.exec->forward(block, ctx, x, B, s.N, stats);
        Tensor dx = k.exec->backward(block, ctx, dy, stats, 0.01);
        double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        const double end_us = trace_clock_us();
        double compute_ms = 0, comm_ms = 0;
        const std::vector<TraceSlice> slices = k.rec->slices();
        Tensor per_stage = Tensor::zeros({kNumStages});
        for (const TraceSlice& sl : slices) {
          if (sl.track == "compute") compute_ms += sl.duration_us / 1e3;
          if (sl.track == "comm") comm_ms += sl.duration_us / 1e3;
          const int i = slice_stage(sl.name);
          if (i >= 0) per_stage.data<float>()[i] += static_cast<float>(sl.duration_us / 1e3);
        }
        world.all_reduce_sum(per_stage);
        world.all_reduce_max(ms);
        world.all_reduce_max(compute_ms);
        world.all_reduce_max(comm_ms);
        if (r >= o.warmup) {
          k.times.push_back(ms);
          k.computes.push_back(compute_ms);
          k.comms.push_back(comm_ms);
          for (int i = 0; i < kNumStages; ++i)
            k.stage_ms[i].push_back(per_stage.data<float>()[i] / world.size());
        }
        if (r == runs - 1 && !o.trace.empty()) {
          TraceSlice whole;
          whole.rank = rank;
          whole.track = "case";
          whole.name = k.case_name;
          whole.start_us = start_us;
          whole.duration_us = end_us - start_us;
          whole.args = {{"case", static_cast<int64_t>(case_index + ci + 1)}, {"time_ms", ms}};
          trace_out.add_slice(std::move(whole));
          for (const TraceSlice& sl : slices) trace_out.add_slice(sl);
        }
      }
    }

    double sequential_ms = -1.0;  // < 0: not measured (no sequential in --schedule)
    for (Case& k : cases) {
      ++case_index;
      const Variant& v = *k.v;
      const BlockSchedule& schedule = k.schedule;
      const StageOrder stage_order = k.stage_order;
      const double predicted_ms = k.predicted_ms;
      const ChunkPlan& plan = k.plan;
      const int64_t shown_P = k.shown_P;
      const char* case_name = k.case_name.c_str();
      const std::vector<double>& times = k.times;
      const std::vector<double>& computes = k.computes;
      const std::vector<double>& comms = k.comms;
      const Measured m{median(times), median(computes), median(comms)};
      if (schedule.kind == ScheduleKind::Sequential) sequential_ms = m.time_ms;
      const double bound = std::max(m.compute_ms, m.comm_ms);
      const double efficiency = m.time_ms > 0 ? bound / m.time_ms : 0.0;
      const bool has_speedup = sequential_ms > 0 && m.time_ms > 0;
      const double speedup = has_speedup ? sequential_ms / m.time_ms : 0.0;
      const std::string order = schedule.kind == ScheduleKind::Sequential ? "-" : stage_order_name(stage_order);
      const std::string shown_schedule = v.planned ? std::string("auto:") + schedule_name(schedule.kind)
                                                   : std::string(schedule_name(schedule.kind));
      const bool pipelined_ampipe = schedule.kind == ScheduleKind::AmPipe && shown_P > 1;
      const std::string chunks = !pipelined_ampipe ? "-"
                                 : !schedule.chunk_boundaries.empty()
                                     ? "explicit"
                                     : chunk_policy_name(schedule.chunk_policy);
      const int64_t moe_P = static_cast<int64_t>(plan.moe.size()) - 1;

      std::snprintf(buf, sizeof buf,
                    "%-15s %2lld %-11s %-8s %3lld %6lld %5lld %3lld %2lld %5d %-9s %10s %7s %9.2f %5.2f %4.0f%% %s",
                    shown_schedule.c_str(), static_cast<long long>(shown_P), order.c_str(), chunks.c_str(),
                    static_cast<long long>(moe_P), static_cast<long long>(s.N),
                    static_cast<long long>(s.d), static_cast<long long>(s.E), static_cast<long long>(s.k), world.size(),
                    link.c_str(), o.predict_only ? "-" : format_number("%.2f", m.time_ms).c_str(), has_speedup ? format_number("%.2fx", speedup).c_str() : "-", bound, efficiency,
                    m.time_ms > 0 ? 100.0 * m.comm_ms / m.time_ms : 0.0,
                    hw ? format_number("%10.2f", predicted_ms).c_str() : "");
      line(buf);
      if (root) {
        std::fprintf(stderr, "bench: case %zu/%zu: %s: %.2f ms\n", case_index, total_cases,
                     case_name, m.time_ms);
        std::fflush(stderr);
      }
      if (json.is_open()) {
        nlohmann::json j = {{"schedule", v.planned ? "auto" : schedule_name(schedule.kind)},
                            {"planned_schedule", schedule_name(schedule.kind)},
                            {"pipe_degree", shown_P},
                            {"stage_order", order},
                            {"chunk_policy", chunks},
                            {"moe_pipe_degree", moe_P},
                            {"attention_boundaries", plan.attention},
                            {"seq_length", s.N},
                            {"hidden_size", s.d},
                            {"heads", s.heads},
                            {"ffn_hidden_size", s.ffn},
                            {"num_experts", s.E},
                            {"top_k", s.k},
                            {"family", s.parts.family},
                            {"num_query_groups", s.config(o.capacity_factor).kv_heads()},
                            {"swiglu", s.parts.swiglu},
                            {"batch", B},
                            {"capacity_factor", o.capacity_factor},
                            {"ranks", world.size()},
                            {"threads", o.threads},
                            {"link", link},
                            {"time_ms", o.predict_only ? nlohmann::json(nullptr) : nlohmann::json(m.time_ms)},
                            {"compute_ms", m.compute_ms},
                            {"comm_ms", m.comm_ms},
                            {"speedup_vs_sequential", has_speedup ? nlohmann::json(speedup) : nlohmann::json(nullptr)},
                            {"overlap_bound_ms", bound},
                            {"efficiency", efficiency}};
        // Per stage (summed over chunks): the measured time (rank mean, median over repeats) and,
        // with a profile, the cost model's price of the same tasks, each alone.
        nlohmann::json stages = nlohmann::json::object(), predicted_stages = nlohmann::json::object();
        for (int i = 0; i < kNumStages; ++i) {
          const char* name = stage_name(static_cast<Stage>(i));
          if (!k.stage_ms[i].empty()) stages[name] = median(k.stage_ms[i]);  // empty: --predict-only
          if (hw) predicted_stages[name] = k.predicted_stage_ms[i];
        }
        j["stage_ms"] = stages;
        if (hw) {
          j["predicted_ms"] = predicted_ms;
          j["predicted_stage_ms"] = predicted_stages;
          j["profile"] = hw->name;
        }
        json << j.dump() << "\n";
        json.flush();
        AMPIPE_CHECK(json.good()) << "--json-out: writing '" << o.json_out << "' failed";
      }
    }
  }

  if (!o.trace.empty()) {
    // Rank 0 gathers every rank's trace: each rank in turn broadcasts its own.
    std::vector<std::string> traces;
    const std::string mine = trace_out.to_json();
    for (int r = 0; r < world.size(); ++r) {
      std::string bytes = r == rank ? mine : std::string();
      world.broadcast_bytes(bytes, r);
      if (root) traces.push_back(std::move(bytes));
    }
    if (root) {
      write_file_atomically(o.trace, TraceRecorder::merge(traces));
      std::fprintf(stderr, "bench: trace written to %s\n", o.trace.c_str());
    }
  }
  return 0;
}

}  // namespace ampipe
