// Token corpora in Megatron-LM's indexed dataset format (the "MMIDIDX" .bin/.idx pair that
// Megatron's tools/preprocess_data.py writes and megatron/core/datasets/indexed_dataset.py reads).
//
// A dataset with path prefix P is two files:
//   P.idx  the index, all little-endian:
//            9 bytes   magic "MMIDIDX\x00\x00"
//            uint64    version, always 1
//            uint8     dtype code of the tokens (IndexedDType below)
//            uint64    S, the number of sequences
//            uint64    D, the number of document indices (documents + 1)
//            int32[S]  sequence lengths, in tokens
//            int64[S]  sequence pointers: byte offset of each sequence in P.bin
//            int64[D]  document indices: document i is sequences [doc[i], doc[i+1]); doc[0] = 0,
//                      non-decreasing, doc[D-1] = S
//          (Megatron's multimodal variant appends int8[S] sequence modes; not supported here.)
//   P.bin  the sequences' tokens back to back in the dtype, little-endian.
// Megatron writes one sequence per document unless it splits documents into sentences; the reader
// accepts both, the writer produces the former.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ampipe {

enum class IndexedDType : uint8_t { U8 = 1, I8 = 2, I16 = 3, I32 = 4, I64 = 5, F64 = 6, F32 = 7, U16 = 8 };

// NumPy's name of the dtype ("uint16"), or "unknown" for a value outside the enum.
const char* indexed_dtype_name(IndexedDType);
// Megatron's rule: uint16 when the vocabulary fits (vocab_size < 65500), else int32.
IndexedDType token_dtype_for_vocab(int64_t vocab_size);
// "P" -> "P.bin" / "P.idx".
std::string indexed_bin_path(const std::string& prefix);
std::string indexed_idx_path(const std::string& prefix);

// Writes one dataset, one sequence per document (as preprocess_data.py does without sentence
// splitting). Tokens stream to a temporary file next to P.bin (only the per-document lengths stay in
// memory); finalize() fsyncs it, removes any old P.idx, renames it to P.bin and then commits P.idx
// with write_file_atomically (core/atomic_file.h). So a crash never leaves a pair that looks
// complete: until P.idx appears, the dataset does not exist. Destroying an unfinalized writer (or
// one whose finalize() failed) removes what it wrote. Only integer dtypes; every token id must fit
// the dtype (checked before anything of the document is written, naming the document). Not
// thread-safe; two writers of one prefix at a time are not supported.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, IndexedDType dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  void add_document(const int32_t* tokens, int64_t count);
  void add_document(const std::vector<int32_t>& tokens) {
    add_document(tokens.data(), static_cast<int64_t>(tokens.size()));
  }
  int64_t documents() const;
  int64_t tokens() const;
  void finalize();

 private:
  void flush_buffer();
  void fail_state(const char* what) const;

  std::string prefix_;
  IndexedDType dtype_;
  int64_t itemsize_;
  std::string bin_tmp_;
  int fd_ = -1;
  std::vector<unsigned char> buffer_;
  size_t buffered_ = 0;
  std::vector<int32_t> lengths_;
  int64_t tokens_ = 0;
  enum class State { Open, Finalized, Failed } state_ = State::Open;
  bool bin_renamed_ = false;
};

// A read-only, memory-mapped dataset. The constructor validates everything before any use: magic,
// version, dtype code, counts (S and D must account for the .idx size exactly, without overflow),
// every length >= 0, every pointer = previous pointer + previous length * itemsize starting at 0
// (contiguous, as Megatron writes), the last sequence ending exactly at the .bin size, and the
// document indices (0 first, non-decreasing, S last). Every refusal throws ampipe::Error naming the
// file and the field. Both files are mapped, never read whole; the one per-document array held in
// memory is the document indices (8 bytes per document: in the file they are not 8-byte aligned).
// The files must not be modified while the dataset is open.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const;
  IndexedDType dtype() const;
  int64_t num_sequences() const;
  int64_t num_documents() const;            // D - 1
  const int64_t* document_indices() const;  // [D]
  int64_t sequence_length(int64_t i) const;
  int64_t total_tokens() const;
  // Copies tokens [offset, offset + count) of sequence i into out as int32 (checks bounds). Integer
  // dtypes only (float dtypes open, for completeness, but are refused here naming the dtype); an
  // int64 token outside int32 is refused naming the sequence and position.
  void read(int64_t sequence, int64_t offset, int64_t count, int32_t* out) const;
  // Refuses any token id < 0 or >= vocab_size, naming the document, sequence and position. Integer
  // dtypes only. Touches every page of the .bin once.
  void check_vocab(int64_t vocab_size) const;

 private:
  // One read-only mapping of a whole file (none for an empty file).
  struct Mapping {
    const unsigned char* data = nullptr;
    size_t size = 0;
    Mapping() = default;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();
  };

  int64_t pointer(int64_t i) const;
  void check_sequence(int64_t i) const;

  std::string prefix_;
  std::string idx_path_;
  std::string bin_path_;
  Mapping idx_;
  Mapping bin_;
  IndexedDType dtype_ = IndexedDType::I32;
  int64_t itemsize_ = 4;
  int64_t sequences_ = 0;
  int64_t total_tokens_ = 0;
  const unsigned char* lengths_ = nullptr;   // int32[S] inside idx_, unaligned
  const unsigned char* pointers_ = nullptr;  // int64[S] inside idx_, unaligned
  std::vector<int64_t> document_indices_;
};

}  // namespace ampipe
