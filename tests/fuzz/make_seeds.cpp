// Writes the binary and writer-made seeds of the fuzzing corpus (tests/fuzz/corpus) with the
// project's own writers, so the seeds are exactly what ampipe produces:
//   safetensors/       write_safetensors files (2 tensors with metadata; 1 tensor without), and a
//                      hand-laid BF16 + F16 file (the Hugging Face dtypes the header reader admits)
//   checkpoint_config/ the "__metadata__" object of model.safetensors as save_checkpoint writes it
//                      (GPT and Mixtral families)
//   indexed_dataset/   IndexedDatasetWriter pairs, packed as the harness reads them: 4-byte
//                      little-endian .idx length, the .idx, then the .bin
//   hf_config/         config.json as export_hf_checkpoint writes it (a tiny Mixtral)
//   sharded_index/     checkpoint_index.json as write_sharded_index writes it for the shard of
//                      sharded_fixture.h
// The text seeds (profiles, lists, sizes) are plain files in the repository. Usage:
// make_fuzz_seeds CORPUS_DIR (built with AMPIPE_FUZZ=ON; scripts/fuzz.sh --seeds runs it). Output is
// deterministic; existing seeds of the same names are replaced.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/gpt.h"
#include "sharded_fixture.h"
#include "train/hf_checkpoint.h"
#include "train/indexed_dataset.h"
#include "train/safetensors.h"

namespace fs = std::filesystem;
using namespace ampipe;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_all(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  AMPIPE_CHECK(out.good()) << "cannot write " << path;
}

std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

void safetensors_seeds(const fs::path& out, const fs::path& tmp) {
  const std::string a = (tmp / "a.safetensors").string(), b = (tmp / "b.safetensors").string();
  Tensor i32 = Tensor::empty({4}, DType::I32);
  for (int32_t i = 0; i < 4; ++i) i32.data<int32_t>()[i] = i - 1;
  write_safetensors(a, {{"weight", Tensor::from({2, 3}, {1, -2, 0.5f, 0, 3, -0.25f})}, {"index", i32}},
                    {{"format", "pt"}, {"iteration", "3"}});
  write_safetensors(b, {{"bias", Tensor::from({1}, {0.125f})}}, {});
  write_all(out / "two_tensors.safetensors", read_all(a));
  write_all(out / "one_tensor.safetensors", read_all(b));
  // BF16 [2] (1.0, -2.0) then F16 [2] (1.0, 65504), as Hugging Face checkpoints store them.
  std::string header =
      R"({"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"f":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  write_all(out / "bf16_f16.safetensors",
            le(header.size(), 8) + header + le(0x3f80, 2) + le(0xc000, 2) + le(0x3c00, 2) + le(0x7bff, 2));
}

void checkpoint_config_seeds(const fs::path& out) {
  ModelConfig gpt;
  auto meta = gpt.to_metadata();
  meta["iteration"] = "3";
  write_all(out / "gpt.json", nlohmann::json(meta).dump());
  ModelConfig mixtral;
  mixtral.set_family("mixtral");
  mixtral.num_query_groups = 2;
  mixtral.top_k = 2;
  meta = mixtral.to_metadata();
  meta["iteration"] = "500";
  write_all(out / "mixtral.json", nlohmann::json(meta).dump());
}

void indexed_dataset_seeds(const fs::path& out, const fs::path& tmp) {
  struct Seed {
    const char* name;
    IndexedDType dtype;
    std::vector<std::vector<int32_t>> documents;
  };
  const std::vector<Seed> seeds = {{"uint16_3docs", IndexedDType::U16, {{1, 2, 3}, {}, {65535, 0}}},
                                   {"int32_2docs", IndexedDType::I32, {{100000, 7}, {255}}},
                                   {"uint8_1doc", IndexedDType::U8, {{9, 8, 7, 6}}}};
  for (const Seed& s : seeds) {
    const std::string prefix = (tmp / s.name).string();
    IndexedDatasetWriter writer(prefix, s.dtype);
    for (const auto& d : s.documents) writer.add_document(d);
    writer.finalize();
    const std::string idx = read_all(indexed_idx_path(prefix)), bin = read_all(indexed_bin_path(prefix));
    write_all(out / (std::string(s.name) + ".idxbin"), le(idx.size(), 4) + idx + bin);
  }
}

void hf_config_seeds(const fs::path& out, const fs::path& tmp) {
  ModelConfig c;
  c.set_family("mixtral");
  c.vocab_size = 16;
  c.max_seq_len = 8;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_query_groups = 1;
  c.num_layers = 1;
  c.num_experts = 2;
  c.ffn_hidden_size = 8;
  c.top_k = 2;
  GptMoe model(c);
  export_hf_checkpoint(model, (tmp / "hf").string());
  write_all(out / "tiny_mixtral_config.json", read_all((tmp / "hf" / "config.json").string()));
}

void sharded_index_seeds(const fs::path& out, const fs::path& tmp) {
  const fs::path dir = tmp / "sharded";
  fs::create_directories(dir);
  fuzz::write_sharded_fixture(dir.string(), /*with_index=*/true);
  write_all(out / "index.json", read_all(sharded_index_path(dir.string())));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const fs::path corpus = argv[1];
  const fs::path tmp = fs::temp_directory_path() / ("ampipe-fuzz-seeds-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  try {
    safetensors_seeds(corpus / "safetensors", tmp);
    checkpoint_config_seeds(corpus / "checkpoint_config");
    indexed_dataset_seeds(corpus / "indexed_dataset", tmp);
    hf_config_seeds(corpus / "hf_config", tmp);
    sharded_index_seeds(corpus / "sharded_index", tmp);
  } catch (const Error& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    fs::remove_all(tmp);
    return 1;
  }
  fs::remove_all(tmp);
  return 0;
}
