// Hugging Face interchange for the Mixtral family: the directory layout that transformers'
// MixtralForCausalLM loads (config.json + model.safetensors, or shards + model.safetensors.index.json).
//
// Names (ampipe -> Hugging Face), l a layer and e an expert:
//   embed.token.weight            model.embed_tokens.weight
//   final_ln.weight               model.norm.weight
//   lm_head.weight                lm_head.weight
//   blocks.l.ln1.weight           model.layers.l.input_layernorm.weight
//   blocks.l.ln2.weight           model.layers.l.post_attention_layernorm.weight
//   blocks.l.attn.{q,k,v,o}.weight  model.layers.l.self_attn.{q,k,v,o}_proj.weight
//   blocks.l.moe.router.weight    model.layers.l.block_sparse_moe.gate.weight
//   blocks.l.moe.w{1,2,3}.weight  [E, ...] slice e =
//   model.layers.l.block_sparse_moe.experts.e.w{1,2,3}.weight
//
// config.json carries the model's shapes under transformers' names in a form Transformers 4.x and
// 5.x both load, and two ampipe-only keys that transformers ignores: "capacity_factor" (0 = dropless,
// the default on import) and "tokenizer" ("byte" by default); train/hf_config.h has the details and
// the reader, which accepts either version's form. The tokenizer is exported with the model
// (tokenizer files and generation_config.json, train/hf_tokenizer.h), so AutoTokenizer loads it and
// ampipe's own --load of the export finds a SentencePiece model's tokenizer.model.
//
// Export writes every file atomically (temporary file + rename), removes a previous export's
// config.json first and writes the new one last, so an interrupted export never leaves a directory
// that looks complete. Import parses config.json and every safetensors header, and checks every
// name, shape and dtype against config.json before it reads any tensor data; F32 tensors are read
// as they are, BF16 and F16 ones converted to float32 exactly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/gpt.h"
#include "train/tokenizer.h"

namespace ampipe {

struct HfExportOptions {
  // Largest sum of tensor bytes in one file; past it the export is sharded (a tensor larger than the
  // limit gets a file of its own). transformers' default, 5 GB = 5e9 bytes.
  uint64_t max_shard_bytes = 5'000'000'000ull;
  // The tensors' dtype in the files and config.json: F32, or BF16 (each value rounded to nearest
  // even; half the bytes). export_hf_checkpoint(load_dir, ...) takes the checkpoint's training
  // precision when `dtype` is unset.
  std::optional<DType> dtype;
  // The model's tokenizer (its identity must be config.tokenizer); nullptr: the byte tokenizer, and a
  // model trained with another one is refused. Borrowed for the call.
  const Tokenizer* tokenizer = nullptr;
};

struct HfExportResult {
  std::vector<std::string> files;            // the safetensors files written, in order (names in out_dir)
  std::vector<std::string> tokenizer_files;  // the tokenizer files and generation_config.json
  int64_t tensors = 0;                       // tensors written
  DType dtype = DType::F32;                  // their dtype
  uint64_t total_bytes = 0;                  // bytes of tensor data (the index's total_size)
  std::vector<std::string> warnings;         // e.g. a capacity factor transformers does not model
};

// A size in bytes: an integer ("1048576"), or a number with a unit: B, KB, MB, GB, TB (powers of
// 1000, as transformers) or KiB, MiB, GiB, TiB (powers of 1024), case-insensitive ("500MB", "1.5GB").
// Throws ampipe::Error naming `flag` and the value if it is not one, or is below 1 byte.
uint64_t parse_byte_size(const std::string& text, const std::string& flag = "--max-shard-size");

// Why `config` cannot be written in the Mixtral layout: the family and every part that differs
// from Mixtral's (normalization, positions, expert activation, biases, tied head); "" if it can.
std::string hf_export_refusal(const ModelConfig& config);

// Writes `model` to out_dir in the Hugging Face layout. The model must hold all experts (built on
// one rank with the default ModelParallel). Refuses a non-Mixtral model (hf_export_refusal) and an
// out_dir that holds an ampipe checkpoint. Creates out_dir if needed; a previous export there
// (config.json, model.safetensors, its index and shards, the tokenizer files) is replaced, other
// files are left alone.
HfExportResult export_hf_checkpoint(const GptMoe& model, const std::string& out_dir,
                                    const HfExportOptions& options = {});
// Reads the checkpoint in `load_dir` (ampipe's, or a Hugging Face one) and exports it with its
// tokenizer (checkpoint_tokenizer); refuses a non-Mixtral checkpoint before reading its weights.
HfExportResult export_hf_checkpoint(const std::string& load_dir, const std::string& out_dir,
                                    const HfExportOptions& options = {});

// True if `dir` holds a Hugging Face checkpoint: config.json and model.safetensors or
// model.safetensors.index.json, and no model.safetensors carrying ampipe's metadata.
bool is_hf_checkpoint(const std::string& dir);
// The model config of a Hugging Face directory (config.json in either Transformers version's form,
// validated; refuses naming the field: train/hf_config.h).
ModelConfig read_hf_config(const std::string& dir);
// Copies the weights of a Hugging Face directory into `model` (each rank its experts' slice);
// refuses a config that differs from the model's, and any missing, extra, misshapen or
// non-float tensor, naming it, before reading any tensor data.
void load_hf_weights(const std::string& dir, GptMoe& model);

}  // namespace ampipe
