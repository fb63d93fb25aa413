#include "model/moe/expert_gather.h"

#include <algorithm>

#include "core/error.h"

namespace ampipe {
namespace {

// Calls move(rank-major row, expert-major row, rows) for every (rank, expert) run of rows.
template <typename Move>
void for_each_run(const ExpertGather& plan, Move move) {
  int64_t whole = 0;
  for (int64_t e = 0; e < plan.experts; ++e)
    for (int r = 0; r < plan.ranks; ++r) {
      int64_t at = 0;  // rank r's rows of the experts before e
      for (int64_t f = 0; f < e; ++f) at += plan.counts[r * plan.experts + f];
      const int64_t n = plan.counts[r * plan.experts + e];
      if (n > 0) move(r * plan.padded + at, whole, n);
      whole += n;
    }
}

void check_rows(const Tensor& t, int64_t rows, const char* call, const char* name) {
  AMPIPE_CHECK(t.defined() && t.dtype() == DType::F32 && t.device() == Device::CPU && t.ndim() == 2 &&
               t.dim(0) == rows)
      << call << ": " << name << " must be float32 CPU rows [" << rows << ", d], got "
      << (t.defined() ? shape_string(t.shape()) : std::string("an undefined tensor"));
}

}  // namespace

std::vector<int64_t> ExpertGather::expert_totals() const {
  std::vector<int64_t> totals(static_cast<size_t>(experts), 0);
  for (int r = 0; r < ranks; ++r)
    for (int64_t e = 0; e < experts; ++e) totals[e] += counts[r * experts + e];
  return totals;
}

int64_t ExpertGather::total_rows() const {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  return n;
}

int64_t ExpertGather::own_rows() const {
  int64_t n = 0;
  for (int64_t e = 0; e < experts; ++e) n += counts[rank * experts + e];
  return n;
}

ExpertGather plan_expert_gather(Communicator& group, const std::vector<int64_t>& counts) {
  ExpertGather plan;
  plan.ranks = group.size();
  plan.rank = group.rank();
  plan.experts = static_cast<int64_t>(counts.size());
  // Exact in float32 below 2^24 rows.
  Tensor all = Tensor::zeros({plan.ranks * plan.experts});
  float* a = all.data<float>();
  for (int64_t e = 0; e < plan.experts; ++e) {
    AMPIPE_CHECK(counts[e] >= 0 && counts[e] < (int64_t{1} << 24))
        << "plan_expert_gather: " << counts[e] << " rows for local expert " << e;
    a[plan.rank * plan.experts + e] = static_cast<float>(counts[e]);
  }
  group.all_reduce_sum(all);
  plan.counts.resize(static_cast<size_t>(plan.ranks * plan.experts));
  for (size_t i = 0; i < plan.counts.size(); ++i) plan.counts[i] = static_cast<int64_t>(a[i]);
  for (int r = 0; r < plan.ranks; ++r) {
    int64_t n = 0;
    for (int64_t e = 0; e < plan.experts; ++e) n += plan.counts[r * plan.experts + e];
    plan.padded = std::max(plan.padded, n);
  }
  return plan;
}

Tensor gather_expert_rows(Communicator& group, const ExpertGather& plan, const Tensor& own) {
  check_rows(own, plan.own_rows(), "gather_expert_rows", "this rank's rows");
  const int64_t d = own.dim(1);
  Tensor send = Tensor::zeros({plan.padded, d});
  if (own.dim(0) > 0) send.rows(0, own.dim(0)).copy_from(own);
  Tensor blocked = Tensor::empty({plan.ranks * plan.padded, d});
  group.all_gather(send, blocked);
  Tensor whole = Tensor::empty({plan.total_rows(), d});
  for_each_run(plan, [&](int64_t blocked_row, int64_t whole_row, int64_t n) {
    whole.rows(whole_row, whole_row + n).copy_from(blocked.rows(blocked_row, blocked_row + n));
  });
  return whole;
}

Tensor reduce_scatter_expert_rows(Communicator& group, const ExpertGather& plan, const Tensor& whole) {
  check_rows(whole, plan.total_rows(), "reduce_scatter_expert_rows", "the group's rows");
  const int64_t d = whole.dim(1);
  Tensor blocked = Tensor::zeros({plan.ranks * plan.padded, d});
  for_each_run(plan, [&](int64_t blocked_row, int64_t whole_row, int64_t n) {
    blocked.rows(blocked_row, blocked_row + n).copy_from(whole.rows(whole_row, whole_row + n));
  });
  Tensor mine = Tensor::empty({plan.padded, d});
  group.reduce_scatter_sum(blocked, mine);
  const int64_t own = plan.own_rows();
  return own == plan.padded ? mine : mine.rows(0, own).clone();
}

}  // namespace ampipe
