#include "cli/bench_cases.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "comm/timed_communicator.h"
#include "core/error.h"
#include "core/host_cache.h"
#include "core/random.h"
#include "model/block.h"
#include "pipeline/streamed_block.h"
#include "plan/cost_model.h"
#include "plan/simulator.h"
#include "train/distributed.h"

namespace ampipe {

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

// Stages are indexed by their enum value (pipeline/task_list.h: AttnBegin first, ExpertsWgrad last).
constexpr int kNumStages = static_cast<int>(Stage::ExpertsWgrad) + 1;

// Whether text[pos..] is `prefix` followed by one or more digits up to the end or a space; returns
// the position after the digits, or npos.
size_t skip_number(const std::string& text, size_t pos, const char* prefix) {
  const std::string p = prefix;
  if (text.compare(pos, p.size(), p) != 0) return std::string::npos;
  size_t end = pos + p.size();
  const size_t digits = end;
  while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
  return end > digits ? end : std::string::npos;
}

// The stage a trace slice of StreamedBlock belongs to, from the label it gives each task: the
// stage's name, then " c<chunk>" for chunked stages, then " L<block>" in a pass over several blocks
// ("attention c2", "ln1+qkv", "ln1+qkv chunk c0 L3", "grad reduce L1"); -1 for anything else.
int slice_stage(const std::string& name) {
  for (int i = 0; i < kNumStages; ++i) {
    const std::string stage = stage_name(static_cast<Stage>(i));
    if (name.compare(0, stage.size(), stage) != 0) continue;
    size_t pos = stage.size();
    if (pos < name.size()) {
      const size_t chunk = skip_number(name, pos, " c");
      if (chunk != std::string::npos) pos = chunk;
    }
    if (pos < name.size()) {
      const size_t layer = skip_number(name, pos, " L");
      if (layer != std::string::npos) pos = layer;
    }
    if (pos == name.size()) return i;  // else a longer stage name ("ln1+qkv chunk") may match
  }
  return -1;
}

// One case of a job: a variant on the job's shape, its executor, trace and measurements.
struct Case {
  const BenchVariant* v = nullptr;
  ChunkPlan plan;
  int64_t shown_P = 0;
  std::string case_name;
  double predicted_ms = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> predicted_stage_ms;  // per stage: the cost model's sum over its tasks
  std::vector<bool> in_lists;              // per stage: whether the case's task lists hold it
  std::unique_ptr<TraceRecorder> rec;
  std::unique_ptr<StreamedBlock> exec;
  std::vector<double> times, computes, comms, pass_bounds;
  std::vector<std::vector<double>> stage_ms;  // per stage: the rank mean of each timed run
  // Bytes all ranks sent through the expert group's all_to_all_v in one step, by DType (the last
  // timed run; the same every run): the tokens in the wire dtype, the per-expert counts in int32.
  std::array<int64_t, 3> all_to_all_bytes{};
  // Host memory the forward pass leaves held for the backward (what it saved, and its output): large
  // blocks of the host cache (core/host_cache.h) in use after the forward minus before, the most of
  // any rank (the last timed run; CPU runs only, -1 on the GPU).
  int64_t forward_held_bytes = -1;
};

// The medians of a case and its ratios to the other cases of the job.
struct Summary {
  double time_ms = 0, compute_ms = 0, comm_ms = 0;
  double bound_ms = 0, efficiency = 0;
  // The bound per pass: forward and backward each overlapped perfectly, but the backward starting
  // after the forward (the loss needs every chunk): max(compute, comm) of the forward plus that of
  // the backward. Always >= bound_ms; the step cannot beat it.
  double pass_bound_ms = 0, pass_efficiency = 0;
  std::optional<double> vs_sequential, vs_block_scope;
};

// The predicted time of one step of the job's blocks under the case's schedule, order and scope
// (plan/simulator.h, predict_pass), and each stage's price alone, summed over its tasks.
void predict_case(Case& k, const std::vector<StageTask> (&lists)[2], const PassShape& pass, const BlockShape& bshape,
                  const HardwareProfile& hw) {
  k.predicted_ms = predict_pass(k.v->schedule, k.v->order, bshape, hw, pass).total * 1e3;
  k.predicted_stage_ms.assign(kNumStages, 0.0);
  for (const std::vector<StageTask>& list : lists) {
    const std::vector<double> secs = task_seconds(list, k.plan, bshape, hw);
    for (size_t t = 0; t < list.size(); ++t) k.predicted_stage_ms[static_cast<int>(list[t].stage)] += secs[t] * 1e3;
  }
}

std::vector<Case> make_cases(const BenchRun& run, const BenchJob& job, const BlockShape& bshape) {
  const PassShape base_pass{job.num_layers, PipelineScope::Block, false};
  std::vector<Case> cases;
  for (const BenchVariant& v : job.variants) {
    Case k;
    k.v = &v;
    k.plan = v.schedule.plan(job.shape.N);
    k.stage_ms.assign(kNumStages, {});
    PassShape pass = base_pass;
    pass.scope = v.scope;
    const std::vector<StageTask> lists[2] = {forward_tasks(k.plan, v.order, pass),
                                             backward_tasks(k.plan, v.order, pass)};
    k.in_lists.assign(kNumStages, false);
    for (const std::vector<StageTask>& list : lists)
      for (const StageTask& t : list) k.in_lists[static_cast<int>(t.stage)] = true;
    if (run.hw) predict_case(k, lists, pass, bshape, *run.hw);
    k.shown_P = static_cast<int64_t>(v.schedule.kind == ScheduleKind::MoePipe ? k.plan.moe.size() - 1
                                                                              : k.plan.attention.size() - 1);
    k.case_name = v.label;
    if (run.show_scope) k.case_name += std::string(" scope=") + pipeline_scope_name(v.scope);
    if (run.show_layers) k.case_name += " L=" + std::to_string(job.num_layers);
    k.case_name += " " + job.shape.describe();
    k.rec = std::make_unique<TraceRecorder>();
    k.exec = std::make_unique<StreamedBlock>(v.schedule, v.order, k.rec.get(), run.world.rank(), v.scope, run.device);
    cases.push_back(std::move(k));
  }
  return cases;
}

// The job's blocks and their inputs.
struct Inputs {
  StandaloneBlock& blocks;
  Tensor x, dy;
  int64_t batch;
  TimedCommunicator& expert_group;  // the blocks' expert group, counting the all-to-all bytes
};

// One forward + backward of every block of the job under case k; the measurements are kept from
// the timed rounds, the slices of the last round go to the invocation's trace.
void run_case_once(BenchRun& run, const BenchJob& job, Inputs& in, Case& k, bool timed, bool last,
                   size_t case_number) {
  Communicator& world = run.world;
  const int64_t L = job.num_layers;
  in.blocks.params().zero_grad();
  k.rec->clear();
  std::vector<RoutingStats> stats(L);
  for (RoutingStats& s : stats) s.reset(job.shape.E);
  std::vector<BlockContext> ctx(L);
  in.expert_group.reset();
  world.barrier();
  const double start_us = trace_clock_us();
  const auto t0 = Clock::now();
  const int64_t held_before = static_cast<int64_t>(host_cache_stats().in_use_bytes);
  Tensor y = k.exec->forward_layers(in.blocks.blocks(), ctx, in.x, in.batch, job.shape.N, stats);
  int64_t held = static_cast<int64_t>(host_cache_stats().in_use_bytes) - held_before;
  const double forward_end_us = trace_clock_us();
  Tensor dx = k.exec->backward_layers(in.blocks.blocks(), ctx, in.dy, stats, 0.01, {});
  if (run.device == Device::CUDA) cuda_synchronize();  // the step's GPU work is done before the clock stops
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const double end_us = trace_clock_us();
  // The overlap bound's two sums: every slice of the step on each stream, over every block.
  double compute_ms = 0, comm_ms = 0;
  double pass_ms[2][2] = {{0, 0}, {0, 0}};  // [forward, backward][compute, comm]
  const std::vector<TraceSlice> slices = k.rec->slices();
  Tensor per_stage = Tensor::zeros({kNumStages});
  for (const TraceSlice& sl : slices) {
    if (sl.track == "compute") compute_ms += sl.duration_us / 1e3;
    if (sl.track == "comm") comm_ms += sl.duration_us / 1e3;
    if (sl.track == "compute" || sl.track == "comm")
      pass_ms[sl.start_us < forward_end_us ? 0 : 1][sl.track == "comm" ? 1 : 0] += sl.duration_us / 1e3;
    const int i = slice_stage(sl.name);
    if (i >= 0) per_stage.data<float>()[i] += static_cast<float>(sl.duration_us / 1e3);
  }
  world.all_reduce_sum(per_stage);
  world.all_reduce_max(ms);
  world.all_reduce_max(compute_ms);
  world.all_reduce_max(comm_ms);
  double pass_bound = std::max(pass_ms[0][0], pass_ms[0][1]) + std::max(pass_ms[1][0], pass_ms[1][1]);
  world.all_reduce_max(pass_bound);
  std::array<int64_t, 3> bytes{};
  for (size_t t = 0; t < bytes.size(); ++t) {
    bytes[t] = in.expert_group.all_to_all_bytes(static_cast<DType>(t));
    world.all_reduce_sum(bytes[t]);
  }
  world.all_reduce_max(held);
  if (timed) {
    k.all_to_all_bytes = bytes;
    k.forward_held_bytes = run.device == Device::CPU ? held : -1;
    k.pass_bounds.push_back(pass_bound);
    k.times.push_back(ms);
    k.computes.push_back(compute_ms);
    k.comms.push_back(comm_ms);
    for (int i = 0; i < kNumStages; ++i) k.stage_ms[i].push_back(per_stage.data<float>()[i] / world.size());
  }
  if (last && !run.options.trace.empty()) {
    TraceSlice whole;
    whole.rank = world.rank();
    whole.track = "case";
    whole.name = k.case_name;
    whole.start_us = start_us;
    whole.duration_us = end_us - start_us;
    whole.args = {{"case", static_cast<int64_t>(case_number)}, {"time_ms", ms}};
    run.trace.add_slice(std::move(whole));
    for (const TraceSlice& sl : slices) run.trace.add_slice(sl);
  }
}

// Every case of the job runs once per round, round after round, so a slow spell of the machine
// falls on all of them alike instead of on whichever case ran then.
void time_cases(BenchRun& run, const BenchJob& job, Inputs& in, std::vector<Case>& cases) {
  const BenchOptions& o = run.options;
  const int64_t runs = o.predict_only ? 0 : o.warmup + o.repeats;
  for (int64_t r = 0; r < runs; ++r)
    for (size_t ci = 0; ci < cases.size(); ++ci)
      run_case_once(run, job, in, cases[ci], r >= o.warmup, r == runs - 1, run.done_cases + ci + 1);
}

// Ratio keys: a model-scope case's block-scope twin has the same label (schedule, P, order, ...).
std::vector<Summary> summarize(const std::vector<Case>& cases) {
  std::vector<Summary> out(cases.size());
  double sequential_ms = -1.0;  // < 0: not measured (no sequential in --schedule)
  std::map<std::string, double> block_scope_ms;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    Summary& m = out[i];
    m.time_ms = median(k.times);
    m.compute_ms = median(k.computes);
    m.comm_ms = median(k.comms);
    m.bound_ms = std::max(m.compute_ms, m.comm_ms);
    m.efficiency = m.time_ms > 0 ? m.bound_ms / m.time_ms : 0.0;
    m.pass_bound_ms = median(k.pass_bounds);
    m.pass_efficiency = m.time_ms > 0 ? m.pass_bound_ms / m.time_ms : 0.0;
    if (k.v->schedule.kind == ScheduleKind::Sequential && !k.v->planned) sequential_ms = m.time_ms;
    if (k.v->scope == PipelineScope::Block) block_scope_ms[k.v->label] = m.time_ms;
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    Summary& m = out[i];
    if (m.time_ms <= 0) continue;
    if (sequential_ms > 0) m.vs_sequential = sequential_ms / m.time_ms;
    const auto twin = block_scope_ms.find(cases[i].v->label);
    if (cases[i].v->scope == PipelineScope::Model && twin != block_scope_ms.end() && twin->second > 0)
      m.vs_block_scope = twin->second / m.time_ms;
  }
  return out;
}

// The table's columns: header, width, left-aligned; the optional ones only where they say something.
struct Column {
  const char* header;
  int width;
  bool left;
};

std::vector<Column> table_columns(const BenchRun& run) {
  std::vector<Column> cols = {{"schedule", 15, true}, {"P", 2, false}, {"order", 11, true},
                              {"chunks", 8, true},    {"moe", 3, false}};
  if (run.show_scope) cols.push_back({"scope", 5, true});
  for (Column c : {Column{"N", 6, false}, Column{"d", 5, false}, Column{"E", 3, false}, Column{"k", 2, false}})
    cols.push_back(c);
  if (run.show_layers) cols.push_back({"L", 3, false});
  cols.push_back({"ranks", 5, false});
  cols.push_back({"link", 9, true});
  cols.push_back({"time ms", 10, false});
  cols.push_back({"speedup", 7, false});
  if (run.show_scope) cols.push_back({"vs block", 8, false});
  for (Column c : {Column{"bound ms", 9, false}, Column{"eff", 5, false}, Column{"pass eff", 8, false},
                   Column{"comm", 5, false}})
    cols.push_back(c);
  if (run.hw) cols.push_back({"pred ms", 10, false});
  return cols;
}

std::string table_line(const std::vector<Column>& cols, const std::vector<std::string>& cells) {
  std::string out;
  for (size_t i = 0; i < cols.size(); ++i) {
    char buf[256];
    std::snprintf(buf, sizeof buf, cols[i].left ? "%-*s" : "%*s", cols[i].width, cells[i].c_str());
    if (i) out += ' ';
    out += buf;
  }
  return out;
}

// The case's settings as the table and the JSON name them.
struct Shown {
  std::string schedule, order, chunks;
  int64_t moe_P;
};

Shown shown(const Case& k) {
  const BlockSchedule& s = k.v->schedule;
  Shown w;
  w.schedule = (k.v->planned ? "auto:" : "") + std::string(schedule_name(s.kind));
  w.order = s.kind == ScheduleKind::Sequential ? "-" : stage_order_name(k.v->order);
  const bool pipelined_ampipe = s.kind == ScheduleKind::AmPipe && k.shown_P > 1;
  w.chunks = !pipelined_ampipe ? "-" : !s.chunk_boundaries.empty() ? "explicit" : chunk_policy_name(s.chunk_policy);
  w.moe_P = static_cast<int64_t>(k.plan.moe.size()) - 1;
  return w;
}

std::string table_row(const BenchRun& run, const BenchJob& job, const Case& k, const Summary& m) {
  const GridShape& s = job.shape;
  const Shown w = shown(k);
  auto num = [](int64_t v) { return std::to_string(v); };
  auto ratio = [](const std::optional<double>& r) { return r ? format_number("%.2fx", *r) : std::string("-"); };
  std::vector<std::string> cells = {w.schedule, num(k.shown_P), w.order, w.chunks, num(w.moe_P)};
  if (run.show_scope) cells.push_back(pipeline_scope_name(k.v->scope));
  for (int64_t v : {s.N, s.d, s.E, s.k}) cells.push_back(num(v));
  if (run.show_layers) cells.push_back(num(job.num_layers));
  cells.push_back(num(run.world.size()));
  cells.push_back(run.link);
  cells.push_back(run.options.predict_only ? "-" : format_number("%.2f", m.time_ms));
  cells.push_back(ratio(m.vs_sequential));
  if (run.show_scope) cells.push_back(ratio(m.vs_block_scope));
  cells.push_back(format_number("%.2f", m.bound_ms));
  cells.push_back(format_number("%.2f", m.efficiency));
  cells.push_back(format_number("%.2f", m.pass_efficiency));
  cells.push_back(format_number("%.0f%%", m.time_ms > 0 ? 100.0 * m.comm_ms / m.time_ms : 0.0));
  if (run.hw) cells.push_back(format_number("%.2f", k.predicted_ms));
  return table_line(table_columns(run), cells);
}

nlohmann::json json_row(const BenchRun& run, const BenchJob& job, const Case& k, const Summary& m) {
  const BenchOptions& o = run.options;
  const GridShape& s = job.shape;
  const BlockSchedule& schedule = k.v->schedule;
  const Shown w = shown(k);
  auto optional = [](const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  nlohmann::json j = {{"schedule", k.v->planned ? "auto" : schedule_name(schedule.kind)},
                      {"planned_schedule", schedule_name(schedule.kind)},
                      {"pipe_degree", k.shown_P},
                      {"stage_order", w.order},
                      {"chunk_policy", w.chunks},
                      {"moe_pipe_degree", w.moe_P},
                      {"attention_boundaries", k.plan.attention},
                      {"num_layers", job.num_layers},
                      {"pipeline_scope", pipeline_scope_name(k.v->scope)},
                      {"seq_length", s.N},
                      {"hidden_size", s.d},
                      {"heads", s.heads},
                      {"ffn_hidden_size", s.ffn},
                      {"num_experts", s.E},
                      {"top_k", s.k},
                      {"family", s.parts.family},
                      {"num_query_groups", s.config(o.capacity_factor).kv_heads()},
                      {"swiglu", s.parts.swiglu},
                      {"batch", o.micro_batch_size},
                      {"capacity_factor", o.capacity_factor},
                      {"ranks", run.world.size()},
                      {"threads", o.threads},
                      {"device", run.device == Device::CUDA ? "cuda" : "cpu"},
                      {"link", run.link},
                      {"bf16", o.bf16},
                      {"gemm_implementation", run.gemm_implementation},
                      {"all_to_all_dtype", o.bf16 ? "bf16" : "float32"},
                      {"all_to_all_bytes",
                       {{"float32", k.all_to_all_bytes[static_cast<size_t>(DType::F32)]},
                        {"bf16", k.all_to_all_bytes[static_cast<size_t>(DType::BF16)]},
                        {"int32", k.all_to_all_bytes[static_cast<size_t>(DType::I32)]}}},
                      {"forward_held_bytes",
                       k.forward_held_bytes >= 0 ? nlohmann::json(k.forward_held_bytes) : nlohmann::json(nullptr)},
                      {"time_ms", o.predict_only ? nlohmann::json(nullptr) : nlohmann::json(m.time_ms)},
                      {"compute_ms", m.compute_ms},
                      {"comm_ms", m.comm_ms},
                      {"speedup_vs_sequential", optional(m.vs_sequential)},
                      {"speedup_vs_block_scope", optional(m.vs_block_scope)},
                      {"overlap_bound_ms", m.bound_ms},
                      {"efficiency", m.efficiency},
                      {"pass_overlap_bound_ms", m.pass_bound_ms},
                      {"pass_efficiency", m.pass_efficiency}};
  // Per stage (summed over chunks and blocks): the measured time (rank mean, median over repeats)
  // and, with a profile, the cost model's price of the same tasks, each alone.
  nlohmann::json stages = nlohmann::json::object(), predicted_stages = nlohmann::json::object();
  for (int i = 0; i < kNumStages; ++i) {
    if (!k.in_lists[i]) continue;  // a stage of the other scope, or gradient reduction
    const char* name = stage_name(static_cast<Stage>(i));
    if (!k.stage_ms[i].empty()) stages[name] = median(k.stage_ms[i]);  // empty: --predict-only
    if (run.hw) predicted_stages[name] = k.predicted_stage_ms[i];
  }
  j["stage_ms"] = stages;
  if (run.hw) {
    j["predicted_ms"] = k.predicted_ms;
    j["predicted_stage_ms"] = predicted_stages;
    j["profile"] = run.hw->name;
  }
  return j;
}

void report_cases(BenchRun& run, const BenchJob& job, const std::vector<Case>& cases) {
  const std::vector<Summary> summaries = summarize(cases);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    ++run.done_cases;
    run.line(table_row(run, job, k, summaries[i]));
    if (run.world.rank() == 0) {
      std::fprintf(stderr, "bench: case %zu/%zu: %s: %.2f ms\n", run.done_cases, run.total_cases,
                   k.case_name.c_str(), summaries[i].time_ms);
      std::fflush(stderr);
    }
    if (run.json.is_open()) {
      run.json << json_row(run, job, k, summaries[i]).dump() << "\n";
      run.json.flush();
      AMPIPE_CHECK(run.json.good()) << "--json-out: writing '" << run.options.json_out << "' failed";
    }
  }
}

}  // namespace

void BenchRun::line(const std::string& text) const {
  if (world.rank() != 0) return;
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

void print_bench_table_header(const BenchRun& run) {
  const std::vector<Column> cols = table_columns(run);
  std::vector<std::string> headers;
  for (const Column& c : cols) headers.push_back(c.header);
  run.line(table_line(cols, headers));
}

void run_bench_job(BenchRun& run, const BenchJob& job) {
  const BenchOptions& o = run.options;
  Communicator& world = run.world;
  const GridShape& s = job.shape;
  ModelConfig c = s.config(o.capacity_factor);
  c.bf16 = o.bf16;
  TrainingGroups groups = make_training_groups(world, 0, s.E);
  TimedCommunicator expert_group(*groups.expert_group);
  ModelParallel parallel{&expert_group, nullptr};
  StandaloneBlock blocks(c, parallel, job.num_layers, run.device);
  blocks.initialize(o.seed);
  const int64_t B = o.micro_batch_size;
  const uint64_t rank_seed = o.seed + static_cast<uint64_t>(world.rank());
  Tensor x = Tensor::empty({B * s.N, s.d}), dy = Tensor::empty({B * s.N, s.d});
  fill_normal(x, mix_seed(rank_seed, 1), 1.0f);
  fill_normal(dy, mix_seed(rank_seed, 2), 1e-3f);
  Inputs in{blocks, x.to(run.device), dy.to(run.device), B, expert_group};  // drawn on the host, then moved
  const BlockShape bshape{c, B, s.N, groups.expert_group->size()};

  std::vector<Case> cases = make_cases(run, job, bshape);
  time_cases(run, job, in, cases);
  report_cases(run, job, cases);
}

}  // namespace ampipe
