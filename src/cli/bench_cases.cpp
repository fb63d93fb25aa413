#include "cli/bench_cases.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/bench_step.h"
#include "comm/communicator.h"
#include "comm/timed_communicator.h"
#include "core/error.h"
#include "core/random.h"
#include "model/block.h"
#include "pipeline/streamed_block.h"
#include "plan/cost_model.h"
#include "plan/simulator.h"
#include "train/distributed.h"

namespace ampipe {

namespace {

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
  // blocks of the host cache (core/host_cache.h) in use after the step's first forward minus before,
  // the most of any rank (the last timed run; CPU runs only, -1 on the GPU).
  int64_t forward_held_bytes = -1;
};

// The medians of a case and its ratios to the other cases of the job.
struct Summary {
  double time_ms = 0, compute_ms = 0, comm_ms = 0;
  double bound_ms = 0, efficiency = 0;
  // The bound per pass: forward and backward each overlapped perfectly, but the backward starting
  // after the forward (the loss needs every chunk): max(compute, comm) of each of the step's 2M
  // passes, summed. Always >= bound_ms; an unpaired step cannot beat it. Not defined for a paired
  // step (a merged list holds two passes): nullopt.
  std::optional<double> pass_bound_ms, pass_efficiency;
  std::optional<double> vs_sequential, vs_block_scope, vs_unpaired;
};

// The predicted time of one step of M micro-batches of the job's blocks under the case's schedule,
// order, scope and pairing (plan/simulator.h, predict_step), and each stage's price alone, summed
// over its tasks in the step (M times the tasks of one forward and one backward list).
void predict_case(Case& k, const std::vector<StageTask> (&lists)[2], const PassShape& pass,
                  const BlockShape& bshape, const HardwareProfile& hw, int64_t micro_batches) {
  const StepPrediction step =
      predict_step(k.v->schedule, k.v->order, bshape, hw, pass, micro_batches, k.v->paired);
  k.predicted_ms = step.total * 1e3;
  BlockShape priced = bshape;
  priced.delay_wgrad = pass.delay_wgrad;
  k.predicted_stage_ms.assign(kNumStages, 0.0);
  for (const std::vector<StageTask>& list : lists) {
    const std::vector<double> secs = task_seconds(list, k.plan, priced, hw);
    for (size_t t = 0; t < list.size(); ++t)
      k.predicted_stage_ms[static_cast<int>(list[t].stage)] +=
          secs[t] * 1e3 * static_cast<double>(micro_batches);
  }
}

// The case's name on its progress line and trace slice: the variant, then what the table's
// optional columns say, then the shape.
std::string case_name(const BenchRun& run, const BenchJob& job, const BenchVariant& v) {
  std::string name = v.label;
  if (run.show_scope) name += std::string(" scope=") + pipeline_scope_name(v.scope);
  if (run.show_layers) name += " L=" + std::to_string(job.num_layers);
  if (run.show_micro_batches) name += " M=" + std::to_string(run.options.micro_batches);
  if (v.paired) name += " paired";
  if (v.delay_wgrad) name += " delay-wgrad";
  return name + " " + job.shape.describe();
}

std::vector<Case> make_cases(const BenchRun& run, const BenchJob& job, const BlockShape& bshape) {
  std::vector<Case> cases;
  for (const BenchVariant& v : job.variants) {
    Case k;
    k.v = &v;
    k.plan = v.schedule.plan(job.shape.N);
    k.stage_ms.assign(kNumStages, {});
    PassShape pass{job.num_layers, v.scope, false};
    pass.delay_wgrad = v.delay_wgrad;  // backward lists only
    pass.tensor_parallel = bshape.tensor_parallel;  // the attention's all-reduces as comm tasks
    pass.sequence_parallel = bshape.sequence_parallel;            // gathers and reduce-scatters instead
    pass.expert_tensor_parallel = bshape.expert_tensor_parallel;  // and the experts' (ETP)
    const std::vector<StageTask> lists[2] = {forward_tasks(k.plan, v.order, pass),
                                             backward_tasks(k.plan, v.order, pass)};
    k.in_lists.assign(kNumStages, false);
    for (const std::vector<StageTask>& list : lists)
      for (const StageTask& t : list) k.in_lists[static_cast<int>(t.stage)] = true;
    if (run.hw) predict_case(k, lists, pass, bshape, *run.hw, run.options.micro_batches);
    k.shown_P = static_cast<int64_t>(v.schedule.kind == ScheduleKind::MoePipe ? k.plan.moe.size() - 1
                                                                              : k.plan.attention.size() - 1);
    k.case_name = case_name(run, job, v);
    k.rec = std::make_unique<TraceRecorder>();
    k.exec = std::make_unique<StreamedBlock>(v.schedule, v.order, k.rec.get(), run.world.rank(), v.scope, run.device);
    configure_step_executor(*k.exec, v.paired, v.delay_wgrad, bshape, run.hw);
    cases.push_back(std::move(k));
  }
  return cases;
}

// The slices of a case's last repeat in the invocation's trace, under one slice of the whole step.
void trace_case(BenchRun& run, const Case& k, const StepTiming& step, double ms, size_t case_number,
                const std::vector<TraceSlice>& slices) {
  TraceSlice whole;
  whole.rank = run.world.rank();
  whole.track = "case";
  whole.name = k.case_name;
  whole.start_us = step.start_us;
  whole.duration_us = step.end_us - step.start_us;
  whole.args = {{"case", static_cast<int64_t>(case_number)},
                {"time_ms", ms},
                {"micro_batches", run.options.micro_batches},
                {"paired", static_cast<int64_t>(k.v->paired)},
                {"delay_wgrad", static_cast<int64_t>(k.v->delay_wgrad)}};
  run.trace.add_slice(std::move(whole));
  for (const TraceSlice& sl : slices) run.trace.add_slice(sl);
}

// One step (M micro-batches, each a forward + backward of every block of the job) under case k;
// the measurements are kept from the timed rounds, the slices of the last round go to the
// invocation's trace.
void run_case_once(BenchRun& run, StepInputs& in, Case& k, bool timed, bool last, size_t case_number) {
  Communicator& world = run.world;
  in.blocks.params().zero_grad();
  k.rec->clear();
  in.expert_group.reset();
  world.barrier();
  const StepTiming step = run_step(*k.exec, k.v->paired, in, run.device);
  double ms = step.ms;
  const std::vector<TraceSlice> slices = k.rec->slices();
  StepSums sums = sum_step_slices(slices, step.list_ends_us);
  Tensor per_stage = Tensor::zeros({kNumStages});
  std::copy(sums.stage_ms.begin(), sums.stage_ms.end(), per_stage.data<float>());
  world.all_reduce_sum(per_stage);
  world.all_reduce_max(ms);
  world.all_reduce_max(sums.compute_ms);
  world.all_reduce_max(sums.comm_ms);
  world.all_reduce_max(sums.pass_bound_ms);
  std::array<int64_t, 3> bytes{};
  for (size_t t = 0; t < bytes.size(); ++t) {
    bytes[t] = in.expert_group.all_to_all_bytes(static_cast<DType>(t));
    world.all_reduce_sum(bytes[t]);
  }
  int64_t held = step.forward_held_bytes;
  world.all_reduce_max(held);
  if (timed) {
    k.all_to_all_bytes = bytes;
    k.forward_held_bytes = run.device == Device::CPU ? held : -1;
    k.pass_bounds.push_back(sums.pass_bound_ms);
    k.times.push_back(ms);
    k.computes.push_back(sums.compute_ms);
    k.comms.push_back(sums.comm_ms);
    for (int i = 0; i < kNumStages; ++i) k.stage_ms[i].push_back(per_stage.data<float>()[i] / world.size());
  }
  if (last && !run.options.trace.empty()) trace_case(run, k, step, ms, case_number, slices);
}

// Every case of the job runs once per round, round after round, so a slow spell of the machine
// falls on all of them alike instead of on whichever case ran then.
void time_cases(BenchRun& run, StepInputs& in, std::vector<Case>& cases) {
  const BenchOptions& o = run.options;
  const int64_t runs = o.predict_only ? 0 : o.warmup + o.repeats;
  for (int64_t r = 0; r < runs; ++r)
    for (size_t ci = 0; ci < cases.size(); ++ci)
      run_case_once(run, in, cases[ci], r >= o.warmup, r == runs - 1, run.done_cases + ci + 1);
}

// The step settings of a variant as a key: pairing and delayed weight gradients.
std::string step_key(const BenchVariant& v) {
  return std::string(v.paired ? "paired" : "unpaired") + (v.delay_wgrad ? " delayed" : "");
}

// Twins by key (the label names the schedule, P, order, chunks): a case's sequential reference is
// `sequential` in the same step settings; a model-scope case's block-scope twin has the same label
// and step settings; a paired case's unpaired twin has the same label and scope, unpaired and
// undelayed (M is the invocation's).
struct Twins {
  std::map<std::string, double> sequential, block_scope, unpaired;

  void add(const BenchVariant& v, double ms) {
    if (v.schedule.kind == ScheduleKind::Sequential && !v.planned) sequential[step_key(v)] = ms;
    if (v.scope == PipelineScope::Block) block_scope[v.label + "|" + step_key(v)] = ms;
    if (!v.paired && !v.delay_wgrad) unpaired[v.label + "|" + pipeline_scope_name(v.scope)] = ms;
  }
  static std::optional<double> ratio(const std::map<std::string, double>& twins, const std::string& key,
                                     double ms) {
    const auto twin = twins.find(key);
    if (twin == twins.end() || twin->second <= 0 || ms <= 0) return std::nullopt;
    return twin->second / ms;
  }
  void ratios(const BenchVariant& v, Summary& m) const {
    m.vs_sequential = ratio(sequential, step_key(v), m.time_ms);
    if (v.scope == PipelineScope::Model)
      m.vs_block_scope = ratio(block_scope, v.label + "|" + step_key(v), m.time_ms);
    if (v.paired) m.vs_unpaired = ratio(unpaired, v.label + "|" + pipeline_scope_name(v.scope), m.time_ms);
  }
};

std::vector<Summary> summarize(const std::vector<Case>& cases) {
  std::vector<Summary> out(cases.size());
  Twins twins;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    Summary& m = out[i];
    m.time_ms = median(k.times);
    m.compute_ms = median(k.computes);
    m.comm_ms = median(k.comms);
    m.bound_ms = std::max(m.compute_ms, m.comm_ms);
    m.efficiency = m.time_ms > 0 ? m.bound_ms / m.time_ms : 0.0;
    if (!k.v->paired) {
      m.pass_bound_ms = median(k.pass_bounds);
      m.pass_efficiency = m.time_ms > 0 ? *m.pass_bound_ms / m.time_ms : 0.0;
    }
    twins.add(*k.v, m.time_ms);
  }
  for (size_t i = 0; i < cases.size(); ++i) twins.ratios(*cases[i].v, out[i]);
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
  if (run.show_micro_batches) cols.push_back({"M", 3, false});
  if (run.show_paired) cols.push_back({"paired", 6, true});
  if (run.show_delay) cols.push_back({"dwgrad", 6, true});
  cols.push_back({"ranks", 5, false});
  cols.push_back({"link", 9, true});
  cols.push_back({"time ms", 10, false});
  cols.push_back({"speedup", 7, false});
  if (run.show_scope) cols.push_back({"vs block", 8, false});
  if (run.show_paired) cols.push_back({"vs unpaired", 11, false});
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
  if (run.show_micro_batches) cells.push_back(num(run.options.micro_batches));
  if (run.show_paired) cells.push_back(k.v->paired ? "yes" : "no");
  if (run.show_delay) cells.push_back(k.v->delay_wgrad ? "yes" : "no");
  cells.push_back(num(run.world.size()));
  cells.push_back(run.link);
  cells.push_back(run.options.predict_only ? "-" : format_number("%.2f", m.time_ms));
  cells.push_back(ratio(m.vs_sequential));
  if (run.show_scope) cells.push_back(ratio(m.vs_block_scope));
  if (run.show_paired) cells.push_back(ratio(m.vs_unpaired));
  cells.push_back(format_number("%.2f", m.bound_ms));
  cells.push_back(format_number("%.2f", m.efficiency));
  cells.push_back(m.pass_efficiency ? format_number("%.2f", *m.pass_efficiency) : std::string("-"));
  cells.push_back(format_number("%.0f%%", m.time_ms > 0 ? 100.0 * m.comm_ms / m.time_ms : 0.0));
  if (run.hw) cells.push_back(format_number("%.2f", k.predicted_ms));
  return table_line(table_columns(run), cells);
}

// The case's settings and what it ran on, as JSON fields.
nlohmann::json json_case(const BenchRun& run, const BenchJob& job, const Case& k) {
  const BenchOptions& o = run.options;
  const GridShape& s = job.shape;
  const BlockSchedule& schedule = k.v->schedule;
  const Shown w = shown(k);
  return {{"schedule", k.v->planned ? "auto" : schedule_name(schedule.kind)},
          {"planned_schedule", schedule_name(schedule.kind)},
          {"pipe_degree", k.shown_P},
          {"stage_order", w.order},
          {"chunk_policy", w.chunks},
          {"moe_pipe_degree", w.moe_P},
          {"attention_boundaries", k.plan.attention},
          {"num_layers", job.num_layers},
          {"pipeline_scope", pipeline_scope_name(k.v->scope)},
          {"micro_batches", o.micro_batches},
          {"overlap_moe_expert_parallel_comm", k.v->paired},
          {"delay_wgrad_compute", k.v->delay_wgrad},
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
          {"expert_model_parallel_size", run.expert_parallel},
          {"tensor_model_parallel_size", o.tensor_parallel.tensor},
          {"sequence_parallel", o.tensor_parallel.sequence_parallel && o.tensor_parallel.tensor > 1},
          {"expert_tensor_parallel_size", o.tensor_parallel.expert_tensor},
          {"threads", o.threads},
          {"device", run.device == Device::CUDA ? "cuda" : "cpu"},
          {"link", run.link},
          {"bf16", o.bf16},
          {"gemm_implementation", run.gemm_implementation},
          {"all_to_all_dtype", o.bf16 ? "bf16" : "float32"}};
}

// Per stage (summed over chunks, blocks and micro-batches): the measured time (rank mean, median
// over repeats) and, with a profile, the cost model's price of the same tasks, each alone.
void json_stages(const BenchRun& run, const Case& k, nlohmann::json& j) {
  nlohmann::json stages = nlohmann::json::object(), predicted_stages = nlohmann::json::object();
  for (int i = 0; i < kNumStages; ++i) {
    if (!k.in_lists[i]) continue;  // a stage of the other scope, gradient reduction, undelayed wgrad
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
}

nlohmann::json json_row(const BenchRun& run, const BenchJob& job, const Case& k, const Summary& m) {
  auto optional = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  nlohmann::json j = json_case(run, job, k);
  j["all_to_all_bytes"] = {{"float32", k.all_to_all_bytes[static_cast<size_t>(DType::F32)]},
                           {"bf16", k.all_to_all_bytes[static_cast<size_t>(DType::BF16)]},
                           {"int32", k.all_to_all_bytes[static_cast<size_t>(DType::I32)]}};
  j["forward_held_bytes"] =
      k.forward_held_bytes >= 0 ? nlohmann::json(k.forward_held_bytes) : nlohmann::json(nullptr);
  j["time_ms"] = run.options.predict_only ? nlohmann::json(nullptr) : nlohmann::json(m.time_ms);
  j["compute_ms"] = m.compute_ms;
  j["comm_ms"] = m.comm_ms;
  j["speedup_vs_sequential"] = optional(m.vs_sequential);
  j["speedup_vs_block_scope"] = optional(m.vs_block_scope);
  j["speedup_vs_unpaired"] = optional(m.vs_unpaired);
  j["step_bound_ms"] = m.bound_ms;
  j["overlap_bound_ms"] = m.bound_ms;  // the step bound's older name
  j["efficiency"] = m.efficiency;
  j["pass_overlap_bound_ms"] = optional(m.pass_bound_ms);  // null for a paired step
  j["pass_efficiency"] = optional(m.pass_efficiency);
  json_stages(run, k, j);
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
  // The folded layout (train/layout.h): with --tensor-model-parallel-size T the blocks' attention is
  // split over T consecutive ranks, which read the same tokens; EP as asked, or its default.
  ParallelSizes sizes = o.tensor_parallel;
  AMPIPE_CHECK(o.expert_parallel >= 0)
      << "--expert-model-parallel-size must be at least 1 (or 0, the default), got " << o.expert_parallel;
  sizes.expert = o.expert_parallel;
  TrainingGroups groups = make_training_groups(world, make_layout(world.size(), sizes, c));
  run.expert_parallel = groups.expert_group->size();
  TimedCommunicator expert_group(*groups.expert_group);
  ModelParallel parallel{&expert_group, nullptr};
  parallel.tensor_group = groups.tensor_group.get();
  parallel.expert_tensor_group = groups.expert_tensor_group.get();
  parallel.sequence_parallel = groups.sequence_parallel();
  StandaloneBlock blocks(c, parallel, job.num_layers, run.device);
  blocks.initialize(o.seed);
  const int64_t B = o.micro_batch_size;
  const uint64_t rank_seed = o.seed + static_cast<uint64_t>(groups.data_parallel_group()->rank());
  // Sequence parallel: each rank's rows of the residual stream, N / T positions per sequence.
  AMPIPE_CHECK(!parallel.sp() || s.N % sizes.tensor == 0)
      << "--sequence-parallel: --seq-length " << s.N << " is not divisible by --tensor-model-parallel-size "
      << sizes.tensor;
  const int64_t local_N = parallel.sp() ? s.N / sizes.tensor : s.N;
  Tensor x = Tensor::empty({B * local_N, s.d}), dy = Tensor::empty({B * local_N, s.d});
  fill_normal(x, mix_seed(rank_seed, 1), 1.0f);
  fill_normal(dy, mix_seed(rank_seed, 2), 1e-3f);
  // Drawn on the host, then moved; every micro-batch reads the same x and dy.
  StepInputs in{blocks, x.to(run.device), dy.to(run.device), B, local_N, s.E, o.micro_batches, expert_group};
  BlockShape bshape{c, B, s.N, groups.expert_group->size()};
  bshape.tensor_parallel = sizes.tensor;
  bshape.sequence_parallel = parallel.sp();
  bshape.expert_tensor_parallel = sizes.expert_tensor;

  std::vector<Case> cases = make_cases(run, job, bshape);
  time_cases(run, in, cases);
  report_cases(run, job, cases);
}

}  // namespace ampipe
