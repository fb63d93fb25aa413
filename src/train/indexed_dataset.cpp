#include "train/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <ostream>
#include <system_error>

#include "core/atomic_file.h"
#include "core/error.h"

namespace ampipe {

// The files are little-endian; so is every machine this project targets, which lets tokens and
// index entries be copied as they are.
static_assert(std::endian::native == std::endian::little, "indexed_dataset assumes a little-endian host");

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
// magic, version, dtype code, sequence count, document index count
constexpr uint64_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

std::string os_error(int err) { return std::error_code(err, std::generic_category()).message(); }

bool valid_code(uint8_t code) { return code >= 1 && code <= 8; }

int64_t dtype_size(IndexedDType dtype) {
  switch (dtype) {
    case IndexedDType::U8:
    case IndexedDType::I8:
      return 1;
    case IndexedDType::I16:
    case IndexedDType::U16:
      return 2;
    case IndexedDType::I32:
    case IndexedDType::F32:
      return 4;
    case IndexedDType::I64:
    case IndexedDType::F64:
      return 8;
  }
  return 0;
}

bool is_integer(IndexedDType dtype) { return dtype != IndexedDType::F32 && dtype != IndexedDType::F64; }

// The range of token ids the dtype holds, clipped to int32 (the writer's input type).
void dtype_range(IndexedDType dtype, int64_t* lo, int64_t* hi) {
  switch (dtype) {
    case IndexedDType::U8:
      *lo = 0, *hi = 255;
      return;
    case IndexedDType::I8:
      *lo = -128, *hi = 127;
      return;
    case IndexedDType::I16:
      *lo = -32768, *hi = 32767;
      return;
    case IndexedDType::U16:
      *lo = 0, *hi = 65535;
      return;
    default:
      *lo = std::numeric_limits<int32_t>::min(), *hi = std::numeric_limits<int32_t>::max();
      return;
  }
}

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Calls f.template operator()<T>() with T the C++ type of an integer dtype.
template <class F>
void with_integer_type(IndexedDType dtype, F&& f) {
  switch (dtype) {
    case IndexedDType::U8:
      f.template operator()<uint8_t>();
      return;
    case IndexedDType::I8:
      f.template operator()<int8_t>();
      return;
    case IndexedDType::I16:
      f.template operator()<int16_t>();
      return;
    case IndexedDType::U16:
      f.template operator()<uint16_t>();
      return;
    case IndexedDType::I32:
      f.template operator()<int32_t>();
      return;
    case IndexedDType::I64:
      f.template operator()<int64_t>();
      return;
    case IndexedDType::F32:
    case IndexedDType::F64:
      break;
  }
  throw Error(std::string("indexed dataset: dtype ") + indexed_dtype_name(dtype) + " is not an integer type");
}

// count * each as decimal text, or "more than 2^64 - 1" when the product overflows.
std::string product_text(uint64_t count, uint64_t each) {
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(count, each, &bytes)) {
    return "more than " + std::to_string(std::numeric_limits<uint64_t>::max());
  }
  return std::to_string(bytes);
}

// The directory holding `path`, made durable (core/atomic_file.h).
void fsync_directory_of(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  fsync_directory(dir.empty() ? std::string(".") : dir.string());
}

std::atomic<uint64_t> g_writer_serial{0};

}  // namespace

const char* indexed_dtype_name(IndexedDType dtype) {
  switch (dtype) {
    case IndexedDType::U8:
      return "uint8";
    case IndexedDType::I8:
      return "int8";
    case IndexedDType::I16:
      return "int16";
    case IndexedDType::I32:
      return "int32";
    case IndexedDType::I64:
      return "int64";
    case IndexedDType::F64:
      return "float64";
    case IndexedDType::F32:
      return "float32";
    case IndexedDType::U16:
      return "uint16";
  }
  return "unknown";
}

IndexedDType token_dtype_for_vocab(int64_t vocab_size) {
  AMPIPE_CHECK(vocab_size > 0) << "vocabulary size must be positive, got " << vocab_size;
  return vocab_size < 65500 ? IndexedDType::U16 : IndexedDType::I32;
}

std::string indexed_bin_path(const std::string& prefix) { return prefix + ".bin"; }
std::string indexed_idx_path(const std::string& prefix) { return prefix + ".idx"; }

// ---------------------------------------------------------------------------------------------
// Writer

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, IndexedDType dtype)
    : prefix_(prefix), dtype_(dtype), itemsize_(dtype_size(dtype)) {
  AMPIPE_CHECK(valid_code(static_cast<uint8_t>(dtype)))
      << "indexed dataset '" << prefix << "': unknown dtype code " << static_cast<int>(dtype);
  AMPIPE_CHECK(is_integer(dtype)) << "indexed dataset '" << prefix << "': token dtype "
                                  << indexed_dtype_name(dtype) << " is not an integer type";
  bin_tmp_ = indexed_bin_path(prefix) + ".tmp." + std::to_string(::getpid()) + "." +
             std::to_string(g_writer_serial.fetch_add(1));
  fd_ = ::open(bin_tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error("cannot create '" + bin_tmp_ + "': " + os_error(errno));
  buffer_.resize(size_t{1} << 20);
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (state_ == State::Finalized) return;
  if (fd_ >= 0) ::close(fd_);
  ::unlink(bin_tmp_.c_str());
  if (bin_renamed_) ::unlink(indexed_bin_path(prefix_).c_str());
}

void IndexedDatasetWriter::fail_state(const char* what) const {
  AMPIPE_CHECK(state_ == State::Open) << "indexed dataset '" << prefix_ << "': " << what << " after "
                                      << (state_ == State::Finalized ? "finalize()" : "a failed write");
}

void IndexedDatasetWriter::flush_buffer() {
  if (buffered_ == 0) return;
  int err = write_all(fd_, buffer_.data(), buffered_);
  buffered_ = 0;
  if (err != 0) {
    state_ = State::Failed;
    throw Error("cannot write '" + bin_tmp_ + "': " + os_error(err));
  }
}

void IndexedDatasetWriter::add_document(const int32_t* tokens, int64_t count) {
  fail_state("add_document()");
  const int64_t doc = static_cast<int64_t>(lengths_.size());
  AMPIPE_CHECK(count >= 0) << "indexed dataset '" << prefix_ << "': document " << doc
                           << " has negative count " << count;
  AMPIPE_CHECK(count <= std::numeric_limits<int32_t>::max())
      << "indexed dataset '" << prefix_ << "': document " << doc << " has " << count
      << " tokens; the .idx stores sequence lengths as int32 (at most 2147483647)";
  AMPIPE_CHECK(count == 0 || tokens != nullptr)
      << "indexed dataset '" << prefix_ << "': document " << doc << " has no token pointer";
  int64_t lo = 0, hi = 0;
  dtype_range(dtype_, &lo, &hi);
  if (lo > std::numeric_limits<int32_t>::min() || hi < std::numeric_limits<int32_t>::max()) {
    for (int64_t i = 0; i < count; ++i) {
      AMPIPE_CHECK(tokens[i] >= lo && tokens[i] <= hi)
          << "indexed dataset '" << prefix_ << "': document " << doc << " token " << i << " has id "
          << tokens[i] << ", which does not fit the dataset's dtype " << indexed_dtype_name(dtype_) << " ["
          << lo << ", " << hi << "]";
    }
  }
  with_integer_type(dtype_, [&]<class T>() {
    const size_t per = buffer_.size() / sizeof(T);
    int64_t done = 0;
    while (done < count) {
      if (buffered_ + sizeof(T) > buffer_.size()) flush_buffer();
      size_t room = per - buffered_ / sizeof(T);
      size_t n = static_cast<size_t>(std::min<int64_t>(count - done, static_cast<int64_t>(room)));
      unsigned char* dst = buffer_.data() + buffered_;
      for (size_t k = 0; k < n; ++k) {
        T v = static_cast<T>(tokens[done + static_cast<int64_t>(k)]);
        std::memcpy(dst + k * sizeof(T), &v, sizeof(T));
      }
      buffered_ += n * sizeof(T);
      done += static_cast<int64_t>(n);
    }
  });
  lengths_.push_back(static_cast<int32_t>(count));
  tokens_ += count;
}

int64_t IndexedDatasetWriter::documents() const { return static_cast<int64_t>(lengths_.size()); }
int64_t IndexedDatasetWriter::tokens() const { return tokens_; }

void IndexedDatasetWriter::finalize() {
  fail_state("finalize()");
  const std::string bin_path = indexed_bin_path(prefix_);
  const std::string idx_path = indexed_idx_path(prefix_);
  try {
    flush_buffer();
    if (::fsync(fd_) != 0) throw Error("cannot write '" + bin_tmp_ + "': fsync failed: " + os_error(errno));
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) throw Error("cannot write '" + bin_tmp_ + "': close failed: " + os_error(errno));
    // An old index must go first: the new .bin next to an old .idx would look like a dataset.
    if (::unlink(idx_path.c_str()) != 0 && errno != ENOENT) {
      throw Error("cannot remove the old '" + idx_path + "': " + os_error(errno));
    }
    fsync_directory_of(idx_path);
    if (::rename(bin_tmp_.c_str(), bin_path.c_str()) != 0) {
      throw Error("cannot rename '" + bin_tmp_ + "' to '" + bin_path + "': " + os_error(errno));
    }
    bin_renamed_ = true;

    const uint64_t sequences = lengths_.size();
    write_file_atomically(idx_path, [&](std::ostream& out) {
      auto put = [&](const void* p, size_t n) {
        out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
      };
      put(kMagic, sizeof(kMagic));
      put(&kVersion, 8);
      const uint8_t code = static_cast<uint8_t>(dtype_);
      put(&code, 1);
      put(&sequences, 8);
      const uint64_t doc_count = sequences + 1;
      put(&doc_count, 8);
      put(lengths_.data(), lengths_.size() * sizeof(int32_t));
      // Pointers and document indices, a block at a time.
      std::vector<int64_t> block;
      block.reserve(8192);
      auto emit = [&](int64_t v) {
        block.push_back(v);
        if (block.size() == 8192) {
          put(block.data(), block.size() * sizeof(int64_t));
          block.clear();
        }
      };
      int64_t pointer = 0;
      for (uint64_t i = 0; i < sequences; ++i) {
        emit(pointer);
        pointer += static_cast<int64_t>(lengths_[i]) * itemsize_;
      }
      for (uint64_t i = 0; i <= sequences; ++i) emit(static_cast<int64_t>(i));
      put(block.data(), block.size() * sizeof(int64_t));
    });
  } catch (...) {
    state_ = State::Failed;
    throw;
  }
  state_ = State::Finalized;
}

// ---------------------------------------------------------------------------------------------
// Reader

IndexedDataset::Mapping::~Mapping() {
  if (data != nullptr) ::munmap(const_cast<unsigned char*>(data), size);
}

namespace {

// Maps `path` read-only into `data`/`size` (nothing for an empty file).
void map_file(const std::string& path, const unsigned char** data, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open '" + path + "': " + os_error(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("cannot stat '" + path + "': " + os_error(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("'" + path + "' is not a regular file");
  }
  *size = static_cast<size_t>(st.st_size);
  if (*size > 0) {
    void* p = ::mmap(nullptr, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      *size = 0;
      throw Error("cannot map '" + path + "': " + os_error(err));
    }
    *data = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
}

}  // namespace

IndexedDataset::IndexedDataset(const std::string& prefix)
    : prefix_(prefix), idx_path_(indexed_idx_path(prefix)), bin_path_(indexed_bin_path(prefix)) {
  map_file(idx_path_, &idx_.data, &idx_.size);
  const std::string& ip = idx_path_;
  const uint64_t size = idx_.size;
  const unsigned char* base = idx_.data;

  if (size >= sizeof(kMagic)) {
    AMPIPE_CHECK(std::memcmp(base, kMagic, sizeof(kMagic)) == 0)
        << ip << ": bad magic: the file does not start with \"MMIDIDX\\x00\\x00\" (not a Megatron indexed "
        << "dataset index)";
  }
  AMPIPE_CHECK(size >= kHeaderBytes) << ip << ": truncated header: the file has " << size
                                     << " bytes, fewer than the " << kHeaderBytes
                                     << "-byte header (magic, version, dtype code, sequence count, document "
                                        "index count)";
  const uint64_t version = load<uint64_t>(base + 9);
  AMPIPE_CHECK(version == kVersion) << ip << ": version " << version << " is not supported (only " << kVersion
                                    << ")";
  const uint8_t code = base[17];
  AMPIPE_CHECK(valid_code(code))
      << ip << ": unknown dtype code " << static_cast<int>(code)
      << " (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)";
  dtype_ = static_cast<IndexedDType>(code);
  itemsize_ = dtype_size(dtype_);
  const uint64_t seq_count = load<uint64_t>(base + 18);
  const uint64_t doc_count = load<uint64_t>(base + 26);

  // The counts against the file size, in an order that cannot overflow.
  const uint64_t body = size - kHeaderBytes;
  AMPIPE_CHECK(seq_count <= body / 12)
      << ip << ": sequence count " << seq_count << " needs " << product_text(seq_count, 12)
      << " bytes of lengths (int32) and pointers (int64) after the " << kHeaderBytes
      << "-byte header, but the file has " << body;
  const uint64_t rest = body - seq_count * 12;
  AMPIPE_CHECK(doc_count <= rest / 8)
      << ip << ": document index count " << doc_count << " needs " << product_text(doc_count, 8)
      << " bytes of document indices (int64) after the lengths and pointers, but "
      << "the file has " << rest;
  AMPIPE_CHECK(doc_count * 8 == rest)
      << ip << ": the file has " << size << " bytes, but sequence count " << seq_count
      << " and document index count " << doc_count << " account for exactly "
      << kHeaderBytes + seq_count * 12 + doc_count * 8
      << " (trailing bytes; Megatron's multimodal index with sequence modes is not supported)";
  AMPIPE_CHECK(doc_count >= 1) << ip << ": document index count 0: there must be at least one document index "
                               << "(documents + 1)";
  sequences_ = static_cast<int64_t>(seq_count);
  lengths_ = base + kHeaderBytes;
  pointers_ = lengths_ + seq_count * 4;
  const unsigned char* docs = pointers_ + seq_count * 8;

  map_file(bin_path_, &bin_.data, &bin_.size);
  const int64_t bin_size = static_cast<int64_t>(bin_.size);

  // Lengths and pointers: contiguous from 0, ending exactly at the .bin size.
  int64_t end = 0;
  for (int64_t i = 0; i < sequences_; ++i) {
    const int32_t length = load<int32_t>(lengths_ + i * 4);
    const int64_t ptr = load<int64_t>(pointers_ + i * 8);
    AMPIPE_CHECK(length >= 0) << ip << ": sequence " << i << " has negative length " << length;
    AMPIPE_CHECK(ptr == end) << ip << ": sequence " << i << " pointer " << ptr << " is not contiguous: "
                             << (i == 0 ? std::string("the first sequence must start at byte 0")
                                        : "the previous sequence ends at byte " + std::to_string(end));
    end += static_cast<int64_t>(length) * itemsize_;  // <= bin_size + 2^31 * 8: no overflow
    AMPIPE_CHECK(end <= bin_size) << ip << ": sequence " << i << " (length " << length << ", "
                                  << indexed_dtype_name(dtype_) << ") ends at byte " << end << " of "
                                  << bin_path_ << ", past its size " << bin_size
                                  << " (lengths sum past the .bin)";
    total_tokens_ += length;
  }
  AMPIPE_CHECK(end == bin_size) << bin_path_ << ": the file has " << bin_size << " bytes, but the lengths in "
                                << ip << " cover " << end << " (the .bin has trailing bytes)";

  // Document indices: 0 first, non-decreasing, S last. Copied: in the file they are unaligned.
  document_indices_.resize(doc_count);
  std::memcpy(document_indices_.data(), docs, doc_count * 8);
  AMPIPE_CHECK(document_indices_[0] == 0)
      << ip << ": document index 0 is " << document_indices_[0] << ", but document indices must start at 0";
  for (uint64_t d = 1; d < doc_count; ++d) {
    AMPIPE_CHECK(document_indices_[d] >= document_indices_[d - 1])
        << ip << ": document index " << d << " is " << document_indices_[d] << ", less than the previous "
        << document_indices_[d - 1] << " (document indices must be non-decreasing)";
  }
  AMPIPE_CHECK(document_indices_.back() == sequences_)
      << ip << ": the last document index (" << doc_count - 1 << ") is " << document_indices_.back()
      << ", but document indices must end at the sequence count " << sequences_;
}

IndexedDataset::~IndexedDataset() = default;

const std::string& IndexedDataset::prefix() const { return prefix_; }
IndexedDType IndexedDataset::dtype() const { return dtype_; }
int64_t IndexedDataset::num_sequences() const { return sequences_; }
int64_t IndexedDataset::num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
const int64_t* IndexedDataset::document_indices() const { return document_indices_.data(); }
int64_t IndexedDataset::total_tokens() const { return total_tokens_; }

void IndexedDataset::check_sequence(int64_t i) const {
  AMPIPE_CHECK(i >= 0 && i < sequences_)
      << prefix_ << ": sequence " << i << " out of range [0, " << sequences_ << ")";
}

int64_t IndexedDataset::sequence_length(int64_t i) const {
  check_sequence(i);
  return load<int32_t>(lengths_ + i * 4);
}

int64_t IndexedDataset::pointer(int64_t i) const { return load<int64_t>(pointers_ + i * 8); }

void IndexedDataset::read(int64_t sequence, int64_t offset, int64_t count, int32_t* out) const {
  AMPIPE_CHECK(is_integer(dtype_)) << prefix_ << ": cannot read tokens of dtype "
                                   << indexed_dtype_name(dtype_) << " (token ids need an integer dtype)";
  const int64_t length = sequence_length(sequence);
  AMPIPE_CHECK(offset >= 0 && count >= 0 && offset <= length && count <= length - offset)
      << prefix_ << ": read of tokens [" << offset << ", " << offset << " + " << count
      << ") is outside sequence " << sequence << " of length " << length;
  if (count == 0) return;
  const unsigned char* src = bin_.data + pointer(sequence) + offset * itemsize_;
  with_integer_type(dtype_, [&]<class T>() {
    for (int64_t k = 0; k < count; ++k) {
      const T v = load<T>(src + k * static_cast<int64_t>(sizeof(T)));
      if constexpr (sizeof(T) > sizeof(int32_t)) {
        AMPIPE_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max())
            << bin_path_ << ": sequence " << sequence << " token " << offset + k << " is " << v
            << ", which does not fit int32";
      }
      out[k] = static_cast<int32_t>(v);
    }
  });
}

void IndexedDataset::check_vocab(int64_t vocab_size) const {
  AMPIPE_CHECK(vocab_size > 0) << prefix_ << ": vocabulary size must be positive, got " << vocab_size;
  AMPIPE_CHECK(is_integer(dtype_)) << prefix_ << ": cannot check token ids of dtype "
                                   << indexed_dtype_name(dtype_) << " (token ids need an integer dtype)";
  with_integer_type(dtype_, [&]<class T>() {
    const int64_t documents = num_documents();
    for (int64_t d = 0; d < documents; ++d) {
      for (int64_t s = document_indices_[d]; s < document_indices_[d + 1]; ++s) {
        const int64_t length = load<int32_t>(lengths_ + s * 4);
        const unsigned char* src = bin_.data + pointer(s);
        for (int64_t k = 0; k < length; ++k) {
          const int64_t id = static_cast<int64_t>(load<T>(src + k * static_cast<int64_t>(sizeof(T))));
          if (id < 0 || id >= vocab_size) [[unlikely]] {
            throw Error(bin_path_ + ": document " + std::to_string(d) + " (sequence " + std::to_string(s) +
                        ") token " + std::to_string(k) + " has id " + std::to_string(id) +
                        ", outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
          }
        }
      }
    }
  });
}

}  // namespace ampipe
