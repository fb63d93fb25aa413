// CPU dispatch plan and token permutation (kernels/permute.h).
//
// The plan is built serially (O(T k), tiny next to the data it moves). The copies are split across
// threads by destination row: every permuted row has exactly one source pair and every token owns
// its own choices, so no two threads write one row and sums run in choice order.
#include "kernels/permute.h"

#include <algorithm>
#include <numeric>

#include "core/parallel.h"
#include "kernels/moe_checks.h"

namespace ampipe::kernels::cpu {
namespace {

constexpr int64_t kGrainElements = 16384;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1)); }

}  // namespace

DispatchPlan make_dispatch_plan(const Tensor& expert_index, int num_experts, int64_t capacity) {
  detail::check_dispatch_plan_args(expert_index, num_experts);
  const int64_t tokens = expert_index.dim(0);
  const int64_t k = expert_index.dim(1);
  const int32_t* ip = expert_index.data<int32_t>();
  const int64_t is = expert_index.stride(0);

  DispatchPlan plan;
  plan.num_experts = num_experts;
  plan.routed_counts.assign(static_cast<size_t>(num_experts), 0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ip[t * is + j];
      detail::check_expert_in_range(e, t, j, num_experts, "make_dispatch_plan");
      ++plan.routed_counts[e];
    }

  plan.expert_counts.resize(static_cast<size_t>(num_experts));
  std::vector<int64_t> next_slot(static_cast<size_t>(num_experts));  // running slot of each expert
  std::vector<int64_t> end_slot(static_cast<size_t>(num_experts));   // one past its last kept slot
  int64_t offset = 0;
  for (int e = 0; e < num_experts; ++e) {
    const int64_t kept = capacity < 0 ? plan.routed_counts[e] : std::min(plan.routed_counts[e], capacity);
    plan.expert_counts[e] = kept;
    next_slot[e] = offset;
    offset += kept;
    end_slot[e] = offset;
  }

  // Visiting pairs in (token, choice) order gives each expert its earliest tokens first, and the
  // pairs past its capacity are the latest ones.
  plan.token_slot = Tensor::empty({tokens, k}, DType::I32);
  plan.slot_token = Tensor::empty({offset}, DType::I32);
  int32_t* ts = plan.token_slot.data<int32_t>();
  int32_t* st = plan.slot_token.data<int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ip[t * is + j];
      if (next_slot[e] < end_slot[e]) {
        const int64_t slot = next_slot[e]++;
        ts[t * k + j] = static_cast<int32_t>(slot);
        st[slot] = static_cast<int32_t>(t);
      } else {
        ts[t * k + j] = -1;
      }
    }
  return plan;
}

void permute_forward(const Tensor& x, const DispatchPlan& plan, Tensor out) {
  detail::check_permute_forward(x, plan, out);
  gather_rows(x, plan.slot_token, out);  // out[p] = x[slot_token[p]]
}

void permute_backward(const Tensor& dout, const DispatchPlan& plan, Tensor dx) {
  detail::check_permute_backward(dout, plan, dx);
  const int64_t tokens = plan.token_slot.dim(0);
  const int64_t k = plan.token_slot.dim(1);
  const int64_t width = dout.dim(1);
  const float* gp = dout.data<float>();
  float* dp = dx.data<float>();
  const int32_t* ts = plan.token_slot.data<int32_t>();
  const int64_t gs = dout.stride(0);
  const int64_t ds = dx.stride(0);
  parallel_for(tokens, row_grain(width * k), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* dst = dp + t * ds;
      std::fill(dst, dst + width, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = ts[t * k + j];
        if (slot < 0) continue;
        const float* src = gp + slot * gs;
        for (int64_t c = 0; c < width; ++c) dst[c] += src[c];
      }
    }
  });
}

void unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate, Tensor out) {
  detail::check_unpermute_forward(y, plan, gate, out);
  const int64_t tokens = plan.token_slot.dim(0);
  const int64_t k = plan.token_slot.dim(1);
  const int64_t width = y.dim(1);
  const float* yp = y.data<float>();
  const float* gp = gate.data<float>();
  float* op = out.data<float>();
  const int32_t* ts = plan.token_slot.data<int32_t>();
  const int64_t ys = y.stride(0);
  const int64_t gs = gate.stride(0);
  const int64_t os = out.stride(0);
  parallel_for(tokens, row_grain(width * k), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* dst = op + t * os;
      std::fill(dst, dst + width, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = ts[t * k + j];
        if (slot < 0) continue;
        const float g = gp[t * gs + j];
        const float* src = yp + slot * ys;
        for (int64_t c = 0; c < width; ++c) dst[c] += g * src[c];
      }
    }
  });
}

void unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan, const Tensor& gate,
                        Tensor dy, Tensor dgate) {
  detail::check_unpermute_backward(dout, y, plan, gate, dy, dgate);
  const int64_t tokens = plan.token_slot.dim(0);
  const int64_t k = plan.token_slot.dim(1);
  const int64_t width = dout.dim(1);
  const float* gop = dout.data<float>();
  const float* yp = y.data<float>();
  const float* gp = gate.data<float>();
  float* dyp = dy.data<float>();
  float* dgp = dgate.data<float>();
  const int32_t* ts = plan.token_slot.data<int32_t>();
  const int64_t gos = dout.stride(0);
  const int64_t ys = y.stride(0);
  const int64_t gs = gate.stride(0);
  const int64_t dys = dy.stride(0);
  const int64_t dgs = dgate.stride(0);
  // Each kept pair owns one slot, so parts split by token write disjoint rows of dy.
  parallel_for(tokens, row_grain(width * k), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g_out = gop + t * gos;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = ts[t * k + j];
        if (slot < 0) {
          dgp[t * dgs + j] = 0.0f;
          continue;
        }
        const float g = gp[t * gs + j];
        const float* yr = yp + slot * ys;
        float* dyr = dyp + slot * dys;
        double dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < width; ++c) dot += static_cast<double>(g_out[c]) * yr[c];
        for (int64_t c = 0; c < width; ++c) dyr[c] = g * g_out[c];
        dgp[t * dgs + j] = static_cast<float>(dot);
      }
    }
  });
}

}  // namespace ampipe::kernels::cpu

namespace ampipe::kernels::cpu {

// The index contents, read on the host (the shapes are checked by kernels/moe_checks.h).
static void check_indices_in_range(const Tensor& index, int64_t index_limit, const char* op) {
  const int32_t* ix = index.data<int32_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    AMPIPE_CHECK(ix[i] >= 0 && ix[i] < index_limit)
        << op << ": index[" << i << "] = " << ix[i] << " is outside [0, " << index_limit << ")";
}

// gather: dst[i] = src[index[i]]; scatter: dst[index[i]] = src[i]. Rows of `Element`s (float, or the
// bits of a bfloat16: a move copies them unchanged).
template <typename Element>
void move_rows(const Tensor& src, const Tensor& index, Tensor dst, bool gather) {
  const int32_t* ix = index.data<int32_t>();
  const auto* s = reinterpret_cast<const Element*>(src.bytes());
  auto* d = reinterpret_cast<Element*>(dst.bytes());
  const int64_t w = src.dim(1), ss = src.stride(0), ds = dst.stride(0);
  parallel_for(index.numel(), 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Element* from = s + (gather ? ix[i] : i) * ss;
      std::copy(from, from + w, d + (gather ? i : ix[i]) * ds);
    }
  });
}

void gather_rows(const Tensor& src, const Tensor& index, Tensor dst) {
  detail::check_gather_rows(src, index, dst);
  check_indices_in_range(index, src.dim(0), "gather_rows");
  if (src.dtype() == DType::BF16) return move_rows<uint16_t>(src, index, dst, /*gather=*/true);
  move_rows<float>(src, index, dst, /*gather=*/true);
}

void scatter_rows(const Tensor& src, const Tensor& index, Tensor dst) {
  detail::check_scatter_rows(src, index, dst);
  check_indices_in_range(index, dst.dim(0), "scatter_rows");
  if (src.dtype() == DType::BF16) return move_rows<uint16_t>(src, index, dst, /*gather=*/false);
  move_rows<float>(src, index, dst, /*gather=*/false);
}

}  // namespace ampipe::kernels::cpu
