// The tokenizer files of a Hugging Face export (train/hf_checkpoint.h), so that Transformers'
// AutoTokenizer.from_pretrained(DIR) loads the tokenizer the model was trained with and
// model.generate(...) stops and suppresses as ampipe's model expects:
//
// SentencePiece ("SentencePieceTokenizer"):
//   tokenizer.model          the .model file's exact bytes (also what ampipe's own --load reads)
//   tokenizer_config.json    LlamaTokenizer (the tokenizer class of Mixtral) with the model's <unk>,
//                            <s>, </s> pieces; no BOS or EOS added to an encoded text (ampipe adds
//                            none: `sample` encodes the prompt alone, `preprocess` appends only the
//                            end-of-document id); add_prefix_space = the model's add_dummy_prefix
//   special_tokens_map.json  the same special tokens
//   tokenizer.json           unigram models only: the model as tokenizers' Unigram, and
//                            tokenizer_config.json then names PreTrainedTokenizerFast, because
//                            Transformers 5's LlamaTokenizer rebuilds any .model as BPE (5.x's
//                            AutoTokenizer maps Mixtral to its generic TokenizersBackend, which
//                            builds either type from tokenizer.model exactly; 4.x honours the class)
// Byte ("byte"):
//   tokenizer.json           tokenizers' byte-level BPE with no merges whose vocabulary maps each
//                            byte's byte-level character to the byte's value, so the ids are the
//                            256 byte values, as ampipe's byte tokenizer
//   tokenizer_config.json    PreTrainedTokenizerFast, no special tokens
//   special_tokens_map.json  {}
// Both:
//   generation_config.json   bos/eos/pad ids, and suppress_tokens = the ids past the tokenizer's
//                            vocabulary (Megatron's padding of the model's vocabulary), which
//                            ampipe's sampler never draws either
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "train/hf_config.h"
#include "train/tokenizer.h"

namespace ampipe {

struct HfFile {
  std::string name;   // in the export directory
  std::string bytes;  // its contents
};

struct HfTokenizerExport {
  std::vector<HfFile> files;          // the files above, generation_config.json included
  HfSpecialTokenIds ids;              // for config.json
  std::vector<std::string> warnings;  // e.g. a normalization the exported files do not reproduce
};

// The files that export `tokenizer` with a model of `config` (config.tokenizer must be
// tokenizer.identity(); refused otherwise, naming both).
HfTokenizerExport hf_tokenizer_export(const Tokenizer& tokenizer, const ModelConfig& config);

// Every file name hf_tokenizer_export may write (an export removes a previous export's first).
const std::vector<std::string>& hf_tokenizer_file_names();

}  // namespace ampipe
