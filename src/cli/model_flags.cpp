#include "cli/model_flags.h"

#include <CLI/CLI.hpp>

#include "core/error.h"

namespace ampipe {

void add_family_flags(CLI::App& cmd, FamilyFlags& f) {
  f.command = &cmd;
  cmd.add_option(
         "--model-family", f.family,
         "Model family: gpt (LayerNorm, learned positions, GELU experts, biases, tied head) or mixtral "
         "(RMSNorm, rope theta 1e6, SwiGLU experts, no biases, untied head; exports to Hugging Face); the "
         "part flags below override single parts")
      ->capture_default_str();
  cmd.add_option("--normalization", f.normalization, "LayerNorm or RMSNorm (block norms and the final norm)")
      ->capture_default_str();
  cmd.add_option("--norm-epsilon", f.norm_epsilon, "Epsilon of the norms")->capture_default_str();
  cmd.add_option("--position-embedding-type", f.position_embedding_type,
                 "learned_absolute (a position table) or rope (rotary q and k, no table)")
      ->capture_default_str();
  cmd.add_option("--rotary-base", f.rotary_base, "Rope theta (the Mixtral family's default is 1e6)")
      ->capture_default_str();
  cmd.add_flag("--swiglu", f.swiglu, "SwiGLU experts: (silu(u W1^T) * (u W3^T)) W2^T instead of GELU");
  cmd.add_flag("--group-query-attention", f.group_query_attention,
               "Grouped-query attention: --num-query-groups KV heads shared by the query heads");
  cmd.add_option("--num-query-groups", f.num_query_groups,
                 "KV heads g with --group-query-attention (must divide --num-attention-heads)")
      ->capture_default_str();
  cmd.add_flag("--disable-bias-linear", f.disable_bias_linear,
               "No biases in the attention and expert projections");
  cmd.add_flag("--untie-embeddings-and-output-weights", f.untie_embeddings_and_output_weights,
               "An LM head of its own (lm_head.weight) instead of the token embedding");
}

const std::vector<std::string>& family_flag_names() {
  static const std::vector<std::string> names = {
      "--model-family",          "--normalization",
      "--norm-epsilon",          "--position-embedding-type",
      "--rotary-base",           "--swiglu",
      "--group-query-attention", "--num-query-groups",
      "--disable-bias-linear",   "--untie-embeddings-and-output-weights"};
  return names;
}

bool any_family_flag_given(const FamilyFlags& f) {
  for (const std::string& name : family_flag_names())
    if (f.command->count(name) > 0) return true;
  return false;
}

void apply_family_flags(const FamilyFlags& f, ModelConfig& config) {
  auto given = [&](const char* name) { return f.command->count(name) > 0; };
  if (given("--model-family")) config.set_family(f.family);
  if (given("--normalization")) config.normalization = f.normalization;
  if (given("--norm-epsilon")) config.norm_epsilon = f.norm_epsilon;
  if (given("--position-embedding-type")) config.position_embedding_type = f.position_embedding_type;
  if (given("--rotary-base")) config.rotary_base = f.rotary_base;
  if (given("--swiglu")) config.swiglu = f.swiglu;
  if (given("--disable-bias-linear")) config.add_bias_linear = !f.disable_bias_linear;
  if (given("--untie-embeddings-and-output-weights"))
    config.untie_embeddings_and_output_weights = f.untie_embeddings_and_output_weights;
  AMPIPE_CHECK(!given("--num-query-groups") || f.group_query_attention)
      << "--num-query-groups " << f.num_query_groups << " needs --group-query-attention (as in Megatron-LM)";
  if (f.group_query_attention) {
    AMPIPE_CHECK(f.num_query_groups >= 1) << "--num-query-groups must be >= 1, got " << f.num_query_groups;
    config.num_query_groups = f.num_query_groups;
  }
}

void add_device_flags(CLI::App& cmd, std::string& device, std::string& distributed_backend, const char* what) {
  cmd.add_option(
         "--device", device,
         std::string("Where ") + what +
             ": cpu, or cuda (one NVIDIA GPU, float32 or --bf16: the model's parameters and activations, and "
             "in "
             "train the optimizer state, live on the GPU; inputs move there once per step). Checkpoints "
             "are the same float32 files either way, so a model trained on one device loads on the other. "
             "cuda needs a CUDA build and a usable GPU (the error names what is missing); under mpirun each "
             "rank takes the GPU of its local rank (collectives: --distributed-backend); --threads "
             "still sizes the host thread pool. The CUDA backend has not yet run on a GPU (docs/GPU.md)")
      ->capture_default_str();
  cmd.add_option("--distributed-backend", distributed_backend,
                 "With --device cuda under mpirun, what moves GPU buffers between ranks: nccl (one rank per "
                 "GPU, no host copies) or mpi (staged through host memory; also for several ranks sharing a "
                 "GPU, which NCCL refuses). Default: nccl where this build has NCCL and every rank has a GPU "
                 "of its own, else mpi (rank 0 says why). Tested under the GPU emulator only (docs/GPU.md)")
      ->check(CLI::IsMember({"nccl", "mpi"}));
}

void add_precision_flag(CLI::App& cmd, bool& bf16, const char* what) {
  cmd.add_flag(
      "--bf16", bf16,
      std::string("Mixed precision: ") + what +
          " with the GEMM operands (linear weights, the LM head, their inputs) in bf16, accumulating "
          "in float32, and the MoE all-to-alls carrying bf16 tokens (half the bytes). Parameters, "
          "gradients, optimizer state and checkpoints stay float32 (a checkpoint resumes or loads in "
          "either precision); norms, attention, the router, the loss and AdamW run in float32. "
          "docs/MODEL.md \"Precision\" says what runs in which dtype");
}

}  // namespace ampipe
