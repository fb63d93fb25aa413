// TEMPORARY weak stubs while the CUDA kernels are written in parallel (removed when all exist).
#include "core/error.h"
#include "kernels/cuda/gpu_kernels.h"

namespace ampipe::kernels::gpu {
__attribute__((weak)) void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor c, float alpha, float beta) { throw Error("gemm: not implemented on CUDA yet"); }
__attribute__((weak)) void add_bias(Tensor y, const Tensor& bias) { throw Error("add_bias: not implemented on CUDA yet"); }
__attribute__((weak)) void bias_backward(const Tensor& dy, Tensor dbias) { throw Error("bias_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void add_inplace(Tensor y, const Tensor& x) { throw Error("add_inplace: not implemented on CUDA yet"); }
__attribute__((weak)) void scale_inplace(Tensor x, float s) { throw Error("scale_inplace: not implemented on CUDA yet"); }
__attribute__((weak)) void gelu_forward(const Tensor& x, Tensor y) { throw Error("gelu_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void gelu_backward(const Tensor& x, const Tensor& dy, Tensor dx) { throw Error("gelu_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor out) { throw Error("swiglu_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor dgate, Tensor dup) { throw Error("swiglu_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void softmax_rows(const Tensor& x, Tensor y) { throw Error("softmax_rows: not implemented on CUDA yet"); }
__attribute__((weak)) void softmax_rows_backward(const Tensor& y, const Tensor& dy, Tensor dx) { throw Error("softmax_rows_backward: not implemented on CUDA yet"); }
__attribute__((weak)) double sum_of_squares(const Tensor& x) { throw Error("sum_of_squares: not implemented on CUDA yet"); }
__attribute__((weak)) void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor y, Tensor mean, Tensor rstd, float eps) { throw Error("layernorm_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd, Tensor dx, Tensor dweight, Tensor dbias) { throw Error("layernorm_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void rmsnorm_forward(const Tensor& x, const Tensor& weight, Tensor y, Tensor rstd, float eps) { throw Error("rmsnorm_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor dx, Tensor dweight) { throw Error("rmsnorm_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void embedding_forward(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table, int64_t seq_len, Tensor x) { throw Error("embedding_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void embedding_backward(const Tensor& tokens, const Tensor& dx, int64_t seq_len, Tensor dtoken_table, Tensor dposition_table) { throw Error("embedding_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor losses) { throw Error("cross_entropy_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void cross_entropy_backward(const Tensor& logits, const Tensor& targets, float scale, Tensor dlogits) { throw Error("cross_entropy_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void rope_forward(Tensor x, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) { throw Error("rope_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void rope_backward(Tensor dx, int64_t batch, int64_t num_heads, int64_t pos_begin, double theta) { throw Error("rope_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void router_topk(const Tensor& probs, int k, Tensor expert_index, Tensor gate, bool normalize_single) { throw Error("router_topk: not implemented on CUDA yet"); }
__attribute__((weak)) void router_topk_backward(const Tensor& probs, const Tensor& expert_index, const Tensor& gate, const Tensor& dgate, Tensor dprobs, bool normalize_single) { throw Error("router_topk_backward: not implemented on CUDA yet"); }
__attribute__((weak)) DispatchPlan make_dispatch_plan(const Tensor& expert_index, int num_experts, int64_t capacity) { throw Error("make_dispatch_plan: not implemented on CUDA yet"); }
__attribute__((weak)) void permute_forward(const Tensor& x, const DispatchPlan& plan, Tensor out) { throw Error("permute_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void permute_backward(const Tensor& dout, const DispatchPlan& plan, Tensor dx) { throw Error("permute_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void unpermute_forward(const Tensor& y, const DispatchPlan& plan, const Tensor& gate, Tensor out) { throw Error("unpermute_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void unpermute_backward(const Tensor& dout, const Tensor& y, const DispatchPlan& plan, const Tensor& gate, Tensor dy, Tensor dgate) { throw Error("unpermute_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void gather_rows(const Tensor& src, const Tensor& index, Tensor dst) { throw Error("gather_rows: not implemented on CUDA yet"); }
__attribute__((weak)) void scatter_rows(const Tensor& src, const Tensor& index, Tensor dst) { throw Error("scatter_rows: not implemented on CUDA yet"); }
__attribute__((weak)) void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& shape, Tensor out, Tensor lse) { throw Error("attention_forward: not implemented on CUDA yet"); }
__attribute__((weak)) void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& dout, const AttentionShape& shape, Tensor dq, Tensor dk, Tensor dv) { throw Error("attention_backward: not implemented on CUDA yet"); }
__attribute__((weak)) void adamw_update(Tensor param, const Tensor& grad, Tensor m, Tensor v, const AdamWStep& hp) { throw Error("adamw_update: not implemented on CUDA yet"); }
}  // namespace ampipe::kernels::gpu
