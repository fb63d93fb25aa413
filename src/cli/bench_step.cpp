#include "cli/bench_step.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>

#include "core/error.h"
#include "core/host_cache.h"
#include "model/block.h"
#include "pipeline/streamed_block.h"

namespace ampipe {

namespace {

using Clock = std::chrono::steady_clock;

// d(loss)/d(aux) of every block in the bench's backward passes.
constexpr double kAuxGradScale = 0.01;

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

int64_t host_cache_in_use() { return static_cast<int64_t>(host_cache_stats().in_use_bytes); }

// The contexts and routing statistics of every micro-batch of one step, and the passes over them.
class MicroBatches {
 public:
  MicroBatches(const StreamedBlock& exec, StepInputs& in) : exec_(exec), in_(in) {
    const size_t M = static_cast<size_t>(in.micro_batches), L = in.blocks.blocks().size();
    ctx_.assign(M, std::vector<BlockContext>(L));
    stats_.assign(M, std::vector<RoutingStats>(L));
    for (std::vector<RoutingStats>& per_block : stats_)
      for (RoutingStats& s : per_block) s.reset(in.num_experts);
  }
  void forward(size_t m) {
    exec_.forward_layers(in_.blocks.blocks(), ctx_[m], in_.x, in_.batch, in_.seq_len, stats_[m]);
  }
  void backward(size_t m) {
    exec_.backward_layers(in_.blocks.blocks(), ctx_[m], in_.dy, stats_[m], kAuxGradScale, {});
  }
  // B(m) and F(m + 1) as one merged list.
  void paired(size_t m) {
    exec_.paired_layers(in_.blocks.blocks(), PairedBackward{ctx_[m], in_.dy, stats_[m], kAuxGradScale},
                        PairedForward{ctx_[m + 1], in_.x, in_.batch, in_.seq_len, stats_[m + 1]});
  }

 private:
  const StreamedBlock& exec_;
  StepInputs& in_;
  std::vector<std::vector<BlockContext>> ctx_;
  std::vector<std::vector<RoutingStats>> stats_;
};

}  // namespace

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

void configure_step_executor(StreamedBlock& exec, bool paired, bool delay_wgrad, const BlockShape& shape,
                             const std::optional<HardwareProfile>& hw) {
  exec.set_delay_wgrad(delay_wgrad);
  if (!paired) return;
  AMPIPE_CHECK(hw.has_value())
      << "bench: a paired case merges its passes by the cost model, which needs a profile";
  BlockShape priced = shape;
  priced.delay_wgrad = delay_wgrad;
  exec.set_task_seconds(stage_pricer(priced, *hw));
}

StepTiming run_step(const StreamedBlock& exec, bool paired, StepInputs& in, Device device) {
  const size_t M = static_cast<size_t>(in.micro_batches);
  AMPIPE_CHECK(M >= 1 && (!paired || M >= 2))
      << "bench: a " << (paired ? "paired " : "") << "step of " << M << " micro-batches";
  MicroBatches batches(exec, in);
  StepTiming t;
  auto list_done = [&t] { t.list_ends_us.push_back(trace_clock_us()); };
  t.start_us = trace_clock_us();
  const auto t0 = Clock::now();
  const int64_t held_before = host_cache_in_use();
  batches.forward(0);
  t.forward_held_bytes = host_cache_in_use() - held_before;
  list_done();
  for (size_t m = 0; m + 1 < M; ++m) {
    if (paired) {
      batches.paired(m);
      list_done();
      continue;
    }
    batches.backward(m);
    list_done();
    batches.forward(m + 1);
    list_done();
  }
  batches.backward(M - 1);
  if (device == Device::CUDA) cuda_synchronize();  // the step's GPU work is done before the clock stops
  t.ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  t.end_us = trace_clock_us();
  list_done();
  return t;
}

StepSums sum_step_slices(const std::vector<TraceSlice>& slices, const std::vector<double>& list_ends_us) {
  StepSums s;
  s.stage_ms.assign(kNumStages, 0.0f);
  std::vector<std::array<double, 2>> per_list(std::max<size_t>(list_ends_us.size(), 1), {0.0, 0.0});
  for (const TraceSlice& sl : slices) {
    const int i = slice_stage(sl.name);
    if (i >= 0) s.stage_ms[i] += static_cast<float>(sl.duration_us / 1e3);
    const bool comm = sl.track == "comm";
    if (!comm && sl.track != "compute") continue;
    (comm ? s.comm_ms : s.compute_ms) += sl.duration_us / 1e3;
    // The list the slice ran in: the first that returned after the slice started.
    size_t list = static_cast<size_t>(
        std::upper_bound(list_ends_us.begin(), list_ends_us.end(), sl.start_us) - list_ends_us.begin());
    list = std::min(list, per_list.size() - 1);
    per_list[list][comm ? 1 : 0] += sl.duration_us / 1e3;
  }
  for (const std::array<double, 2>& l : per_list) s.pass_bound_ms += std::max(l[0], l[1]);
  return s;
}

}  // namespace ampipe
