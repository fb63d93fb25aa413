// The tensor-parallel linear layers (model/tensor_parallel.h) on 2 and 4 ranks, under mpirun, paired
// as Megatron's MLP: x -> column-parallel -> row-parallel -> y. Every rank draws the same full x,
// weights, biases and dy from one seed, takes its shards, runs forward and backward, and the
// gathered h (the column layer's output), y, dh, dx, dW and db must equal model/linear.h on the
// full tensors within kTolerance, with and without sequence parallelism and biases, over the world
// and over groups split from it. Refusals (indivisible sizes) are thrown on every rank.
// Then the tensor-parallel attention half (model/attention_layer.h) against one rank, both families,
// whole and in sequence chunks, float32 and bf16; wrong shards failing; its refusals. Such blocks
// under the pipelined executors: mpi_test_tensor_parallel_blocks.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "grad_check.h"
#include "kernels/elementwise.h"
#include "model/attention_layer.h"
#include "model/linear.h"
#include "model/tensor_parallel.h"
#include "parallel/mpi_gtest_main.h"
#include "parallel/tensor_parallel_attention.h"
#include "test_util.h"

namespace ampipe {
namespace {

std::unique_ptr<Communicator> g_world;

using ::ampipe::testing::attention_config;
using ::ampipe::testing::error_of;
using ::ampipe::testing::expect_gradient_matches;
using ::ampipe::testing::gradient_element_ok;
using ::ampipe::testing::GradientTolerance;
using ::ampipe::testing::kAttentionTolerance;
using ::ampipe::testing::kBatch;
using ::ampipe::testing::kSeq;
using ::ampipe::testing::Named;
using ::ampipe::testing::random_tensor;
using ::ampipe::testing::to_double;

// tokens, model width (the column layer's in, the row layer's out), hidden width (the shards' split).
constexpr int64_t kTokens = 24, kModel = 48, kHidden = 64;

// The sharded results differ from the full ones only in float32 summation order: the row-parallel
// reduction adds T partial GEMMs of in/T terms, the GEMMs block differently on narrower matrices,
// and the differences flow through the pair. For a dot product of K terms, each order is within
// K u sum|a_k b_k| of the exact value (u = 2^-24), so two orders differ by at most 2 K u sum|a_k b_k|.
// Here K <= 64 (kHidden) and the inputs are scaled so that every product sum is O(1): x ~ N(0, 1),
// W ~ N(0, 1/in), dy ~ N(0, 1/N), so sum|a_k b_k| ~ 0.8 sqrt(K) <= ~8 even in the tails; the bound
// is 2 * 64 * 6e-8 * 8 = 6e-5, and atol = 2e-4 leaves room for the error h carries into y and dh
// carries into dx. With floor = 1e-3 > 2 atol and values O(1), grad_check.h's rule holds: an element
// above the floor must agree in sign and within atol + rtol |n|, so a zeroed or negated result fails
// (RejectsWrongAnswers checks that); the aggregate demands cosine > 1 - 1e-5, relative L2 < 1e-4.
constexpr GradientTolerance kTolerance{1e-3, 2e-4, 1e-4, 0.99999, 1e-4};

// grad_check.h's criterion as a verdict, for the wrong answers that must fail it.
bool passes(const std::vector<double>& a, const std::vector<double>& n,
            const GradientTolerance& tol = kTolerance) {
  double dot = 0, aa = 0, nn = 0, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!gradient_element_ok(a[i], n[i], tol)) return false;
    dot += a[i] * n[i], aa += a[i] * a[i], nn += n[i] * n[i], diff += (a[i] - n[i]) * (a[i] - n[i]);
  }
  if (std::sqrt(nn) <= tol.floor) return true;
  return aa > 0 && dot / std::sqrt(aa * nn) > tol.min_cosine && std::sqrt(diff / nn) < tol.max_relative_l2;
}

// The full [rows, T cols] from every rank's column block (written into zeros, summed: exact).
Tensor gather_cols(Communicator& group, const Tensor& shard) {
  const int64_t cols = shard.dim(1);
  Tensor full = Tensor::zeros({shard.dim(0), cols * group.size()});
  full.cols(group.rank() * cols, (group.rank() + 1) * cols).copy_from(shard);
  group.all_reduce_sum(full);
  return full;
}
// The full tensor from every rank's block of leading rows (or elements), rank-major.
Tensor gather_rows(Communicator& group, const Tensor& shard) {
  Shape shape = shard.shape();
  shape[0] *= group.size();
  Tensor full = Tensor::empty(shape);
  group.all_gather(shard.clone(), full);
  return full;
}

struct Mlp {
  Tensor x, w1, b1, w2, b2, dy;
};
Mlp draw(uint64_t seed, bool with_bias) {
  Mlp m{random_tensor({kTokens, kModel}, seed),
        random_tensor({kHidden, kModel}, seed + 1, 1.0f / std::sqrt(float{kModel})),
        with_bias ? random_tensor({kHidden}, seed + 2) : Tensor(),
        random_tensor({kModel, kHidden}, seed + 3, 1.0f / std::sqrt(float{kHidden})),
        with_bias ? random_tensor({kModel}, seed + 4) : Tensor(),
        random_tensor({kTokens, kModel}, seed + 5, 1.0f / std::sqrt(float{kTokens}))};
  return m;
}

// Every output of the pair, full size: h, y, dh, dx, dW1, db1, dW2, db2 (db* empty without bias).
using Outputs = std::vector<Tensor>;
const char* const kNames[] = {"h", "y", "dh", "dx", "dW1", "db1", "dW2", "db2"};

Outputs reference(const Mlp& m) {
  Tensor h = Tensor::empty({kTokens, kHidden}), y = Tensor::empty({kTokens, kModel});
  Tensor dh = Tensor::empty({kTokens, kHidden}), dx = Tensor::empty({kTokens, kModel});
  Tensor dw1 = Tensor::zeros({kHidden, kModel}), dw2 = Tensor::zeros({kModel, kHidden});
  Tensor db1 = m.b1.defined() ? Tensor::zeros({kHidden}) : Tensor();
  Tensor db2 = m.b2.defined() ? Tensor::zeros({kModel}) : Tensor();
  linear_forward(m.x, m.w1, m.b1, h);
  linear_forward(h, m.w2, m.b2, y);
  linear_backward(h, m.w2, m.dy, dh, dw2, db2);
  linear_backward(m.x, m.w1, dh, dx, dw1, db1);
  return {h, y, dh, dx, dw1, db1, dw2, db2};
}

Outputs sharded(Communicator& group, const Mlp& m, bool sp) {
  const int T = group.size(), t = group.rank();
  const int64_t local = sp ? kTokens / T : kTokens, hs = kHidden / T;
  const auto mine = [&](const Tensor& full) { return sp ? full.rows(t * local, (t + 1) * local) : full; };
  const Tensor w1 = tensor_parallel_weight_shard(m.w1, TensorParallelKind::Column, t, T);
  const Tensor b1 = tensor_parallel_bias_shard(m.b1, TensorParallelKind::Column, t, T);
  const Tensor w2 = tensor_parallel_weight_shard(m.w2, TensorParallelKind::Row, t, T);
  const Tensor b2 = tensor_parallel_bias_shard(m.b2, TensorParallelKind::Row, t, T);
  Tensor h = Tensor::empty({kTokens, hs}), y = Tensor::empty({local, kModel});
  Tensor dh = Tensor::empty({kTokens, hs}), dx = Tensor::empty({local, kModel});
  Tensor dw1 = Tensor::zeros({hs, kModel}), dw2 = Tensor::zeros({kModel, hs});
  Tensor db1 = b1.defined() ? Tensor::zeros({hs}) : Tensor(),
         db2 = b2.defined() ? Tensor::zeros({kModel}) : Tensor();
  column_parallel_forward(mine(m.x), w1, b1, group, sp, h);
  row_parallel_forward(h, w2, b2, group, sp, y);
  row_parallel_backward(h, w2, mine(m.dy), group, sp, dh, dw2, db2);
  column_parallel_backward(mine(m.x), w1, dh, group, sp, dx, dw1, db1);
  if (db2.defined()) {  // replicated: the same bits on every rank
    const Tensor every = gather_rows(group, db2);
    for (int k = 0; k < T; ++k)
      EXPECT_EQ(every.rows(k * kModel, (k + 1) * kModel).to_vector(), db2.to_vector())
          << "rank " << k << "'s db2";
  }
  return {gather_cols(group, h),   sp ? gather_rows(group, y) : y,
          gather_cols(group, dh),  sp ? gather_rows(group, dx) : dx,
          gather_rows(group, dw1), db1.defined() ? gather_rows(group, db1) : Tensor(),
          gather_cols(group, dw2), db2};
}

void check_pair(Communicator& group, bool sp, bool with_bias, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << group.size() << " ranks" << (sp ? ", sequence parallel" : "")
                                    << (with_bias ? ", bias" : "") << ", seed " << seed);
  const Mlp m = draw(seed, with_bias);
  const Outputs got = sharded(group, m, sp), want = reference(m);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i].defined(), want[i].defined()) << kNames[i];
    if (want[i].defined())
      expect_gradient_matches(to_double(got[i]), to_double(want[i]), kTolerance, kNames[i]);
  }
}

TEST(TensorParallel, MlpMatchesLinear) {
  for (bool sp : {false, true})
    for (bool with_bias : {true, false}) check_pair(*g_world, sp, with_bias, 100 + 10 * sp + with_bias);
}

// Tensor-parallel groups of 2 split out of the world (on 2 ranks: two groups of 1).
TEST(TensorParallel, MlpMatchesLinearOnSplitGroups) {
  const int size = g_world->size() >= 4 ? 2 : 1;
  std::unique_ptr<Communicator> group = g_world->split(g_world->rank() / size, g_world->rank());
  for (bool sp : {false, true}) check_pair(*group, sp, true, 200 + sp);
}

// The tolerance is not vacuous: a zeroed or negated result fails it for every output.
TEST(TensorParallel, RejectsWrongAnswers) {
  const Outputs want = reference(draw(300, true));
  for (size_t i = 0; i < want.size(); ++i) {
    const std::vector<double> n = to_double(want[i]);
    std::vector<double> zero(n.size(), 0.0), negated = n;
    for (double& v : negated) v = -v;
    EXPECT_TRUE(passes(n, n)) << kNames[i];
    EXPECT_FALSE(passes(zero, n)) << kNames[i] << " zeroed";
    EXPECT_FALSE(passes(negated, n)) << kNames[i] << " negated";
  }
}

// Sizes that do not divide by T, refused on every rank (all pass the same shapes), naming the numbers;
// the group works afterwards.
TEST(TensorParallel, RefusesIndivisibleSizesOnEveryRank) {
  Communicator& group = *g_world;
  const int T = group.size(), t = group.rank();
  const int64_t odd = 4 * T + 1;
  // "(N) must be divisible by the tensor-parallel size T" (appended: GCC 12's -Wrestrict misfires on
  // operator+ chains of literals and strings).
  std::string divisible = "(";
  divisible.append(std::to_string(odd)).append(") must be divisible by the tensor-parallel size ");
  divisible.append(std::to_string(T));
  std::string msg = error_of([&] {
    tensor_parallel_weight_shard(random_tensor({odd, 8}, 1), TensorParallelKind::Column, t, T);
  });
  EXPECT_NE(msg.find(divisible), std::string::npos) << msg;
  msg = error_of([&] {
    tensor_parallel_weight_shard(random_tensor({8, odd}, 1), TensorParallelKind::Row, t, T);
  });
  EXPECT_NE(msg.find(divisible), std::string::npos) << msg;
  const Tensor w = random_tensor({8, 4}, 2), x = random_tensor({odd, 4}, 3);
  msg = error_of([&] { row_parallel_forward(x, w, Tensor(), group, true, Tensor::empty({4, 8})); });
  EXPECT_NE(msg.find("row_parallel_forward: the rows N of x_shard (sequence parallel) " + divisible),
            std::string::npos)
      << msg;
  msg = error_of([&] {
    column_parallel_backward(random_tensor({4, 4}, 4), random_tensor({8, 4}, 5), random_tensor({odd, 8}, 6),
                             group, true, Tensor::empty({4, 4}), Tensor::zeros({8, 4}), Tensor());
  });
  EXPECT_NE(msg.find("column_parallel_backward: the rows N of dy_shard (sequence parallel)"),
            std::string::npos)
      << msg;
  check_pair(group, true, true, 400);
}

// ---- Tensor-parallel attention (model/attention_layer.h) against one rank ----
//
// Every rank draws the same full weights (one seed) into a T = 1 layer, builds a T-way layer from
// its shards (cut here by hand from docs/MODEL.md's layout, and checked against the layer's own
// tensor_parallel_shards()), and runs the same x and dy through both: whole-sequence, and as two
// sequence chunks (begin_forward, chunk_forward x2, chunk_backward x2 last first, finish_backward).
// The output, dx and every parameter gradient (the shards' placed into the full layout and summed
// over the group, exact) must match the T = 1 layer's.
//
// kAttentionTolerance, kBatch, kSeq, attention_config and Named: tensor_parallel_attention.h.
// bf16 tolerance: kBf16Tolerance. A float32 difference of an ulp can move a value across a bf16
// rounding boundary where the layer rounds (q, k, v; the residual output; dy converted for the bf16
// GEMMs), which changes that element by one bf16 ulp, 2^-8 relative: rtol = 1e-2 covers one such
// step and its effect downstream; atol 2e-3 and floor 1e-2 (> 2 atol) for small elements; the
// aggregate (cosine > 1 - 1e-4, relative L2 < 3e-3) stays far from any wrong answer (RejectsWrongShards
// checks both tolerances). Measured here: no flip (the output bit for bit, gradients within 1e-6);
// the margin is for GEMM kernels that block differently on other machines.
constexpr GradientTolerance kBf16Tolerance{1e-2, 2e-3, 1e-2, 0.9999, 3e-3};
// Random full values: weights N(0, 1/in), biases N(0, 0.1^2), norm gains 1 + N(0, 0.1^2).
void fill_full(ParameterRegistry& params, uint64_t seed) {
  for (Parameter& p : params.all()) {
    const bool norm = p.name.find("ln1") != std::string::npos;
    const float scale = p.value.ndim() == 2 ? 1.0f / std::sqrt(static_cast<float>(p.value.dim(1))) : 0.1f;
    Tensor v = random_tensor(p.value.shape(), seed++, scale);
    if (norm && p.name.find("weight") != std::string::npos)
      for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] += 1.0f;
    p.value.copy_from(v);
  }
}

// Rank t's shard of a full parameter as docs/MODEL.md states the layout (independently of the layer's
// own mapping): the fused QKV's q, k and v rows of this rank's heads, attn.q/k/v column shards, the
// output projection a column block; anything else whole.
Tensor spec_shard(const std::string& name, const Tensor& full, const ModelConfig& c, int t, int T) {
  const auto ends = [&](const char* suffix) {
    const std::string s = suffix;
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  const auto column = [&] {
    return full.ndim() == 2 ? tensor_parallel_weight_shard(full, TensorParallelKind::Column, t, T)
                            : tensor_parallel_bias_shard(full, TensorParallelKind::Column, t, T);
  };
  if (ends("attn.qkv.weight") || ends("attn.qkv.bias")) {
    const int64_t q = c.num_attention_heads * c.head_dim(), kv = c.kv_heads() * c.head_dim();
    const Tensor parts[] = {full.rows(0, q), full.rows(q, q + kv), full.rows(q + kv, q + 2 * kv)};
    std::vector<Tensor> shards;
    int64_t rows = 0;
    for (const Tensor& part : parts) {
      const Tensor whole = part.clone();
      shards.push_back(whole.ndim() == 2
                           ? tensor_parallel_weight_shard(whole, TensorParallelKind::Column, t, T)
                           : tensor_parallel_bias_shard(whole, TensorParallelKind::Column, t, T));
      rows += shards.back().dim(0);
    }
    Shape shape = full.shape();
    shape[0] = rows;
    Tensor out = Tensor::empty(shape);
    int64_t at = 0;
    for (const Tensor& part : shards) {
      out.rows(at, at + part.dim(0)).copy_from(part);
      at += part.dim(0);
    }
    return out;
  }
  if (ends("attn.q.weight") || ends("attn.k.weight") || ends("attn.v.weight")) return column();
  if (ends("attn.proj.weight") || ends("attn.o.weight"))
    return tensor_parallel_weight_shard(full, TensorParallelKind::Row, t, T);
  return full.clone();
}

// One attention layer in its own registry.
struct Layer {
  ParameterRegistry params;
  std::unique_ptr<AttentionLayer> layer;
  Layer(const ModelConfig& c, const ModelParallel& parallel)
      : layer(std::make_unique<AttentionLayer>(c, params, "blocks.0.", parallel)) {
    params.set_compute_dtype(c.bf16 ? DType::BF16 : DType::F32);
  }
};

// The shard mapping of `name` in the layer, or nullptr (a whole parameter).
const TensorParallelShard* shard_of(const AttentionLayer& layer, const std::string& name) {
  for (const TensorParallelShard& s : layer.tensor_parallel_shards())
    if (s.name == name) return &s;
  return nullptr;
}

// The T-way layer's values: rank `source`'s spec shards of the full layer's values (source = t unless
// a test wants a wrong shard for the parameters whose name contains `wrong`).
void load_shards(Layer& tp, const Layer& full, const ModelConfig& c, Communicator& group,
                 const std::string& wrong = "", int source = -1) {
  const int T = group.size(), t = group.rank();
  for (Parameter& p : tp.params.all()) {
    const Tensor& value = full.params.get(p.name).value;
    const bool swap = !wrong.empty() && p.name.find(wrong) != std::string::npos;
    const Tensor shard = spec_shard(p.name, value, c, swap ? source : t, T);
    p.value.copy_from(shard);
    const TensorParallelShard* map = shard_of(*tp.layer, p.name);
    // The layer's own mapping states the same layout (a checkpoint writer relies on it).
    const Tensor mapped = map ? take_tensor_parallel_shard(value, *map) : value;
    if (!swap) {
      EXPECT_EQ(mapped.to_vector(), shard.to_vector()) << p.name << ": tensor_parallel_shards()";
    }
  }
  tp.params.refresh_compute();
}

// Rows of positions [begin, end) of every sequence of a [B*N, w] buffer, and back.
Tensor seq_rows(const Tensor& full, int64_t begin, int64_t end) {
  const int64_t len = end - begin;
  Tensor out = Tensor::empty({kBatch * len, full.dim(1)}, full.dtype());
  for (int64_t b = 0; b < kBatch; ++b)
    out.rows(b * len, (b + 1) * len).copy_from(full.rows(b * kSeq + begin, b * kSeq + end));
  return out;
}
void put_seq_rows(const Tensor& rows, int64_t begin, int64_t end, Tensor full) {
  const int64_t len = end - begin;
  for (int64_t b = 0; b < kBatch; ++b)
    full.rows(b * kSeq + begin, b * kSeq + end).copy_from(rows.rows(b * len, (b + 1) * len));
}

// y and dx of x and dy through the layer: whole (forward/backward) or in two sequence chunks.
std::pair<Tensor, Tensor> run_layer(const AttentionLayer& layer, const Tensor& x, const Tensor& dy,
                                    bool chunked) {
  AttentionContext ctx;
  if (!chunked) {
    const Tensor y = kernels::as_dtype(layer.forward(ctx, x, kBatch, kSeq), DType::F32);
    return {y, layer.backward(ctx, dy)};
  }
  const int64_t mid = kSeq / 2;
  Tensor y = Tensor::empty({kBatch * kSeq, x.dim(1)});
  layer.begin_forward(ctx, x, kBatch, kSeq);
  size_t first = 0, second = 0;
  put_seq_rows(kernels::as_dtype(layer.chunk_forward(ctx, 0, mid, &first), DType::F32), 0, mid, y);
  put_seq_rows(kernels::as_dtype(layer.chunk_forward(ctx, mid, kSeq, &second), DType::F32), mid, kSeq, y);
  layer.chunk_backward(ctx, second, seq_rows(dy, mid, kSeq));
  layer.chunk_backward(ctx, first, seq_rows(dy, 0, mid));
  Tensor dx = layer.finish_backward(ctx);
  kernels::add_inplace(dx, dy);
  return {y, dx};
}

Named run_full(Layer& full, const Tensor& x, const Tensor& dy, bool chunked) {
  full.params.zero_grad();
  const auto [y, dx] = run_layer(*full.layer, x, dy, chunked);
  Named out{{"y", y}, {"dx", dx}};
  for (const Parameter& p : full.params.all()) out.emplace_back(p.name, p.grad.clone());
  return out;
}

Named run_sharded(Layer& tp, Communicator& group, const Tensor& x, const Tensor& dy, bool chunked) {
  tp.params.zero_grad();
  const auto [y, dx] = run_layer(*tp.layer, x, dy, chunked);
  Named out{{"y", y}, {"dx", dx}};
  for (const Parameter& p : tp.params.all()) {
    const TensorParallelShard* map = shard_of(*tp.layer, p.name);
    if (!map) {  // whole and replicated: the same bits on every rank of the group
      const Tensor every = gather_rows(group, p.grad.reshape({1, p.grad.numel()}));
      for (int k = 0; k < group.size(); ++k)
        EXPECT_EQ(every.rows(k, k + 1).to_vector(), p.grad.to_vector()) << "rank " << k << "'s " << p.name;
      out.emplace_back(p.name, p.grad.clone());
      continue;
    }
    Tensor whole = Tensor::zeros(map->full_shape);
    place_tensor_parallel_shard(p.grad, *map, whole);
    group.all_reduce_sum(whole);  // each element from one rank, zeros elsewhere: exact
    out.emplace_back(p.name, whole);
  }
  return out;
}

struct AttentionCase {
  bool mixtral, chunked, bf16;
};

std::string describe(Communicator& group, const AttentionCase& k) {
  return std::string(k.mixtral ? "mixtral" : "gpt") + (k.chunked ? ", 2 chunks" : ", whole") +
         (k.bf16 ? ", bf16" : "") + ", T = " + std::to_string(group.size());
}

void check_attention(Communicator& group, const AttentionCase& k, uint64_t seed) {
  SCOPED_TRACE(describe(group, k));
  const ModelConfig c = attention_config(k.mixtral, k.bf16);
  Layer full(c, ModelParallel{}), tp(c, ModelParallel{nullptr, nullptr, &group});
  ASSERT_EQ(tp.layer->tp_size(), group.size());
  fill_full(full.params, seed);
  full.params.refresh_compute();
  load_shards(tp, full, c, group);
  const Tensor x = random_tensor({kBatch * kSeq, c.hidden_size}, seed + 100);
  const Tensor dy = random_tensor({kBatch * kSeq, c.hidden_size}, seed + 101, 1.0f / std::sqrt(float{kSeq}));
  const Named want = run_full(full, x, dy, k.chunked), got = run_sharded(tp, group, x, dy, k.chunked);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i].first, want[i].first);
    expect_gradient_matches(to_double(got[i].second), to_double(want[i].second),
                            k.bf16 ? kBf16Tolerance : kAttentionTolerance, want[i].first);
  }
}

TEST(TensorParallelAttention, MatchesOneRankOverTheWorld) {
  uint64_t seed = 500;
  for (bool mixtral : {false, true})
    for (bool chunked : {false, true}) check_attention(*g_world, {mixtral, chunked, false}, seed += 10);
  check_attention(*g_world, {false, true, true}, seed += 10);  // bf16: fused QKV, biases, chunks
}

// T = 2 groups split out of 4 ranks (two groups side by side).
TEST(TensorParallelAttention, MatchesOneRankOnSplitGroups) {
  if (g_world->size() < 4) GTEST_SKIP() << "needs 4 ranks for two groups of 2";
  std::unique_ptr<Communicator> group = g_world->split(g_world->rank() / 2, g_world->rank());
  check_attention(*group, {false, true, false}, 600);
  check_attention(*group, {true, true, false}, 610);
}

// The comparison can fail: a layer loaded with the next rank's shard of the input projections (the
// fused QKV, or attn.q alone in the Mixtral family), or of the output projection, gives an output
// that fails both tolerances.
TEST(TensorParallelAttention, RejectsWrongShards) {
  Communicator& group = *g_world;
  const int T = group.size(), next = (group.rank() + 1) % T;
  for (bool mixtral : {false, true}) {
    const ModelConfig c = attention_config(mixtral, false);
    Layer full(c, ModelParallel{});
    fill_full(full.params, 700);
    full.params.refresh_compute();
    const Tensor x = random_tensor({kBatch * kSeq, c.hidden_size}, 701);
    const Tensor dy = random_tensor({kBatch * kSeq, c.hidden_size}, 702, 1.0f / std::sqrt(float{kSeq}));
    const std::vector<double> want = to_double(run_full(full, x, dy, false)[0].second);
    for (const char* wrong : {"attn.q", "attn.proj", "attn.o"}) {
      if (std::string(wrong) == (mixtral ? "attn.proj" : "attn.o")) continue;
      SCOPED_TRACE(std::string(mixtral ? "mixtral" : "gpt") + ", the next rank's " + wrong);
      Layer tp(c, ModelParallel{nullptr, nullptr, &group});
      load_shards(tp, full, c, group, wrong, next);
      const std::vector<double> got = to_double(run_sharded(tp, group, x, dy, false)[0].second);
      EXPECT_FALSE(passes(got, want, kAttentionTolerance));
      EXPECT_FALSE(passes(got, want, kBf16Tolerance));
    }
  }
}

// h or g not divisible by T: refused at construction, naming the numbers (a local check).
TEST(TensorParallelAttention, RefusesHeadsOrGroupsNotDivisibleByT) {
  const int T = g_world->size();
  const ModelParallel parallel{nullptr, nullptr, g_world.get()};
  ModelConfig heads = attention_config(false, false);
  heads.num_attention_heads = 3 * T / 2;  // 3 at T = 2, 6 at T = 4
  heads.hidden_size = 8 * heads.num_attention_heads;
  ParameterRegistry params;
  std::string msg = error_of([&] { AttentionLayer(heads, params, "a.", parallel); });
  std::string want = "the number of attention heads h (" + std::to_string(heads.num_attention_heads) +
                     ") must be divisible by the tensor-parallel size (--tensor-model-parallel-size) " +
                     std::to_string(T);
  EXPECT_NE(msg.find(want), std::string::npos) << msg;
  ModelConfig groups = attention_config(true, false);
  groups.num_attention_heads = 2 * T;
  groups.num_query_groups = T / 2;  // 1 at T = 2, 2 at T = 4
  ParameterRegistry params2;
  msg = error_of([&] { AttentionLayer(groups, params2, "b.", parallel); });
  want = "the number of query groups g (KV heads) (" + std::to_string(T / 2) + ") must be divisible";
  EXPECT_NE(msg.find(want), std::string::npos) << msg;
}

}  // namespace
}  // namespace ampipe

int main(int argc, char** argv) {
  return ampipe::testing::run_mpi_tests(argc, argv, ampipe::g_world, "mpi_test_tensor_parallel");
}
