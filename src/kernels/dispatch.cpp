// The public kernel entry points (kernels/*.h): each picks the backend by the device of its tensors,
// here and nowhere else, so that layer code carries no device branches. All defined tensors of one
// call must be on the same device; a mix is an error that names the kernel and the devices.
#include <initializer_list>
#include <numeric>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "kernels/permute.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#if AMPIPE_HAVE_CUDA
#include "kernels/cuda/gpu_kernels.h"
#endif

namespace ampipe::kernels {
namespace {

const char* device_name(Device d) { return d == Device::CUDA ? "cuda" : "cpu"; }

// The device of a call's tensors (undefined ones, such as an absent position table, are skipped).
Device device_of(const char* kernel, std::initializer_list<const Tensor*> tensors) {
  bool found = false;
  Device device = Device::CPU;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (!found) {
      device = t->device();
      found = true;
    }
    AMPIPE_CHECK(t->device() == device) << kernel << ": tensors on different devices (" << device_name(device)
                                        << " and " << device_name(t->device())
                                        << "); move them to one device first (Tensor::to)";
  }
  return device;
}

}  // namespace

#if AMPIPE_HAVE_CUDA
#define AMPIPE_DISPATCH(fn, tensors, ...)                                        \
  do {                                                                           \
    if (device_of(#fn, tensors) == Device::CUDA) return gpu::fn(__VA_ARGS__);   \
    return cpu::fn(__VA_ARGS__);                                                 \
  } while (0)
#else
// Without CUDA no tensor can live on the GPU (Tensor::empty refuses), but a mix is still an error.
#define AMPIPE_DISPATCH(fn, tensors, ...) \
  do {                                    \
    (void)device_of(#fn, tensors);        \
    return cpu::fn(__VA_ARGS__);          \
  } while (0)
#endif
#define AMPIPE_TENSORS(...) (std::initializer_list<const Tensor*>{__VA_ARGS__})

// bfloat16 operands of the float32 kernels (elementwise.h, "bfloat16 operands"). A bf16 input is
// widened (exactly) to a float32 copy; a bf16 output is computed into a float32 stand-in and rounded
// once into the caller's tensor. The backends see float32 only, so a kernel's accumulation and
// statistics stay float32 on every device, and its result on bf16 operands is, bit for bit, the
// float32 kernel's on the widened values, rounded.
namespace {

bool has_bf16(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t->defined() && t->dtype() == DType::BF16) return true;
  return false;
}

Tensor widened(const Tensor& t) { return t.defined() ? as_dtype(t, DType::F32) : t; }

// The float32 stand-in of an operand the kernel writes (or, `accumulated`, reads and writes).
struct Staged {
  Tensor target, f32;
  Staged(const Tensor& t, bool accumulated) : target(t), f32(t) {
    if (t.defined() && t.dtype() == DType::BF16)
      f32 = accumulated ? as_dtype(t, DType::F32) : Tensor::empty(t.shape(), DType::F32, t.device());
  }
  void write_back() const {
    if (target.defined() && target.dtype() == DType::BF16) convert(f32, target);
  }
};

}  // namespace

int64_t DispatchPlan::num_slots() const {
  return std::accumulate(expert_counts.begin(), expert_counts.end(), int64_t{0});
}

void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor c, float alpha, float beta) {
  AMPIPE_DISPATCH(gemm, AMPIPE_TENSORS(&a, &b, &c), a, transpose_a, b, transpose_b, c, alpha, beta);
}

void add_bias(Tensor y, const Tensor& bias) { AMPIPE_DISPATCH(add_bias, AMPIPE_TENSORS(&y, &bias), y, bias); }
void bias_backward(const Tensor& dy, Tensor dbias) {
  AMPIPE_DISPATCH(bias_backward, AMPIPE_TENSORS(&dy, &dbias), dy, dbias);
}
void add_inplace(Tensor y, const Tensor& x) {
  if (has_bf16({&y, &x})) {
    const Staged out(y, /*accumulated=*/true);
    add_inplace(out.f32, widened(x));
    return out.write_back();
  }
  AMPIPE_DISPATCH(add_inplace, AMPIPE_TENSORS(&y, &x), y, x);
}
void scale_inplace(Tensor x, float s) { AMPIPE_DISPATCH(scale_inplace, AMPIPE_TENSORS(&x), x, s); }
void convert(const Tensor& src, Tensor dst) { AMPIPE_DISPATCH(convert, AMPIPE_TENSORS(&src, &dst), src, dst); }

Tensor as_dtype(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  convert(x, out);
  return out;
}
void gelu_forward(const Tensor& x, Tensor y) {
  if (has_bf16({&x, &y})) {
    const Staged out(y, false);
    gelu_forward(widened(x), out.f32);
    return out.write_back();
  }
  AMPIPE_DISPATCH(gelu_forward, AMPIPE_TENSORS(&x, &y), x, y);
}
void gelu_backward(const Tensor& x, const Tensor& dy, Tensor dx) {
  if (has_bf16({&x, &dy, &dx})) {
    const Staged out(dx, false);
    gelu_backward(widened(x), widened(dy), out.f32);
    return out.write_back();
  }
  AMPIPE_DISPATCH(gelu_backward, AMPIPE_TENSORS(&x, &dy, &dx), x, dy, dx);
}
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor out) {
  if (has_bf16({&gate, &up, &out})) {
    const Staged o(out, false);
    swiglu_forward(widened(gate), widened(up), o.f32);
    return o.write_back();
  }
  AMPIPE_DISPATCH(swiglu_forward, AMPIPE_TENSORS(&gate, &up, &out), gate, up, out);
}
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor dgate, Tensor dup) {
  if (has_bf16({&gate, &up, &dout, &dgate, &dup})) {
    const Staged dg(dgate, false), du(dup, false);
    swiglu_backward(widened(gate), widened(up), widened(dout), dg.f32, du.f32);
    dg.write_back();
    return du.write_back();
  }
  AMPIPE_DISPATCH(swiglu_backward, AMPIPE_TENSORS(&gate, &up, &dout, &dgate, &dup), gate, up, dout, dgate, dup);
}
void softmax_rows(const Tensor& x, Tensor y) { AMPIPE_DISPATCH(softmax_rows, AMPIPE_TENSORS(&x, &y), x, y); }
void softmax_rows_backward(const Tensor& y, const Tensor& dy, Tensor dx) {
  AMPIPE_DISPATCH(softmax_rows_backward, AMPIPE_TENSORS(&y, &dy, &dx), y, dy, dx);
}
double sum_of_squares(const Tensor& x) { AMPIPE_DISPATCH(sum_of_squares, AMPIPE_TENSORS(&x), x); }

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y, Tensor mean,
                       Tensor rstd, float eps) {
  if (has_bf16({&x, &y})) {
    const Staged out(y, false);
    layernorm_forward(widened(x), weight, bias, out.f32, mean, rstd, eps);
    return out.write_back();
  }
  AMPIPE_DISPATCH(layernorm_forward, AMPIPE_TENSORS(&x, &weight, &bias, &y, &mean, &rstd), x, weight, bias, y,
                  mean, rstd, eps);
}
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor dx, Tensor dweight, Tensor dbias) {
  if (has_bf16({&dy, &x, &dx})) {
    const Staged out(dx, false);
    layernorm_backward(widened(dy), widened(x), weight, mean, rstd, out.f32, dweight, dbias);
    return out.write_back();
  }
  AMPIPE_DISPATCH(layernorm_backward, AMPIPE_TENSORS(&dy, &x, &weight, &mean, &rstd, &dx, &dweight, &dbias), dy,
                  x, weight, mean, rstd, dx, dweight, dbias);
}
void rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor y, Tensor rstd, float eps) {
  if (has_bf16({&x, &y})) {
    const Staged out(y, false);
    rmsnorm_forward(widened(x), weight, out.f32, rstd, eps);
    return out.write_back();
  }
  AMPIPE_DISPATCH(rmsnorm_forward, AMPIPE_TENSORS(&x, &weight, &y, &rstd), x, weight, y, rstd, eps);
}
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor dx,
                      Tensor dweight) {
  if (has_bf16({&dy, &x, &dx})) {
    const Staged out(dx, false);
    rmsnorm_backward(widened(dy), widened(x), weight, rstd, out.f32, dweight);
    return out.write_back();
  }
  AMPIPE_DISPATCH(rmsnorm_backward, AMPIPE_TENSORS(&dy, &x, &weight, &rstd, &dx, &dweight), dy, x, weight, rstd,
                  dx, dweight);
}

void embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table,
                       int64_t seq_len, Tensor x) {
  AMPIPE_DISPATCH(embedding_forward, AMPIPE_TENSORS(&tokens, &token_table, &position_table, &x), tokens,
                  token_table, position_table, seq_len, x);
}
void embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, Tensor dtoken_table,
                        Tensor dposition_table) {
  AMPIPE_DISPATCH(embedding_backward, AMPIPE_TENSORS(&tokens, &dx, &dtoken_table, &dposition_table), tokens, dx,
                  seq_len, dtoken_table, dposition_table);
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor losses) {
  AMPIPE_DISPATCH(cross_entropy_forward, AMPIPE_TENSORS(&logits, &targets, &losses), logits, targets, losses);
}
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale, Tensor dlogits) {
  AMPIPE_DISPATCH(cross_entropy_backward, AMPIPE_TENSORS(&logits, &targets, &dlogits), logits, targets, scale,
                  dlogits);
}

void rope_forward(Tensor x, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) {
  if (has_bf16({&x})) {
    const Staged out(x, /*accumulated=*/true);
    rope_forward(out.f32, batch, num_heads, pos_begin, theta);
    return out.write_back();
  }
  AMPIPE_DISPATCH(rope_forward, AMPIPE_TENSORS(&x), x, batch, num_heads, pos_begin, theta);
}
void rope_backward(Tensor dx, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) {
  if (has_bf16({&dx})) {
    const Staged out(dx, /*accumulated=*/true);
    rope_backward(out.f32, batch, num_heads, pos_begin, theta);
    return out.write_back();
  }
  AMPIPE_DISPATCH(rope_backward, AMPIPE_TENSORS(&dx), dx, batch, num_heads, pos_begin, theta);
}

void router_topk(const Tensor& probs, int k, Tensor expert_index, Tensor gate, bool normalize_single) {
  AMPIPE_DISPATCH(router_topk, AMPIPE_TENSORS(&probs, &expert_index, &gate), probs, k, expert_index, gate,
                  normalize_single);
}
void router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate, const Tensor& dgate,
                          Tensor dprobs, bool normalize_single) {
  AMPIPE_DISPATCH(router_topk_backward, AMPIPE_TENSORS(&probs, &expert_index, &gate, &dgate, &dprobs), probs,
                  expert_index, gate, dgate, dprobs, normalize_single);
}

DispatchPlan make_dispatch_plan(const Tensor& expert_index, int num_experts, int64_t capacity) {
  AMPIPE_DISPATCH(make_dispatch_plan, AMPIPE_TENSORS(&expert_index), expert_index, num_experts, capacity);
}
void permute_forward(const Tensor& x, const DispatchPlan& plan, Tensor out) {
  if (has_bf16({&x, &out})) {
    const Staged o(out, false);
    permute_forward(widened(x), plan, o.f32);
    return o.write_back();
  }
  AMPIPE_DISPATCH(permute_forward, AMPIPE_TENSORS(&x, &plan.token_slot, &plan.slot_token, &out), x, plan, out);
}
void permute_backward(const Tensor& dout, const DispatchPlan& plan, Tensor dx) {
  if (has_bf16({&dout, &dx})) {
    const Staged out(dx, false);
    permute_backward(widened(dout), plan, out.f32);
    return out.write_back();
  }
  AMPIPE_DISPATCH(permute_backward, AMPIPE_TENSORS(&dout, &plan.token_slot, &plan.slot_token, &dx), dout, plan,
                  dx);
}
void unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate, Tensor out) {
  if (has_bf16({&y, &out})) {
    const Staged o(out, false);
    unpermute_forward(widened(y), plan, gate, o.f32);
    return o.write_back();
  }
  AMPIPE_DISPATCH(unpermute_forward, AMPIPE_TENSORS(&y, &plan.token_slot, &plan.slot_token, &gate, &out), y, plan,
                  gate, out);
}
void unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan, const Tensor& gate,
                        Tensor dy, Tensor dgate) {
  if (has_bf16({&dout, &y, &dy})) {
    const Staged out(dy, false);
    unpermute_backward(widened(dout), widened(y), plan, gate, out.f32, dgate);
    return out.write_back();
  }
  AMPIPE_DISPATCH(unpermute_backward,
                  AMPIPE_TENSORS(&dout, &y, &plan.token_slot, &plan.slot_token, &gate, &dy, &dgate), dout, y,
                  plan, gate, dy, dgate);
}
void gather_rows(const Tensor& src, const Tensor& index, Tensor dst) {
  AMPIPE_DISPATCH(gather_rows, AMPIPE_TENSORS(&src, &index, &dst), src, index, dst);
}
void scatter_rows(const Tensor& src, const Tensor& index, Tensor dst) {
  AMPIPE_DISPATCH(scatter_rows, AMPIPE_TENSORS(&src, &index, &dst), src, index, dst);
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& shape, Tensor out,
                       Tensor lse) {
  if (has_bf16({&q, &k, &v, &out})) {
    const Staged o(out, false);
    attention_forward(widened(q), widened(k), widened(v), shape, o.f32, lse);
    return o.write_back();
  }
  AMPIPE_DISPATCH(attention_forward, AMPIPE_TENSORS(&q, &k, &v, &out, &lse), q, k, v, shape, out, lse);
}
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor& dout, const AttentionShape& shape, Tensor dq, Tensor dk, Tensor dv) {
  if (has_bf16({&q, &k, &v, &out, &dout, &dq, &dk, &dv})) {
    const Staged dq32(dq, false), dk32(dk, /*accumulated=*/true), dv32(dv, /*accumulated=*/true);
    attention_backward(widened(q), widened(k), widened(v), widened(out), lse, widened(dout), shape, dq32.f32,
                       dk32.f32, dv32.f32);
    dq32.write_back();
    dk32.write_back();
    return dv32.write_back();
  }
  AMPIPE_DISPATCH(attention_backward, AMPIPE_TENSORS(&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv), q, k, v, out,
                  lse, dout, shape, dq, dk, dv);
}

void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& hp) {
  AMPIPE_DISPATCH(adamw_update, AMPIPE_TENSORS(&param, &grad, &m, &v), param, grad, m, v, hp);
}

}  // namespace ampipe::kernels
