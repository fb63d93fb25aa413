#include "train/sharded_checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "train/safetensors.h"

namespace ampipe {

namespace fs = std::filesystem;
using json = nlohmann::json;

static constexpr const char* kFormat = "ampipe-sharded-v1";

std::string sharded_index_path(const std::string& dir) {
  return (fs::path(dir) / "checkpoint_index.json").string();
}

bool is_sharded_checkpoint(const std::string& dir) {
  std::error_code ec;
  return fs::exists(sharded_index_path(dir), ec);
}

std::string shard_file_name(int rank, int world) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard_%05d_of_%05d.safetensors", rank, world);
  return buf;
}

void write_rank_shard(const std::string& dir, int rank, int world, int64_t iteration,
                      const std::vector<std::pair<std::string, Tensor>>& pieces) {
  std::vector<std::pair<std::string, Tensor>> host;
  host.reserve(pieces.size());
  for (const auto& [name, t] : pieces) host.emplace_back(name, t.to(Device::CPU).reshape({t.numel()}));
  const std::map<std::string, std::string> meta = {{"format", kFormat},
                                                   {"iteration", std::to_string(iteration)},
                                                   {"rank", std::to_string(rank)},
                                                   {"world_size", std::to_string(world)}};
  write_safetensors((fs::path(dir) / shard_file_name(rank, world)).string(), host, meta);
}

namespace {

// "<tensor>@<begin>" -> (tensor, begin); false for another shape of name.
bool split_piece_name(const std::string& key, std::string& tensor, int64_t& begin) {
  const size_t at = key.rfind('@');
  if (at == std::string::npos || at == 0 || at + 1 >= key.size()) return false;
  const std::string digits = key.substr(at + 1);
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  tensor = key.substr(0, at);
  begin = std::stoll(digits);
  return true;
}

// Elements of a shape; the index is outside input, so a negative dimension or a product past 2^62
// is refused rather than overflowed.
int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    AMPIPE_CHECK(d >= 0 && (d == 0 || n <= (int64_t{1} << 62) / d))
        << "shape " << shape_string(shape) << " has a negative dimension or more than 2^62 elements";
    n *= d;
  }
  return n;
}

// Sorts pieces by begin and returns why they do not tile [0, numel) exactly ("" when they do).
template <class P>
std::string tiling_problem(std::vector<P>& pieces, int64_t numel) {
  std::sort(pieces.begin(), pieces.end(), [](const P& a, const P& b) { return a.begin < b.begin; });
  int64_t at = 0;
  for (const P& p : pieces) {
    if (p.begin != at) {
      return p.begin > at
                 ? "elements [" + std::to_string(at) + ", " + std::to_string(p.begin) + ") are in no shard"
                 : "elements from " + std::to_string(p.begin) + " are in two shards";
    }
    at += p.numel;
  }
  if (at != numel)
    return "its pieces hold " + std::to_string(at) + " of its " + std::to_string(numel) + " elements";
  return "";
}

std::map<std::string, std::string> string_map(const json& j, const char* what) {
  AMPIPE_CHECK(j.is_object()) << "'" << what << "' is not an object";
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : j.items()) {
    AMPIPE_CHECK(v.is_string()) << "'" << what << "." << k << "' is not a string";
    out[k] = v.get<std::string>();
  }
  return out;
}

}  // namespace

void write_sharded_index(const std::string& dir, int world, int64_t iteration,
                         const std::map<std::string, Shape>& shapes,
                         const std::map<std::string, std::string>& model_metadata,
                         const std::map<std::string, std::string>& optimizer_metadata) {
  struct Found {
    int64_t file, begin, numel;
    std::string key;
  };
  std::map<std::string, std::vector<Found>> found;
  json files = json::array();
  for (int r = 0; r < world; ++r) {
    const std::string name = shard_file_name(r, world);
    const SafetensorsHeader header = read_safetensors_header((fs::path(dir) / name).string());
    files.push_back({{"name", name}, {"bytes", header.file_size}});
    for (const auto& [key, entry] : header.tensors) {
      std::string tensor;
      int64_t begin = 0;
      AMPIPE_CHECK(split_piece_name(key, tensor, begin) && shapes.count(tensor) != 0 &&
                   entry.shape.size() == 1)
          << name << " holds '" << key << "', which is not a piece of any tensor of the model";
      found[tensor].push_back({r, begin, entry.shape[0], key});
    }
  }
  json tensors = json::object();
  for (const auto& [tensor, shape] : shapes) {
    std::vector<Found>& pieces = found[tensor];
    const std::string problem = tiling_problem(pieces, numel_of(shape));
    AMPIPE_CHECK(problem.empty()) << "the shards do not hold tensor '" << tensor << "' whole: " << problem;
    json list = json::array();
    for (const Found& p : pieces)
      list.push_back({{"file", p.file}, {"key", p.key}, {"begin", p.begin}, {"numel", p.numel}});
    tensors[tensor] = {{"shape", shape}, {"pieces", list}};
  }
  const json index = {{"format", kFormat},
                      {"iteration", iteration},
                      {"world_size", world},
                      {"model_metadata", model_metadata},
                      {"optimizer_metadata", optimizer_metadata},
                      {"files", files},
                      {"tensors", tensors}};
  write_file_atomically(sharded_index_path(dir), index.dump(1) + "\n");
}

ShardedCheckpoint::ShardedCheckpoint(const std::string& dir) : dir_(dir) {
  const std::string path = sharded_index_path(dir);
  json index;
  try {
    index = json::parse(read_file(path));
  } catch (const json::exception& e) {
    AMPIPE_CHECK(false) << path << " is not valid JSON (" << e.what() << ")";
  }
  try {
    AMPIPE_CHECK(index.is_object() && index.value("format", "") == kFormat)
        << "its format is not " << kFormat;
    iteration_ = index.at("iteration").get<int64_t>();
    model_metadata_ = string_map(index.at("model_metadata"), "model_metadata");
    optimizer_metadata_ = string_map(index.at("optimizer_metadata"), "optimizer_metadata");
    std::vector<SafetensorsHeader> headers;
    for (const json& f : index.at("files")) {
      const std::string name = f.at("name").get<std::string>();
      AMPIPE_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "..")
          << "it names a shard file '" << name << "' outside its directory";
      const std::string file = (fs::path(dir) / name).string();
      std::error_code ec;
      AMPIPE_CHECK(fs::exists(file, ec)) << "shard " << name << " is missing";
      const uint64_t bytes = f.at("bytes").get<uint64_t>();
      const uint64_t actual = fs::file_size(file, ec);
      AMPIPE_CHECK(!ec && actual == bytes)
          << "shard " << name << " has " << actual << " bytes, the index says " << bytes
          << " (truncated or replaced)";
      SafetensorsHeader header;
      try {
        header = read_safetensors_header(file);
      } catch (const std::exception& e) {
        AMPIPE_CHECK(false) << "shard " << name << ": " << e.what();
      }
      const auto stamp = header.metadata.find("iteration");
      AMPIPE_CHECK(stamp != header.metadata.end() && stamp->second == std::to_string(iteration_))
          << "shard " << name << " is not stamped iteration " << iteration_ << " (a shard of another save)";
      files_.push_back(file);
      headers.push_back(std::move(header));
    }
    for (const auto& [tensor, t] : index.at("tensors").items()) {
      Entry entry;
      entry.shape = t.at("shape").get<Shape>();
      for (const json& p : t.at("pieces")) {
        Piece piece;
        piece.file = p.at("file").get<size_t>();
        piece.begin = p.at("begin").get<int64_t>();
        piece.numel = p.at("numel").get<int64_t>();
        const std::string key = p.at("key").get<std::string>();
        AMPIPE_CHECK(piece.file < headers.size())
            << "tensor '" << tensor << "' names shard file #" << piece.file << " of " << headers.size();
        const SafetensorsHeader& h = headers[piece.file];
        const auto it = h.tensors.find(key);
        AMPIPE_CHECK(it != h.tensors.end() && it->second.dtype == "F32" &&
                     it->second.shape == Shape{piece.numel})
            << "shard " << fs::path(h.path).filename().string() << " lacks piece '" << key << "' of "
            << piece.numel << " float32 elements";
        piece.offset = h.data_begin + it->second.begin;
        entry.pieces.push_back(piece);
      }
      const std::string problem = tiling_problem(entry.pieces, numel_of(entry.shape));
      AMPIPE_CHECK(problem.empty()) << "tensor '" << tensor << "': " << problem;
      tensors_.emplace(tensor, std::move(entry));
    }
  } catch (const json::exception& e) {
    AMPIPE_CHECK(false) << path << " is malformed (" << e.what() << ")";
  } catch (const Error& e) {
    AMPIPE_CHECK(false) << "sharded checkpoint " << dir << ": " << e.what();
  }
}

const Shape& ShardedCheckpoint::shape(const std::string& tensor) const {
  const auto it = tensors_.find(tensor);
  AMPIPE_CHECK(it != tensors_.end()) << "sharded checkpoint " << dir_ << " lacks tensor '" << tensor << "'";
  return it->second.shape;
}

std::vector<std::string> ShardedCheckpoint::tensor_names() const {
  std::vector<std::string> out;
  for (const auto& [name, entry] : tensors_) out.push_back(name);
  return out;
}

void ShardedCheckpoint::read(const std::string& tensor, int64_t begin, Tensor out) const {
  const auto it = tensors_.find(tensor);
  AMPIPE_CHECK(it != tensors_.end()) << "sharded checkpoint " << dir_ << " lacks tensor '" << tensor << "'";
  AMPIPE_CHECK(out.device() == Device::CPU && out.dtype() == DType::F32 && out.is_contiguous())
      << "ShardedCheckpoint::read fills a contiguous float32 host tensor";
  const int64_t end = begin + out.numel();
  AMPIPE_CHECK(begin >= 0 && end <= numel_of(it->second.shape))
      << "elements [" << begin << ", " << end << ") are outside tensor '" << tensor << "' of "
      << numel_of(it->second.shape);
  float* dst = out.data<float>();
  for (const Piece& p : it->second.pieces) {
    const int64_t b = std::max(begin, p.begin), e = std::min(end, p.begin + p.numel);
    if (b >= e) continue;
    std::ifstream in(files_[p.file], std::ios::binary);
    in.seekg(static_cast<std::streamoff>(p.offset + static_cast<uint64_t>(b - p.begin) * sizeof(float)));
    in.read(reinterpret_cast<char*>(dst + (b - begin)),
            static_cast<std::streamsize>((e - b) * sizeof(float)));
    AMPIPE_CHECK(in.good()) << "cannot read elements [" << b << ", " << e << ") of '" << tensor << "' from "
                            << files_[p.file] << " (changed since it was opened?)";
  }
}

std::string sharded_checkpoint_problem(const std::string& dir) {
  try {
    const ShardedCheckpoint checkpoint(dir);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace ampipe
