#include "plan/cost_model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

// Notation: B sequences, chunk [b, e) of length len = e - b, T = B * len tokens of the stage
// (whole-sequence stages: T = B * N), d hidden, f expert FFN hidden, E experts, k top-k, R ranks,
// rows = k * T routed rows (balanced routing: a rank receives as many rows as it sends), s bytes per
// element; q = h hd = d query columns and w = (h + 2g) hd the QKV width (g KV heads: grouped-query
// attention narrows K and V, not the attention core, whose FLOPs count query heads). GEMM FLOPs are
// 2 * M * N * K. Elementwise passes count bytes read + bytes written:
//   norm fwd 2Td (x in, y out)             norm bwd 3Td (dy, x in, dx out)
//   bias add 2nw on [n, w]                 bias bwd nw (column sums read dy)
//   residual add 3Td (a, b in, a out)      copy / gather / scatter of n rows 2nd
//   gelu fwd 2 rows f, bwd 3 rows f        swiglu fwd 3 rows f, bwd 5 rows f
//   rope fwd or bwd 2T(q + g hd): q and k  softmax over [T, E] fwd 2TE, bwd 3TE; top-k reads TE
//   permute fwd 2 rows d                   permute bwd (rows + T) d (rows in, tokens out)
//   unpermute fwd (rows + T) d             unpermute bwd (T + 2 rows) d (dout, saved output in; drows out)
// Bias terms count only with biases (ModelConfig::add_bias_linear). A SwiGLU expert has three GEMMs
// (m = 3) where a GELU expert has two (m = 2).
// Stage by stage (what pipeline/streamed_block.cpp, model/attention_layer.cpp and model/moe/*.cpp do):
//   AttnBegin      norm1 + QKV (+ rope) over T = BN: gemm 2Tdw; bytes norm 2Td + bias 2Tw + rope
//   AttnChunk      core fwd B*2d*len*(e+b+1) (sum over queries i in [b,e) of (i+1) keys x 4d);
//                  proj gemm 2Td^2; bytes bias 2Td + residual 3Td + copy into the token buffer
//                  2Td, + 4Td gathers of q and x rows when B > 1 and the chunk is partial
//   Route          norm2 2Td, router gemm 2TdE, softmax + top-k 3TE, permute 2 rows d,
//                  + 2Td gather of the chunk's rows when B > 1 and the chunk is partial
//   Dispatch       2 all-to-all calls (per-expert counts, then the rows); wire rows*d*s*remote
//   Experts        gemm 2m rows d f; bytes bias (m - 1) 2 rows f + activation + bias 2 rows d,
//                  + regroup gather and scatter 4 rows d when R > 1
//   Combine        1 all-to-all call; wire as Dispatch
//   Finish         unpermute (rows + T) d + residual 3Td + copy into the block output 2Td
//   FinishBwd      unpermute bwd (T + 2 rows) d, + 2Td gather of dy rows when B > 1 and partial
//   CombineBwd     1 call; wire as Dispatch
//   ExpertsBwd     gemm 4m rows d f (dW and dX of every GEMM); bytes bias bwd rows (d + (m - 1) f) +
//                  activation bwd, + regroup 4 rows d when R > 1
//   (with delay_wgrad: ExpertsBwd gemm 2m rows d f, activation bwd and regroup; ExpertsWgrad gemm
//   2m rows d f and bias bwd)
//   DispatchBwd    1 call; wire as Dispatch
//   RouteBwd       permute bwd (rows + T) d, softmax + top-k bwd 4TE, router gemm 4TdE,
//                  norm2 bwd 3Td, residual 3Td, copy into the token-buffer gradient 2Td
//   AttnChunkBwd   core bwd 2.5x the forward FLOPs; proj gemm 4Td^2; bias bwd Td,
//                  + 4Td gather of dh rows and scatter of dq when B > 1 and partial
//   AttnFinishBwd  over T = BN: QKV gemm 4Tdw; bytes bias bwd Tw + rope + norm1 bwd 3Td + residual 3Td
//   QkvChunk       AttnBegin over the chunk's rows, + 2Td gather of x and 2Tw scatter of qkv rows
//                  when B > 1 and partial
//   QkvChunkBwd    AttnFinishBwd over the chunk's rows, + 2Tw gather of dqkv and 4Td gather and
//                  scatter of the residual rows when B > 1 and partial
//   GradReduce     see grad_reduce_seconds (cost_model.h)
// Small terms (LN statistics, lse, gates, index arrays) are left out.

namespace ampipe {

void BlockShape::validate() const {
  config.validate();
  AMPIPE_CHECK(batch >= 1) << "the planner's batch (sequences per block) must be at least 1, got " << batch;
  AMPIPE_CHECK(seq_len >= 1) << "the planner's sequence length must be at least 1, got " << seq_len;
  AMPIPE_CHECK(ranks >= 1) << "--ranks must be at least 1, got " << ranks;
  AMPIPE_CHECK(config.num_experts % ranks == 0)
      << "--moe-num-experts " << config.num_experts << " is not divisible by --ranks " << ranks
      << "; every rank holds E / R experts";
  AMPIPE_CHECK(data_ranks == 0 || (data_ranks >= 1 && data_ranks % ranks == 0))
      << "the data-parallel size (ranks sharing the dense gradients) must be a multiple of the expert-parallel "
         "size "
      << ranks << " (or 0: the same), got " << data_ranks;
  AMPIPE_CHECK(std::isfinite(remote_fraction) && remote_fraction <= 1)
      << "the remote fraction of routed rows must be in [0, 1] (or < 0 for uniform routing), got "
      << remote_fraction;
}

double BlockShape::effective_remote_fraction() const {
  if (remote_fraction >= 0) return remote_fraction;
  return double(ranks - 1) / double(ranks);
}

namespace {

// The profile's own check (plan/profile.h), naming the profile and the field.
void check_profile(const HardwareProfile& hw) { hw.validate("hardware profile '" + hw.name + "'"); }

double link_seconds(const LinkProfile& link, double bytes, int calls) {
  return calls * link.latency + bytes / link.bandwidth;
}

}  // namespace

StageWork stage_work(Stage stage, int64_t begin, int64_t end, const BlockShape& shape,
                     int64_t bytes_per_element) {
  shape.validate();
  const bool whole_sequence = stage == Stage::AttnBegin || stage == Stage::AttnFinishBwd;
  if (whole_sequence) {
    begin = 0;
    end = shape.seq_len;
  }
  AMPIPE_CHECK(0 <= begin && begin < end && end <= shape.seq_len)
      << "stage '" << stage_name(stage) << "': chunk [" << begin << ", " << end << ") is not inside [0, "
      << shape.seq_len << ")";
  const ModelConfig& c = shape.config;
  const double B = double(shape.batch), d = double(c.hidden_size), f = double(c.ffn_hidden_size);
  const double E = double(c.num_experts), k = double(c.top_k), s = double(bytes_per_element);
  const double len = double(end - begin), T = B * len, rows = k * T;
  const double q = double(c.num_attention_heads * c.head_dim());
  const double w = q + 2.0 * double(c.kv_heads() * c.head_dim());
  const double bias = c.add_bias_linear ? 1.0 : 0.0;
  const double rope = c.rope() ? 2 * T * (q + (w - q) / 2) : 0.0;  // q and k columns
  const double m = c.swiglu ? 3.0 : 2.0;  // GEMMs per expert
  const double activation_fwd = (c.swiglu ? 3.0 : 2.0) * rows * f, activation_bwd = (c.swiglu ? 5.0 : 3.0) * rows * f;
  // Partial chunks of several sequences are gathered / scattered row by row (not a view).
  const bool gathers = shape.batch > 1 && !(begin == 0 && end == shape.seq_len);
  const bool distributed = shape.ranks > 1;
  // sum_{i=b}^{e-1} (i + 1) keys x 4d FLOPs = 2d (e - b)(e + b + 1), per sequence.
  const double attention_core = B * 2 * d * len * double(end + begin + 1);
  // --bf16: the rows cross the all-to-alls in bf16 (model/moe/dispatcher.h), two bytes an element.
  const double wire = rows * d * (c.bf16 ? 2.0 : s) * shape.effective_remote_fraction();

  StageWork work;
  double elems = 0;  // bytes / s
  switch (stage) {
    case Stage::AttnBegin:
      work.gemm_flops = 2 * T * d * w;
      elems = 2 * T * d + bias * 2 * T * w + rope;
      break;
    case Stage::AttnChunk:
      work.attention_forward_flops = attention_core;
      work.gemm_flops = 2 * T * d * d;
      elems = bias * 2 * T * d + 5 * T * d + (gathers ? 4 * T * d : 0);
      break;
    case Stage::Route:
      work.gemm_flops = 2 * T * d * E;
      elems = 2 * T * d + 3 * T * E + 2 * rows * d + (gathers ? 2 * T * d : 0);
      break;
    case Stage::Experts:
      work.gemm_flops = 2 * m * rows * d * f;
      elems = bias * ((m - 1) * 2 * rows * f + 2 * rows * d) + activation_fwd + (distributed ? 4 * rows * d : 0);
      break;
    case Stage::Finish:
      elems = (rows + T) * d + 3 * T * d + 2 * T * d;
      break;
    case Stage::FinishBwd:
      elems = (T + 2 * rows) * d + (gathers ? 2 * T * d : 0);
      break;
    case Stage::ExpertsBwd:
      work.gemm_flops = (shape.delay_wgrad ? 2 : 4) * m * rows * d * f;
      elems = (shape.delay_wgrad ? 0 : bias * rows * (d + (m - 1) * f)) + activation_bwd +
              (distributed ? 4 * rows * d : 0);
      break;
    case Stage::ExpertsWgrad:
      work.gemm_flops = 2 * m * rows * d * f;
      elems = bias * rows * (d + (m - 1) * f);
      break;
    case Stage::RouteBwd:
      work.gemm_flops = 4 * T * d * E;
      elems = (rows + T) * d + 4 * T * E + 3 * T * d + 3 * T * d + 2 * T * d;
      break;
    case Stage::AttnChunkBwd:
      work.attention_backward_flops = 2.5 * attention_core;
      work.gemm_flops = 4 * T * d * d;
      elems = bias * T * d + (gathers ? 4 * T * d : 0);
      break;
    case Stage::AttnFinishBwd:
      work.gemm_flops = 4 * T * d * w;
      elems = bias * T * w + rope + 6 * T * d;
      break;
    case Stage::QkvChunk:
      work.gemm_flops = 2 * T * d * w;
      elems = 2 * T * d + bias * 2 * T * w + rope + (gathers ? 2 * T * d + 2 * T * w : 0);
      break;
    case Stage::QkvChunkBwd:
      work.gemm_flops = 4 * T * d * w;
      elems = bias * T * w + rope + 6 * T * d + (gathers ? 2 * T * w + 4 * T * d : 0);
      break;
    case Stage::GradReduce:   // priced by grad_reduce_seconds
    case Stage::ParamGather:  // priced by param_gather_seconds
      break;
    case Stage::Dispatch:
    case Stage::Combine:
    case Stage::CombineBwd:
    case Stage::DispatchBwd:
      if (distributed) {
        work.wire_bytes = wire;
        // exchange_dispatch sends the per-expert counts first, then the rows; the other three
        // exchanges reuse those counts (model/moe/dispatcher.cpp).
        work.collective_calls = stage == Stage::Dispatch ? 2 : 1;
      }
      break;
  }
  work.memory_bytes = elems * s;
  work.bf16_gemms = c.bf16;
  return work;
}

double all_to_all_seconds(double remote_bytes, int calls, int64_t ranks, const HardwareProfile& hw) {
  check_profile(hw);
  if (ranks <= 1) return 0;
  const int64_t local = std::min(ranks, hw.ranks_per_node);  // ranks of one node, this one included
  const double peers = double(ranks - 1);
  double seconds = 0;
  if (local > 1)
    seconds = std::max(
        seconds, link_seconds(hw.intra_node, remote_bytes * double(local - 1) / peers, calls));
  if (ranks > local)
    seconds = std::max(seconds, link_seconds(hw.inter_node, remote_bytes * double(ranks - local) / peers, calls));
  // GPU ranks over MPI copy what they send to the host first and what they receive back after.
  if (hw.host_staging_bandwidth > 0) seconds += 2 * remote_bytes / hw.host_staging_bandwidth;
  return seconds;
}

double elementwise_seconds(double memory_bytes, const HardwareProfile& hw) {
  if (memory_bytes <= 0) return 0;
  if (hw.cache_bytes <= 0) return memory_bytes / hw.memory_bandwidth;
  const double working_set = memory_bytes / 2;
  const double in_cache = std::min(1.0, hw.cache_bytes / working_set);
  return memory_bytes * (in_cache / hw.cache_bandwidth + (1 - in_cache) / hw.memory_bandwidth);
}

double work_seconds(const StageWork& w, int64_t ranks, const HardwareProfile& hw) {
  check_profile(hw);
  double seconds = hw.task_overhead;
  seconds +=
      w.gemm_flops / (w.bf16_gemms && hw.matrix_flops_bf16 > 0 ? hw.matrix_flops_bf16 : hw.matrix_flops);
  seconds += w.attention_forward_flops / (hw.matrix_flops * hw.attention_efficiency);
  seconds += w.attention_backward_flops / (hw.matrix_flops * hw.attention_backward_efficiency);
  seconds += elementwise_seconds(w.memory_bytes, hw);
  if (w.collective_calls > 0) seconds += all_to_all_seconds(w.wire_bytes, w.collective_calls, ranks, hw);
  return seconds;
}

double stage_seconds(Stage stage, int64_t begin, int64_t end, const BlockShape& shape,
                     const HardwareProfile& hw) {
  return work_seconds(stage_work(stage, begin, end, shape, hw.bytes_per_element), shape.ranks, hw);
}

BlockGradients block_gradients(const ModelConfig& c, int64_t expert_ranks) {
  AMPIPE_CHECK(expert_ranks >= 1 && c.num_experts % expert_ranks == 0)
      << "the expert-parallel size " << expert_ranks << " must divide --moe-num-experts " << c.num_experts;
  const double d = double(c.hidden_size), f = double(c.ffn_hidden_size), E = double(c.num_experts);
  const double q = double(c.num_attention_heads * c.head_dim());
  const double w = q + 2.0 * double(c.kv_heads() * c.head_dim());
  const double bias = c.add_bias_linear ? 1.0 : 0.0;
  const double norms = 2 * (c.rms_norm() ? 1.0 : 2.0) * d;
  const double m = c.swiglu ? 3.0 : 2.0;
  BlockGradients g;
  g.dense = w * d + d * q + bias * (w + d) + d * E + norms;
  g.expert = E / double(expert_ranks) * (m * d * f + bias * ((m - 1) * f + d));
  return g;
}

// A ring collective over a block's data-parallel state: `wire` x (R - 1) / R of each buffer leaves
// each rank (2 for an all-reduce, 1 for an all-gather), then `passes` elementwise passes over it.
static double ring_seconds(const BlockShape& shape, const HardwareProfile& hw, double wire, double passes) {
  check_profile(hw);
  const BlockGradients g = block_gradients(shape.config, shape.ranks);
  const double s = double(hw.bytes_per_element);
  auto ring = [&](double elements, int64_t ranks) {
    if (ranks <= 1 || elements <= 0) return 0.0;
    const double bytes = wire * double(ranks - 1) / double(ranks) * elements * s;
    return all_to_all_seconds(bytes, 1, ranks, hw) + elementwise_seconds(passes * elements * s, hw);
  };
  return hw.task_overhead + ring(g.dense, shape.effective_data_ranks()) +
         ring(g.expert, shape.effective_data_ranks() / shape.ranks);
}

// The all-reduce, then one scaling pass (read and write: 4 element accesses with the packing).
double grad_reduce_seconds(const BlockShape& shape, const HardwareProfile& hw) {
  return ring_seconds(shape, hw, shape.sharded_optimizer ? 1 : 2, 4);
}

// The all-gather, then one unpacking pass.
double param_gather_seconds(const BlockShape& shape, const HardwareProfile& hw) { return ring_seconds(shape, hw, 1, 2); }

double stage_seconds(const StageTask& task, const ChunkPlan& plan, const BlockShape& shape,
                     const HardwareProfile& hw) {
  if (task.stage == Stage::GradReduce) return grad_reduce_seconds(shape, hw);
  if (task.stage == Stage::ParamGather) return param_gather_seconds(shape, hw);
  if (task.stage == Stage::AttnBegin || task.stage == Stage::AttnFinishBwd)
    return stage_seconds(task.stage, 0, shape.seq_len, shape, hw);
  const std::vector<int64_t>& bounds = is_attention_stage(task.stage) ? plan.attention : plan.moe;
  AMPIPE_CHECK(task.chunk >= 0 && static_cast<size_t>(task.chunk) + 1 < bounds.size())
      << "stage '" << stage_name(task.stage) << "' names chunk " << task.chunk << " of a plan with "
      << (bounds.empty() ? 0 : bounds.size() - 1) << " chunks on that side";
  AMPIPE_CHECK(bounds.back() == shape.seq_len)
      << "the chunk plan ends at " << bounds.back() << " but the sequence length is " << shape.seq_len;
  return stage_seconds(task.stage, bounds[task.chunk], bounds[task.chunk + 1], shape, hw);
}

std::function<double(const StageTask&, const ChunkPlan&)> stage_pricer(const BlockShape& shape,
                                                                       const HardwareProfile& hw) {
  return [shape, hw](const StageTask& task, const ChunkPlan& plan) {
    return stage_seconds(task, plan, shape, hw);
  };
}

std::vector<double> task_seconds(const std::vector<StageTask>& tasks, const ChunkPlan& plan,
                                 const BlockShape& shape, const HardwareProfile& hw) {
  shape.validate();
  check_profile(hw);
  std::vector<double> seconds;
  seconds.reserve(tasks.size());
  for (const StageTask& t : tasks) seconds.push_back(stage_seconds(t, plan, shape, hw));
  return seconds;
}

}  // namespace ampipe
