#include "train/hf_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "kernels/elementwise.h"
#include "train/checkpoint.h"
#include "train/hf_config.h"
#include "train/hf_tokenizer.h"
#include "train/safetensors.h"

namespace ampipe {

namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigName = "config.json";
constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

bool is_shard_name(const std::string& name) {
  static const std::regex shard(R"(model-[0-9]{5}-of-[0-9]{5}\.safetensors)");
  return std::regex_match(name, shard);
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

// One tensor of the Hugging Face layout and where it lives in ampipe's model.
struct HfTensor {
  std::string hf_name;
  std::string ampipe_name;
  int64_t expert = -1;  // >= 0: slice `expert` of an [E, ...] ampipe tensor
  Shape shape;          // the Hugging Face shape
  int64_t row_begin = -1, row_end = -1;  // >= 0: rows [begin, end) of the ampipe tensor (a fused QKV)
};

// Every tensor of a Mixtral model in transformers' state-dict order.
std::vector<HfTensor> hf_layout(const ModelConfig& c) {
  const int64_t d = c.hidden_size, hd = c.head_dim(), h = c.num_attention_heads, g = c.kv_heads();
  const int64_t f = c.ffn_hidden_size, V = c.vocab_size;
  std::vector<HfTensor> out;
  out.push_back({"model.embed_tokens.weight", "embed.token.weight", -1, {V, d}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string hf = "model.layers." + std::to_string(l) + ".";
    const std::string am = "blocks." + std::to_string(l) + ".";
    if (c.mixtral()) {
      out.push_back({hf + "self_attn.q_proj.weight", am + "attn.q.weight", -1, {h * hd, d}});
      out.push_back({hf + "self_attn.k_proj.weight", am + "attn.k.weight", -1, {g * hd, d}});
      out.push_back({hf + "self_attn.v_proj.weight", am + "attn.v.weight", -1, {g * hd, d}});
      out.push_back({hf + "self_attn.o_proj.weight", am + "attn.o.weight", -1, {d, h * hd}});
    } else {  // the GPT family fuses Q, K and V (rows q, then k, then v) and names the output "proj"
      const int64_t q = h * hd, kv = g * hd;
      out.push_back({hf + "self_attn.q_proj.weight", am + "attn.qkv.weight", -1, {q, d}, 0, q});
      out.push_back({hf + "self_attn.k_proj.weight", am + "attn.qkv.weight", -1, {kv, d}, q, q + kv});
      out.push_back(
          {hf + "self_attn.v_proj.weight", am + "attn.qkv.weight", -1, {kv, d}, q + kv, q + 2 * kv});
      out.push_back({hf + "self_attn.o_proj.weight", am + "attn.proj.weight", -1, {d, q}});
    }
    out.push_back({hf + "block_sparse_moe.gate.weight", am + "moe.router.weight", -1, {c.num_experts, d}});
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string ex = hf + "block_sparse_moe.experts." + std::to_string(e) + ".";
      out.push_back({ex + "w1.weight", am + "moe.w1.weight", e, {f, d}});
      out.push_back({ex + "w2.weight", am + "moe.w2.weight", e, {d, f}});
      out.push_back({ex + "w3.weight", am + "moe.w3.weight", e, {f, d}});
    }
    out.push_back({hf + "input_layernorm.weight", am + "ln1.weight", -1, {d}});
    out.push_back({hf + "post_attention_layernorm.weight", am + "ln2.weight", -1, {d}});
  }
  out.push_back({"model.norm.weight", "final_ln.weight", -1, {d}});
  out.push_back({"lm_head.weight", "lm_head.weight", -1, {V, d}});
  return out;
}

uint64_t numel(const Shape& s) {
  uint64_t n = 1;
  for (int64_t v : s) n *= static_cast<uint64_t>(v);
  return n;
}

nlohmann::json read_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + " is not valid JSON: " + e.what());
  }
}

// The files of a Hugging Face directory with their headers, and where each tensor is.
struct HfFiles {
  std::vector<SafetensorsHeader> headers;
  std::map<std::string, size_t> where;  // tensor name -> index into headers
};

HfFiles read_hf_headers(const std::string& dir) {
  HfFiles files;
  const std::string single = join(dir, kSingleName), index = join(dir, kIndexName);
  if (fs::exists(single)) {  // transformers prefers the single file too
    files.headers.push_back(read_safetensors_header(single));
    for (const auto& [name, e] : files.headers[0].tensors) files.where[name] = 0;
    return files;
  }
  AMPIPE_CHECK(fs::exists(index)) << "Hugging Face checkpoint '" << dir << "' has neither " << kSingleName
                                  << " nor " << kIndexName;
  const nlohmann::json j = read_json(index);
  AMPIPE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object())
      << index << ": missing field 'weight_map' (an object: tensor name -> shard file)";
  std::map<std::string, std::string> weight_map;
  std::map<std::string, size_t> shard_of_file;
  for (const auto& [name, file] : j["weight_map"].items()) {
    AMPIPE_CHECK(file.is_string()) << index << ": weight_map entry '" << name << "' is not a file name";
    const std::string shard = file.get<std::string>();
    AMPIPE_CHECK(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..")
        << index << ": weight_map entry '" << name << "' names '" << shard
        << "', which is not a file name in the checkpoint directory";
    weight_map[name] = shard;
    shard_of_file.emplace(shard, 0);
  }
  for (auto& [shard, i] : shard_of_file) {
    i = files.headers.size();
    files.headers.push_back(read_safetensors_header(join(dir, shard)));
  }
  for (const auto& [shard, i] : shard_of_file) {
    for (const auto& [name, e] : files.headers[i].tensors) {
      auto listed = weight_map.find(name);
      AMPIPE_CHECK(listed != weight_map.end())
          << "Hugging Face checkpoint '" << dir << "': tensor '" << name << "' in " << shard << " is not in "
          << kIndexName << "'s weight_map";
      AMPIPE_CHECK(listed->second == shard)
          << "Hugging Face checkpoint '" << dir << "': tensor '" << name << "' is in " << shard << " but "
          << kIndexName << " maps it to " << listed->second;
      files.where[name] = i;
    }
  }
  for (const auto& [name, shard] : weight_map)
    AMPIPE_CHECK(files.where.count(name))
        << "Hugging Face checkpoint '" << dir << "': " << kIndexName << " maps tensor '" << name << "' to "
        << shard << ", which does not hold it";
  return files;
}

// True if `path` is a safetensors file whose metadata is ampipe's (a model config).
bool has_ampipe_metadata(const std::string& path) {
  if (!fs::exists(path)) return false;
  try {
    return read_safetensors_header(path).metadata.count("vocab_size") != 0;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

uint64_t parse_byte_size(const std::string& text, const std::string& flag) {
  auto refuse = [&]() -> uint64_t {
    throw Error(flag + " '" + text + "' is not a size: give bytes (e.g. 1048576) or a number with a unit " +
                "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 500MB or 5GB");
  };
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  const std::string number = text.substr(0, i);
  std::string unit = text.substr(i);
  if (number.empty() || number.front() == '.' || std::count(number.begin(), number.end(), '.') > 1) refuse();
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  static const std::map<std::string, double> units = {
      {"", 1},      {"B", 1},      {"KB", 1e3},        {"MB", 1e6},           {"GB", 1e9},
      {"TB", 1e12}, {"KIB", 1024}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  auto u = units.find(unit);
  if (u == units.end()) refuse();
  uint64_t bytes = 0;
  if (unit.empty() || unit == "B") {
    if (number.find('.') != std::string::npos) refuse();
    try {
      size_t used = 0;
      bytes = std::stoull(number, &used);
      if (used != number.size()) refuse();
    } catch (const std::logic_error&) {
      refuse();
    }
  } else {
    // strtod, not stod: a number out of double's range is HUGE_VAL or about 0 here (refused below),
    // where stod threw std::out_of_range past the ampipe::Error contract.
    const double value = std::strtod(number.c_str(), nullptr) * u->second;
    // 2^64 bytes and more do not fit uint64_t (llround, into int64_t, failed from 2^63 on).
    AMPIPE_CHECK(value < 18446744073709551616.0)
        << flag << " '" << text << "' is too large: at most 18446744073709551615 bytes (2^64 - 1)";
    bytes = static_cast<uint64_t>(std::round(value));
  }
  AMPIPE_CHECK(bytes >= 1) << flag << " '" << text << "' must be at least 1 byte";
  return bytes;
}

std::string hf_export_refusal(const ModelConfig& c) {
  std::vector<std::string> parts;
  if (!c.rms_norm()) parts.push_back(c.normalization + " (Mixtral: RMSNorm)");
  if (!c.rope()) parts.push_back("learned absolute positions (Mixtral: rope)");
  if (!c.swiglu) parts.push_back("GELU experts (Mixtral: SwiGLU w1/w2/w3)");
  if (c.add_bias_linear) parts.push_back("biases (Mixtral: none)");
  if (!c.untie_embeddings_and_output_weights)
    parts.push_back("an LM head tied to the embedding (Mixtral: untied)");
  if (!c.normalize_gates())
    parts.push_back(
        "top-1 routing whose gate is the router's probability (Mixtral renormalizes the chosen "
        "gates, so its top-1 gate is 1: use --moe-router-topk 2 or more, or --model-family mixtral)");
  if (parts.empty()) return "";  // either family: a 'gpt' one exports with its fused QKV split
  std::ostringstream s;
  s << "the Hugging Face Mixtral layout cannot express this '" << c.family << "' family model; it has ";
  for (size_t i = 0; i < parts.size(); ++i) s << (i ? ", " : "") << parts[i];
  if (!c.mixtral())
    s << " (a 'gpt' family model composed of Mixtral's parts, --normalization RMSNorm "
         "--position-embedding-type rope --swiglu --disable-bias-linear "
         "--untie-embeddings-and-output-weights "
         "with top-k >= 2, exports; or use --model-family mixtral)";
  return s.str();
}

namespace {

// The model's tensors under their Hugging Face names, in transformers' order, as views of the
// parameters (one expert's slice of the stacked expert tensors each).
std::vector<std::pair<std::string, Tensor>> hf_tensors(const GptMoe& model) {
  const ModelConfig& c = model.config();
  std::map<std::string, const Parameter*> by_name;
  for (const Parameter& p : model.params().all()) by_name[p.name] = &p;
  std::set<std::string> unused;
  for (const auto& [name, p] : by_name) unused.insert(name);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const HfTensor& t : hf_layout(c)) {
    auto it = by_name.find(t.ampipe_name);
    AMPIPE_CHECK(it != by_name.end())
        << "the model has no parameter '" << t.ampipe_name << "' (needed for " << t.hf_name << ")";
    const Parameter& p = *it->second;
    unused.erase(p.name);
    Tensor v = p.value;
    if (t.row_begin >= 0) v = v.rows(t.row_begin, t.row_end);
    if (t.expert >= 0) {
      AMPIPE_CHECK(p.is_expert && p.expert_offset == 0 && v.dim(0) == c.num_experts)
          << "export needs a model holding all " << c.num_experts << " experts; '" << p.name
          << "' holds experts [" << p.expert_offset << ", " << p.expert_offset + v.dim(0)
          << ") (build it on one rank with the default ModelParallel)";
      v = v.rows(t.expert, t.expert + 1).reshape(t.shape);
    }
    AMPIPE_CHECK(v.shape() == t.shape && v.dtype() == DType::F32)
        << "parameter '" << p.name << "' is " << shape_string(v.shape()) << ", the layout needs "
        << shape_string(t.shape) << " for " << t.hf_name;
    tensors.emplace_back(t.hf_name, v);
  }
  AMPIPE_CHECK(unused.empty()) << "the model's parameter '" << *unused.begin()
                               << "' has no counterpart in the Hugging Face Mixtral layout";
  return tensors;
}

// Shards: consecutive tensors up to the limit (a larger tensor alone), as transformers cuts them.
std::vector<std::vector<size_t>> cut_shards(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                            uint64_t max_shard_bytes, uint64_t& total) {
  std::vector<std::vector<size_t>> shards;
  uint64_t shard_bytes = 0;
  total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t bytes = numel(tensors[i].second.shape()) * dtype_size(tensors[i].second.dtype());
    if (shards.empty() || (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
    total += bytes;
  }
  return shards;
}

// The output directory: never over an ampipe checkpoint; a previous export is replaced, and its
// config.json goes first so the directory does not look complete until the new one is written.
void prepare_export_directory(const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  AMPIPE_CHECK(!ec) << "cannot create directory '" << out_dir << "': " << ec.message();
  AMPIPE_CHECK(!fs::exists(join(out_dir, "optimizer.safetensors")) &&
               !has_ampipe_metadata(join(out_dir, kSingleName)))
      << "'" << out_dir << "' holds an ampipe checkpoint; export to another directory";
  if (fs::exists(join(out_dir, kConfigName))) {
    fs::remove(join(out_dir, kConfigName), ec);
    AMPIPE_CHECK(!ec) << "cannot remove " << join(out_dir, kConfigName) << ": " << ec.message();
    fsync_directory(out_dir);
  }
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const std::string name = entry.path().filename().string();
    const auto& tokenizer_files = hf_tokenizer_file_names();
    const bool tokenizer_file =
        std::find(tokenizer_files.begin(), tokenizer_files.end(), name) != tokenizer_files.end();
    if (name == kSingleName || name == kIndexName || is_shard_name(name) || tokenizer_file) {
      fs::remove(entry.path(), ec);
      AMPIPE_CHECK(!ec) << "cannot remove " << entry.path().string() << ": " << ec.message();
    }
  }
}

}  // namespace

HfExportResult export_hf_checkpoint(const GptMoe& model, const std::string& out_dir,
                                    const HfExportOptions& options) {
  const ModelConfig& c = model.config();
  const std::string refusal = hf_export_refusal(c);
  AMPIPE_CHECK(refusal.empty()) << "cannot export to the Hugging Face Mixtral layout: " << refusal;
  AMPIPE_CHECK(options.max_shard_bytes >= 1) << "the shard size limit must be at least 1 byte";
  const DType dtype = options.dtype.value_or(DType::F32);
  AMPIPE_CHECK(dtype == DType::F32 || dtype == DType::BF16)
      << "export writes float32 or bf16 tensors, not " << dtype_name(dtype);
  std::vector<std::pair<std::string, Tensor>> tensors = hf_tensors(model);
  if (dtype == DType::BF16)
    for (auto& [name, t] : tensors) t = kernels::as_dtype(t.is_contiguous() ? t : t.clone(), DType::BF16);
  std::unique_ptr<Tokenizer> byte;
  const Tokenizer* tokenizer = options.tokenizer;
  if (tokenizer == nullptr) {
    AMPIPE_CHECK(c.tokenizer == "byte") << "exporting a model trained with tokenizer " << c.tokenizer
                                        << " needs that tokenizer (HfExportOptions::tokenizer)";
    byte = make_tokenizer("byte", "");
    tokenizer = byte.get();
  }
  const HfTokenizerExport tokenizer_export = hf_tokenizer_export(*tokenizer, c);
  uint64_t total = 0;
  const std::vector<std::vector<size_t>> shards = cut_shards(tensors, options.max_shard_bytes, total);
  prepare_export_directory(out_dir);

  HfExportResult result;
  result.tensors = static_cast<int64_t>(tensors.size());
  result.dtype = dtype;
  result.total_bytes = total;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shards.size() == 1 ? kSingleName : shard_name(s, shards.size());
    std::vector<std::pair<std::string, Tensor>> part;
    for (size_t i : shards[s]) {
      part.push_back(tensors[i]);
      weight_map[tensors[i].first] = name;
    }
    write_safetensors(join(out_dir, name), part, {{"format", "pt"}});
    result.files.push_back(name);
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomically(join(out_dir, kIndexName), index.dump(2) + "\n");
  }
  for (const HfFile& file : tokenizer_export.files) {
    write_file_atomically(join(out_dir, file.name), file.bytes);
    result.tokenizer_files.push_back(file.name);
  }
  write_file_atomically(join(out_dir, kConfigName),
                        hf_config_json(c, tokenizer_export.ids, dtype == DType::BF16 ? "bfloat16" : "float32")
                                .dump(2) +
                            "\n");
  result.warnings = tokenizer_export.warnings;

  if (c.capacity_factor != 0) {
    std::ostringstream w;
    w << "capacity_factor " << c.capacity_factor
      << ": ampipe drops (token, expert) pairs past each expert's capacity, transformers' Mixtral is "
         "dropless, so its outputs differ wherever ampipe would drop; config.json keeps capacity_factor "
         "for ampipe";
    result.warnings.push_back(w.str());
  }
  return result;
}

HfExportResult export_hf_checkpoint(const std::string& load_dir, const std::string& out_dir,
                                    const HfExportOptions& options) {
  const ModelConfig c = read_checkpoint_config(load_dir);
  const std::string refusal = hf_export_refusal(c);
  AMPIPE_CHECK(refusal.empty()) << "cannot export checkpoint '" << load_dir
                                << "' to the Hugging Face Mixtral layout: " << refusal;
  const std::unique_ptr<Tokenizer> tokenizer = checkpoint_tokenizer(load_dir, c);
  GptMoe model(c);
  load_model_weights(load_dir, model);
  HfExportOptions with_tokenizer = options;
  with_tokenizer.tokenizer = tokenizer.get();
  if (!with_tokenizer.dtype) with_tokenizer.dtype = c.bf16 ? DType::BF16 : DType::F32;  // as trained
  return export_hf_checkpoint(model, out_dir, with_tokenizer);
}

bool is_hf_checkpoint(const std::string& dir) {
  if (!fs::exists(join(dir, kConfigName))) return false;
  if (!fs::exists(join(dir, kSingleName)) && !fs::exists(join(dir, kIndexName))) return false;
  return !has_ampipe_metadata(join(dir, kSingleName));
}

ModelConfig read_hf_config(const std::string& dir) {
  const std::string path = join(dir, kConfigName);
  return hf_config_from_json(path, read_json(path));
}

void load_hf_weights(const std::string& dir, GptMoe& model) {
  const ModelConfig stored = read_hf_config(dir);
  const std::string diff = stored.differences(model.config());
  AMPIPE_CHECK(diff.empty()) << "checkpoint '" << dir << "' (config.json) describes a different model ("
                             << "checkpoint vs flags: " << diff << ")";
  const HfFiles files = read_hf_headers(dir);
  const std::vector<HfTensor> layout = hf_layout(stored);

  // Every name, shape and dtype against config.json before any data is read.
  std::set<std::string> unused;
  for (const auto& [name, i] : files.where) unused.insert(name);
  for (const HfTensor& t : layout) {
    auto it = files.where.find(t.hf_name);
    AMPIPE_CHECK(it != files.where.end())
        << "Hugging Face checkpoint '" << dir << "' lacks tensor '" << t.hf_name << "'"
        << (t.expert >= 0 ? " (an expert of a layer; config.json says num_local_experts " +
                                std::to_string(stored.num_experts) + ")"
                          : "");
    const SafetensorsHeader& h = files.headers[it->second];
    const SafetensorsEntry& e = h.tensors.at(t.hf_name);
    AMPIPE_CHECK(e.shape == t.shape) << "Hugging Face checkpoint '" << dir << "': tensor '" << t.hf_name
                                     << "' in " << fs::path(h.path).filename().string() << " has shape "
                                     << shape_string(e.shape) << ", config.json implies "
                                     << shape_string(t.shape);
    AMPIPE_CHECK(e.dtype == "F32" || e.dtype == "BF16" || e.dtype == "F16")
        << "Hugging Face checkpoint '" << dir << "': tensor '" << t.hf_name << "' has dtype " << e.dtype
        << "; ampipe reads F32, BF16 and F16";
    unused.erase(t.hf_name);
  }
  AMPIPE_CHECK(unused.empty()) << "Hugging Face checkpoint '" << dir << "' has unexpected tensor '"
                               << *unused.begin() << "' (not part of a Mixtral model with this config.json)";

  std::map<std::string, Parameter*> by_name;
  for (Parameter& p : model.params().all()) by_name[p.name] = &p;
  std::set<std::string> filled;
  // Tensor parallelism: a sharded parameter's whole (T = 1) tensor is filled, then its shard taken.
  const std::vector<TensorParallelShard> shards = model.all_parallel_shards();
  std::map<std::string, Tensor> whole;
  for (const TensorParallelShard& s : shards) whole[s.name] = Tensor::empty(s.full_shape);
  for (const HfTensor& t : layout) {
    auto it = by_name.find(t.ampipe_name);
    AMPIPE_CHECK(it != by_name.end())
        << "the model has no parameter '" << t.ampipe_name << "' for " << t.hf_name;
    Parameter& p = *it->second;
    const Tensor base = whole.count(p.name) ? whole.at(p.name) : p.value;
    Tensor dst = base;
    if (t.row_begin >= 0) dst = dst.rows(t.row_begin, t.row_end);
    if (t.expert >= 0) {
      AMPIPE_CHECK(p.is_expert) << "parameter '" << p.name << "' is not an expert tensor";
      const int64_t local = t.expert - p.expert_offset;
      if (local < 0 || local >= p.value.dim(0)) continue;  // another rank's expert
      dst = base.rows(local, local + 1).reshape(t.shape);
    }
    const Tensor src = read_safetensors_tensor_f32(files.headers[files.where.at(t.hf_name)], t.hf_name);
    AMPIPE_CHECK(dst.shape() == src.shape())
        << "parameter '" << p.name << "' is " << shape_string(dst.shape()) << ", " << t.hf_name << " is "
        << shape_string(src.shape());
    dst.copy_from(src);
    filled.insert(p.name);
  }
  for (const TensorParallelShard& s : shards)
    model.params().get(s.name).value.copy_from(take_tensor_parallel_shard(whole.at(s.name), s));
  for (const Parameter& p : model.params().all())
    AMPIPE_CHECK(filled.count(p.name))
        << "the model's parameter '" << p.name << "' has no counterpart in the Hugging Face Mixtral layout";
}

}  // namespace ampipe
