#include "train/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <tuple>

#include "core/atomic_file.h"
#include "core/bf16.h"

namespace ampipe {

namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this host would need byte swapping");

// The reference implementation's limit; a larger header is a corrupt or hostile file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

const char* safetensors_dtype(DType dtype) {
  return dtype == DType::F32 ? "F32" : dtype == DType::BF16 ? "BF16" : "I32";
}

[[noreturn]] void bad(const std::string& path, const std::string& problem) {
  throw Error("safetensors file '" + path + "': " + problem);
}

std::string os_error(int err) { return std::error_code(err, std::generic_category()).message(); }

// A read-only file descriptor, closed on scope exit.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) bad(path, "cannot open: " + os_error(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      int err = errno;
      ::close(fd_);
      bad(path, "cannot stat: " + os_error(err));
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~InputFile() { ::close(fd_); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }

  // Reads exactly n bytes at `offset` (within size(), already validated).
  void read_at(uint64_t offset, void* dst, uint64_t n) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) bad(path_, "read failed: " + os_error(errno));
      if (got == 0) bad(path_, "file shrank while being read (truncated by another process?)");
      p += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<uint64_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_ = 0;
};

// Parses the header, refusing duplicate keys in any object (nlohmann would keep the last silently).
nlohmann::json parse_header(const std::string& path, const std::string& text) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto check_keys = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) open_objects.emplace_back();
    if (event == Event::object_end) open_objects.pop_back();
    if (event == Event::key && !open_objects.back().insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, check_keys);
  } catch (const nlohmann::json::exception& e) {
    bad(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) bad(path, "header has the key '" + duplicate + "' twice");
  if (!header.is_object()) bad(path, "header is not a JSON object");
  return header;
}

// The byte size of a dtype name, or 0 when unknown. `any_float` admits BF16 and F16 as well.
uint64_t dtype_bytes(const std::string& dtype, bool any_float) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (any_float && (dtype == "BF16" || dtype == "F16")) return 2;
  return 0;
}

// Validates one tensor entry of the header against a data buffer of `buffer_size` bytes.
SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& entry,
                             uint64_t buffer_size, bool any_float) {
  const std::string what = "tensor '" + name + "'";
  if (!entry.is_object()) bad(path, what + ": entry is not a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json& {
    auto it = entry.find(key);
    if (it == entry.end()) bad(path, what + ": missing \"" + key + "\"");
    return *it;
  };
  SafetensorsEntry e;

  const nlohmann::json& dtype = field("dtype");
  if (!dtype.is_string()) bad(path, what + ": \"dtype\" is not a string");
  e.dtype = dtype.get<std::string>();
  const uint64_t element_bytes = dtype_bytes(e.dtype, any_float);
  if (element_bytes == 0)
    bad(path, what + ": unsupported dtype '" + e.dtype +
                  "' (supported: " + (any_float ? "F32, BF16, F16, I32" : "F32, I32") + ")");

  const nlohmann::json& shape = field("shape");
  if (!shape.is_array()) bad(path, what + ": \"shape\" is not an array");
  int64_t numel = 1;
  // The product of the dimensions other than 0 must fit as well: a contiguous tensor's strides are
  // products of trailing dimensions, so [0, 2^32, 2^32] (no elements) would still overflow them.
  int64_t extent = 1;
  for (const nlohmann::json& d : shape) {
    if (!d.is_number_integer()) bad(path, what + ": \"shape\" holds a non-integer " + d.dump());
    if (d.is_number_unsigned() &&
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      bad(path, what + ": shape dimension " + d.dump() + " overflows");
    const int64_t dim = d.get<int64_t>();
    if (dim < 0)
      bad(path, what + ": negative dimension " + std::to_string(dim) + " in shape " + shape.dump());
    if (__builtin_mul_overflow(numel, dim, &numel))
      bad(path, what + ": shape " + shape.dump() + " overflows");
    if (dim != 0 && __builtin_mul_overflow(extent, dim, &extent))
      bad(path, what + ": shape " + shape.dump() +
                    " overflows (its dimensions other than 0 multiply past 2^63 - 1, even with no elements)");
    e.shape.push_back(dim);
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), element_bytes, &bytes))
    bad(path, what + ": shape " + shape.dump() + " overflows");

  const nlohmann::json& offsets = field("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    bad(path,
        what + ": \"data_offsets\" " + offsets.dump() + " is not [begin, end] of non-negative integers");
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  if (e.begin > e.end) bad(path, what + ": data_offsets " + offsets.dump() + " has begin > end");
  if (e.end > buffer_size)
    bad(path, what + ": data_offsets " + offsets.dump() + " end beyond the data buffer of " +
                  std::to_string(buffer_size) + " bytes (file truncated?)");
  if (e.end - e.begin != bytes)
    bad(path, what + ": data_offsets " + offsets.dump() + " span " + std::to_string(e.end - e.begin) +
                  " bytes but dtype " + e.dtype + " and shape " + shape.dump() + " need " +
                  std::to_string(bytes) + " (wrong length)");
  return e;
}

// Reads and validates the whole header of an open file (entries, metadata, exact tiling).
SafetensorsHeader parse_file_header(const std::string& path, const InputFile& file, bool any_float) {
  if (file.size() < 8)
    bad(path, "file is " + std::to_string(file.size()) + " bytes, shorter than the 8-byte header length");
  unsigned char prefix[8];
  file.read_at(0, prefix, 8);
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<uint64_t>(prefix[i]) << (8 * i);
  if (header_size > kMaxHeaderBytes)
    bad(path, "header length " + std::to_string(header_size) + " is absurd (limit " +
                  std::to_string(kMaxHeaderBytes) + " bytes)");
  if (header_size > file.size() - 8)
    bad(path, "header length " + std::to_string(header_size) + " is larger than the file (" +
                  std::to_string(file.size()) + " bytes; truncated?)");
  std::string header_text(header_size, '\0');
  file.read_at(8, header_text.data(), header_size);
  // JSON text cannot hold a raw NUL; one here means the length prefix is off (nlohmann would stop at it).
  if (header_text.find('\0') != std::string::npos)
    bad(path, "header contains a NUL byte (wrong header length?)");
  const nlohmann::json header = parse_header(path, header_text);

  SafetensorsHeader result;
  result.path = path;
  result.data_begin = 8 + header_size;
  result.file_size = file.size();
  const uint64_t buffer_size = file.size() - result.data_begin;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) bad(path, "\"__metadata__\" is not a JSON object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          bad(path, "metadata value for '" + key + "' is not a string: " + value.dump());
        result.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    result.tensors.emplace(name, parse_entry(path, name, entry, buffer_size, any_float));
  }

  // The tensors must tile the buffer exactly, as the format requires: no overlaps, no gaps.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> by_offset;
  for (const auto& [name, e] : result.tensors) by_offset.emplace_back(&name, &e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second->begin, a.second->end) < std::tie(b.second->begin, b.second->end);
  });
  uint64_t covered = 0;
  const std::pair<const std::string*, const SafetensorsEntry*>* previous = nullptr;
  for (const auto& item : by_offset) {
    const SafetensorsEntry* e = item.second;
    if (e->begin < covered)
      bad(path, "tensor '" + *item.first + "' bytes [" + std::to_string(e->begin) + ", " +
                    std::to_string(e->end) + ") overlap tensor '" + *previous->first + "' bytes [" +
                    std::to_string(previous->second->begin) + ", " + std::to_string(previous->second->end) +
                    ")");
    if (e->begin > covered)
      bad(path, "data buffer bytes [" + std::to_string(covered) + ", " + std::to_string(e->begin) +
                    ") belong to no tensor (gap)");
    covered = e->end;
    previous = &item;
  }
  if (covered != buffer_size)
    bad(path, "data buffer has " + std::to_string(buffer_size - covered) +
                  " trailing bytes that belong to no tensor");
  return result;
}

// IEEE half -> float, exact (subnormals, infinities and NaNs included).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    uint32_t e = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    AMPIPE_CHECK(name != "__metadata__") << "write_safetensors '" << path << "': '__metadata__' is reserved";
    AMPIPE_CHECK(!header.contains(name))
        << "write_safetensors '" << path << "': duplicate tensor name '" << name << "'";
    AMPIPE_CHECK(t.defined()) << "write_safetensors '" << path << "': tensor '" << name << "' is undefined";
    AMPIPE_CHECK(t.device() == Device::CPU)
        << "write_safetensors '" << path << "': tensor '" << name << "' is not in host memory";
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
    header[name] = {{"dtype", safetensors_dtype(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", nlohmann::ordered_json::array({offset, offset + bytes})}};
    offset += bytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name or value that is not valid UTF-8
    throw Error("write_safetensors '" + path + "': " + e.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  write_file_atomically(path, [&](std::ostream& out) {
    char prefix[8];
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((header_text.size() >> (8 * i)) & 0xff);
    out.write(prefix, 8);
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    for (const auto& [name, t] : tensors) {
      const Tensor c = t.is_contiguous() ? t : t.clone();
      const void* data = c.dtype() == DType::F32    ? static_cast<const void*>(c.data<float>())
                         : c.dtype() == DType::BF16 ? static_cast<const void*>(c.data<bf16>())
                                                    : static_cast<const void*>(c.data<int32_t>());
      out.write(static_cast<const char*>(data),
                static_cast<std::streamsize>(c.numel() * dtype_size(c.dtype())));
    }
  });
}

SafetensorsFile read_safetensors(const std::string& path) {
  InputFile file(path);
  const SafetensorsHeader header = parse_file_header(path, file, /*any_float=*/false);
  SafetensorsFile result;
  result.metadata = header.metadata;
  for (const auto& [name, e] : header.tensors) {
    const DType dtype = e.dtype == "F32" ? DType::F32 : DType::I32;
    Tensor t = Tensor::empty(e.shape, dtype);
    void* data =
        dtype == DType::F32 ? static_cast<void*>(t.data<float>()) : static_cast<void*>(t.data<int32_t>());
    file.read_at(header.data_begin + e.begin, data, e.end - e.begin);
    result.tensors.emplace(name, std::move(t));
  }
  return result;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  InputFile file(path);
  return parse_file_header(path, file, /*any_float=*/true);
}

Tensor read_safetensors_tensor_f32(const SafetensorsHeader& header, const std::string& name) {
  auto it = header.tensors.find(name);
  if (it == header.tensors.end()) bad(header.path, "has no tensor '" + name + "'");
  const SafetensorsEntry& e = it->second;
  InputFile file(header.path);
  if (file.size() != header.file_size)
    bad(header.path, "changed size since its header was read (" + std::to_string(header.file_size) + " -> " +
                         std::to_string(file.size()) + " bytes)");
  Tensor t = Tensor::empty(e.shape, DType::F32);
  float* out = t.data<float>();
  const int64_t n = t.numel();
  const uint64_t offset = header.data_begin + e.begin;
  if (e.dtype == "F32") {
    file.read_at(offset, out, e.end - e.begin);
  } else if (e.dtype == "BF16" || e.dtype == "F16") {
    std::vector<uint16_t> raw(static_cast<size_t>(n));
    file.read_at(offset, raw.data(), e.end - e.begin);
    const bool bf16 = e.dtype == "BF16";
    for (int64_t i = 0; i < n; ++i)
      out[i] = bf16 ? std::bit_cast<float>(static_cast<uint32_t>(raw[i]) << 16) : half_to_float(raw[i]);
  } else {
    bad(header.path, "tensor '" + name + "' has dtype " + e.dtype + ", which does not convert to float32");
  }
  return t;
}

}  // namespace ampipe
