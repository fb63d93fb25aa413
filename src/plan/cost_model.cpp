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
  // The world T x DP folds into ETP x EP x EDP (Megatron-Core's folding): at T = ETP = 1, DP is a
  // multiple of EP.
  AMPIPE_CHECK(data_ranks == 0 ||
               (data_ranks >= 1 && (tensor_parallel * data_ranks) % (expert_tensor_parallel * ranks) == 0))
      << "the data-parallel size (ranks sharing the dense gradients) x the tensor-parallel size "
      << tensor_parallel << " must be a multiple of the expert-tensor-parallel size "
      << expert_tensor_parallel << " x the expert-parallel size " << ranks << " (or 0: the same), got "
      << data_ranks;
  AMPIPE_CHECK(std::isfinite(remote_fraction) && remote_fraction <= 1)
      << "the remote fraction of routed rows must be in [0, 1] (or < 0 for uniform routing), got "
      << remote_fraction;
  check_tensor_parallel_sizes(config, tensor_parallel, sequence_parallel, expert_tensor_parallel);
}

void check_tensor_parallel_sizes(const ModelConfig& c, int64_t T, bool sequence_parallel, int64_t ETP) {
  AMPIPE_CHECK(T >= 1) << "--tensor-model-parallel-size must be at least 1, got " << T;
  AMPIPE_CHECK(ETP >= 1) << "--expert-tensor-parallel-size must be at least 1, got " << ETP;
  AMPIPE_CHECK(c.num_attention_heads % T == 0)
      << "--tensor-model-parallel-size " << T << " does not divide the " << c.num_attention_heads
      << " attention heads (--num-attention-heads); every rank holds heads / T of them";
  AMPIPE_CHECK(c.kv_heads() % T == 0)
      << "--tensor-model-parallel-size " << T << " does not divide the " << c.kv_heads()
      << " query groups (key/value heads, --num-query-groups); every rank holds "
         "groups / T of them";
  AMPIPE_CHECK(c.ffn_hidden_size % ETP == 0)
      << "--expert-tensor-parallel-size " << ETP << " does not divide the FFN width " << c.ffn_hidden_size
      << " (--ffn-hidden-size); every rank holds width / ETP columns of each expert";
  // Without sequence parallelism the ranks of a tensor-parallel group hold the same rows; an
  // expert-TP group splits the width of those rows only if it lies inside one such group.
  AMPIPE_CHECK(ETP == 1 || (sequence_parallel && T > 1) || T % ETP == 0)
      << "--expert-tensor-parallel-size " << ETP << " without --sequence-parallel needs a "
      << "--tensor-model-parallel-size it divides (the expert-TP group inside a tensor-parallel group, whose "
         "ranks "
         "hold the same rows), got "
      << T;
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

void check_layout(const BlockShape& shape, const HardwareProfile& hw) {
  shape.validate();
  check_profile(hw);
  const int64_t T = shape.tensor_parallel, ETP = shape.expert_tensor_parallel, R = shape.ranks;
  for (const auto& group : {std::pair<const char*, int64_t>{"--tensor-model-parallel-size", T},
                            std::pair<const char*, int64_t>{"--expert-tensor-parallel-size", ETP}})
    AMPIPE_CHECK(hw.ranks_per_node % group.second == 0)
        << group.first << " " << group.second << " does not fit the nodes of hardware profile '" << hw.name
        << "' (" << hw.ranks_per_node
        << " ranks per node): a tensor-parallel group lies inside one node, on its tensor link";
  const int64_t world = T * shape.effective_data_ranks();
  AMPIPE_CHECK(world % (ETP * R) == 0)
      << "the world of " << world << " ranks (--tensor-model-parallel-size " << T << " x "
      << shape.effective_data_ranks()
      << " data-parallel ranks) is not a multiple of --expert-tensor-parallel-size " << ETP
      << " x the expert-parallel size " << R
      << " (Megatron-Core's folding: attention T x DP, experts ETP x EP x EDP)";
}

namespace {

// The sizes of one stage task as one rank sees them (notation above).
struct Dims {
  double B, d, f, E, k, s, len, T, q, w, bias, rope, m;
  double tp = 1, rs = 1, etp = 1;  // T, the sequence split (T with --sequence-parallel, else 1), ETP
  double Tn = 0, rows = 0;         // tokens of the norms, residuals and MoE side; their routed rows
  double rows_e = 0, f_e = 0;      // rows and width of the experts' GEMMs (after the ETP gather)
  double wire_element = 0;         // bytes of an element in a collective (bf16: 2)
  bool gathers = false, distributed = false;
};

Dims dims_of(const BlockShape& shape, int64_t begin, int64_t end, int64_t bytes_per_element) {
  const ModelConfig& c = shape.config;
  Dims x{};
  x.B = double(shape.batch), x.d = double(c.hidden_size), x.f = double(c.ffn_hidden_size);
  x.E = double(c.num_experts), x.k = double(c.top_k), x.s = double(bytes_per_element);
  x.len = double(end - begin), x.T = x.B * x.len;
  x.q = double(c.num_attention_heads * c.head_dim());
  x.w = x.q + 2.0 * double(c.kv_heads() * c.head_dim());
  x.bias = c.add_bias_linear ? 1.0 : 0.0;
  x.rope = c.rope() ? 2 * x.T * (x.q + (x.w - x.q) / 2) : 0.0;  // q and k columns
  x.m = c.swiglu ? 3.0 : 2.0;                                   // GEMMs per expert
  x.tp = double(shape.tensor_parallel);
  x.rs = shape.sequence_split() ? x.tp : 1.0;
  x.etp = double(shape.expert_tensor_parallel);
  x.Tn = x.T / x.rs;
  x.rows = x.k * x.Tn;
  x.rows_e = x.rows * (shape.sequence_split() ? x.etp : 1.0);
  x.f_e = x.f / x.etp;
  // --bf16: the rows cross the all-to-alls (and the TP collectives) in bf16, two bytes an element.
  x.wire_element = c.bf16 ? 2.0 : x.s;
  // Partial chunks of several sequences are gathered / scattered row by row (not a view).
  x.gathers = shape.batch > 1 && !(begin == 0 && end == shape.seq_len);
  x.distributed = shape.ranks > 1;
  return x;
}

// Attention-side stages: GEMMs, the core, rope and the QKV bias split by heads (/ tp); norms,
// residuals and copies of rows over the rank's rows (/ rs). Returns elementwise elements.
double attention_work(Stage stage, const Dims& x, double core, StageWork& work) {
  const double T = x.T, d = x.d, w = x.w, tp = x.tp, rs = x.rs;
  const double g = x.gathers ? 1.0 : 0.0;
  switch (stage) {
    case Stage::AttnBegin:
      work.gemm_flops = 2 * T * d * w / tp;
      return 2 * T * d / rs + (x.bias * 2 * T * w + x.rope) / tp;
    case Stage::QkvChunk:
      work.gemm_flops = 2 * T * d * w / tp;
      return (2 * T * d + g * 2 * T * d) / rs + (x.bias * 2 * T * w + x.rope + g * 2 * T * w) / tp;
    case Stage::AttnChunk:
      work.attention_forward_flops = core / tp;
      work.gemm_flops = 2 * T * d * d / tp;
      return (x.bias * 2 * T * d + 5 * T * d + g * 2 * T * d) / rs + g * 2 * T * d / tp;
    case Stage::AttnChunkBwd:
      work.attention_backward_flops = 2.5 * core / tp;
      work.gemm_flops = 4 * T * d * d / tp;
      return (x.bias * T * d + g * 2 * T * d) / rs + g * 2 * T * d / tp;
    case Stage::AttnFinishBwd:
      work.gemm_flops = 4 * T * d * w / tp;
      return (x.bias * T * w + x.rope) / tp + 6 * T * d / rs;
    case Stage::QkvChunkBwd:
      work.gemm_flops = 4 * T * d * w / tp;
      return (x.bias * T * w + x.rope + g * 2 * T * w) / tp + (6 * T * d + g * 4 * T * d) / rs;
    default:
      return 0;
  }
}

// MoE-side compute stages over the rank's Tn tokens and rows (experts: rows_e at width f_e).
double moe_work(Stage stage, const Dims& x, bool delay_wgrad, StageWork& work) {
  const double Tn = x.Tn, d = x.d, E = x.E, rows = x.rows, re = x.rows_e, fe = x.f_e, m = x.m;
  const double g = x.gathers ? 1.0 : 0.0, regroup = x.distributed ? 4 * rows * d : 0.0;
  const double activation_fwd = (m == 3 ? 3.0 : 2.0) * re * fe,
               activation_bwd = (m == 3 ? 5.0 : 3.0) * re * fe;
  switch (stage) {
    case Stage::Route:
      work.gemm_flops = 2 * Tn * d * E;
      return 2 * Tn * d + 3 * Tn * E + 2 * rows * d + g * 2 * Tn * d;
    case Stage::Experts:
      work.gemm_flops = 2 * m * re * d * fe;
      return x.bias * ((m - 1) * 2 * re * fe + 2 * re * d) + activation_fwd + regroup;
    case Stage::Finish:
      return (rows + Tn) * d + 3 * Tn * d + 2 * Tn * d;
    case Stage::FinishBwd:
      return (Tn + 2 * rows) * d + g * 2 * Tn * d;
    case Stage::ExpertsBwd:
      work.gemm_flops = (delay_wgrad ? 2 : 4) * m * re * d * fe;
      return (delay_wgrad ? 0 : x.bias * re * (d + (m - 1) * fe)) + activation_bwd + regroup;
    case Stage::ExpertsWgrad:
      work.gemm_flops = 2 * m * re * d * fe;
      return x.bias * re * (d + (m - 1) * fe);
    case Stage::RouteBwd:
      work.gemm_flops = 4 * Tn * d * E;
      return (rows + Tn) * d + 4 * Tn * E + 3 * Tn * d + 3 * Tn * d + 2 * Tn * d;
    default:
      return 0;
  }
}

// A TP collective: a ring over n ranks of a buffer of `elements` (the gathered or reduced tensor):
// an all-reduce sends 2 (n - 1) / n of its bytes, an all-gather or reduce-scatter (n - 1) / n.
void tensor_collective(double elements, double n, bool all_reduce, const Dims& x, StageWork& work) {
  if (n <= 1) return;
  work.tensor_wire_bytes = (all_reduce ? 2.0 : 1.0) * (n - 1) / n * elements * x.wire_element;
  work.tensor_calls = 1;
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
  const Dims x = dims_of(shape, begin, end, bytes_per_element);
  // sum_{i=b}^{e-1} (i + 1) keys x 4d FLOPs = 2d (e - b)(e + b + 1), per sequence.
  const double attention_core = x.B * 2 * x.d * x.len * double(end + begin + 1);
  const bool split = shape.sequence_split();
  StageWork work;
  double elems = 0;  // bytes / s
  switch (stage) {
    case Stage::GradReduce:   // priced by grad_reduce_seconds
    case Stage::ParamGather:  // priced by param_gather_seconds
      break;
    case Stage::Dispatch:
    case Stage::Combine:
    case Stage::CombineBwd:
    case Stage::DispatchBwd:
      if (x.distributed) {
        work.wire_bytes = x.rows * x.d * x.wire_element * shape.effective_remote_fraction();
        // exchange_dispatch sends the per-expert counts first, then the rows; the other three
        // exchanges reuse those counts (model/moe/dispatcher.cpp).
        work.collective_calls = stage == Stage::Dispatch ? 2 : 1;
      }
      break;
    case Stage::TpAttnGather:
    case Stage::TpAttnGatherBwd:
      tensor_collective(x.T * x.d, x.tp, false, x, work);
      break;
    case Stage::TpAttnReduce:
    case Stage::TpAttnReduceBwd:
      tensor_collective(x.T * x.d, x.tp, !split, x, work);
      break;
    case Stage::TpExpertsGather:
    case Stage::TpExpertsGatherBwd:
      tensor_collective(x.rows_e * x.d, x.etp, false, x, work);
      break;
    case Stage::TpExpertsReduce:
    case Stage::TpExpertsReduceBwd:
      tensor_collective(x.rows_e * x.d, x.etp, !split, x, work);
      break;
    default:
      elems = is_attention_stage(stage) ? attention_work(stage, x, attention_core, work)
                                        : moe_work(stage, x, shape.delay_wgrad, work);
  }
  work.memory_bytes = elems * x.s;
  work.bf16_gemms = shape.config.bf16;
  work.expert_stride = shape.expert_tensor_parallel;
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

double tensor_collective_seconds(double wire_bytes, int calls, const HardwareProfile& hw) {
  check_profile(hw);
  if (calls <= 0) return 0;
  double seconds = link_seconds(hw.tensor_parallel_link(), wire_bytes, calls);
  if (hw.host_staging_bandwidth > 0) seconds += 2 * wire_bytes / hw.host_staging_bandwidth;
  return seconds;
}

double work_seconds(const StageWork& w, int64_t ranks, const HardwareProfile& hw) {
  check_profile(hw);
  double seconds = hw.task_overhead;
  seconds +=
      w.gemm_flops / (w.bf16_gemms && hw.matrix_flops_bf16 > 0 ? hw.matrix_flops_bf16 : hw.matrix_flops);
  seconds += w.attention_forward_flops / (hw.matrix_flops * hw.attention_efficiency);
  seconds += w.attention_backward_flops / (hw.matrix_flops * hw.attention_backward_efficiency);
  seconds += elementwise_seconds(w.memory_bytes, hw);
  if (w.collective_calls > 0) {
    // The expert-parallel peers are expert_stride ranks apart (the ETP ranks of an expert sit
    // together), so a node holds ranks_per_node / stride of them.
    HardwareProfile spaced = hw;
    spaced.ranks_per_node = std::max<int64_t>(1, hw.ranks_per_node / std::max<int64_t>(1, w.expert_stride));
    seconds += all_to_all_seconds(w.wire_bytes, w.collective_calls, ranks, spaced);
  }
  seconds += tensor_collective_seconds(w.tensor_wire_bytes, w.tensor_calls, hw);
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
  // Experts over EDP = T x DP / (ETP x EP) ranks (the ranks holding the same experts).
  const int64_t expert_data =
      shape.tensor_parallel * shape.effective_data_ranks() / (shape.expert_tensor_parallel * shape.ranks);
  return hw.task_overhead + ring(g.dense, shape.effective_data_ranks()) + ring(g.expert, expert_data);
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
  if (task.stage == Stage::AttnBegin || task.stage == Stage::AttnFinishBwd ||
      (task.chunk < 0 && (task.stage == Stage::TpAttnGather || task.stage == Stage::TpAttnReduceBwd)))
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
