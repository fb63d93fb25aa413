// Megatron-LM indexed datasets (.bin/.idx, "MMIDIDX"): round trips through the writer and the
// reader, the exact byte layout, refusal of every kind of malformed pair, the writer's atomicity,
// and agreement with the independent Python reader (tests/scripts/read_indexed_dataset.py).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/random.h"
#include "train/indexed_dataset.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;
using Docs = std::vector<std::vector<int32_t>>;

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kInt32Min = std::numeric_limits<int32_t>::min();

class IndexedDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "ampipe_indexed_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::vector<std::string> files() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
    return names;
  }

  std::string dir_;
};

void write_dataset(const std::string& prefix, IndexedDType dtype, const Docs& docs) {
  IndexedDatasetWriter writer(prefix, dtype);
  for (const auto& doc : docs) writer.add_document(doc);
  writer.finalize();
}

// Every document's tokens, read back sequence by sequence.
Docs read_documents(const IndexedDataset& ds) {
  Docs docs;
  const int64_t* doc_idx = ds.document_indices();
  for (int64_t d = 0; d < ds.num_documents(); ++d) {
    std::vector<int32_t> tokens;
    for (int64_t s = doc_idx[d]; s < doc_idx[d + 1]; ++s) {
      std::vector<int32_t> seq(static_cast<size_t>(ds.sequence_length(s)));
      ds.read(s, 0, static_cast<int64_t>(seq.size()), seq.data());
      tokens.insert(tokens.end(), seq.begin(), seq.end());
    }
    docs.push_back(std::move(tokens));
  }
  return docs;
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

template <class T>
void put(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian host (the library asserts it)
  s.append(b, sizeof(T));
}

// An .idx built by hand, field by field, so tests can break any one of them.
struct RawIndex {
  std::string magic = std::string("MMIDIDX\0\0", 9);
  uint64_t version = 1;
  uint8_t code = 8;
  std::vector<int32_t> lengths;
  std::vector<int64_t> pointers;
  std::vector<int64_t> doc_idx;
  std::optional<uint64_t> seq_count;  // overrides lengths.size()
  std::optional<uint64_t> doc_count;  // overrides doc_idx.size()

  // One sequence per document with these lengths, as Megatron writes them.
  static RawIndex of(uint8_t code, int64_t itemsize, const std::vector<int32_t>& lengths) {
    RawIndex r;
    r.code = code;
    r.lengths = lengths;
    int64_t p = 0;
    for (int32_t len : lengths) {
      r.pointers.push_back(p);
      p += len * itemsize;
    }
    for (size_t i = 0; i <= lengths.size(); ++i) r.doc_idx.push_back(static_cast<int64_t>(i));
    return r;
  }

  std::string bytes() const {
    std::string s = magic;
    put(s, version);
    put(s, code);
    put(s, seq_count.value_or(lengths.size()));
    put(s, doc_count.value_or(doc_idx.size()));
    for (int32_t v : lengths) put(s, v);
    for (int64_t v : pointers) put(s, v);
    for (int64_t v : doc_idx) put(s, v);
    return s;
  }
};

// The Error message from opening `prefix`; checks it names `file` and contains `field`, and fails
// the test when nothing is thrown.
void expect_open_error(const std::string& prefix, const std::string& file, const std::string& field) {
  try {
    IndexedDataset ds(prefix);
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << "message does not name " << file << ": " << msg;
    EXPECT_NE(msg.find(field), std::string::npos) << "expected '" << field << "' in: " << msg;
    return;
  }
  FAIL() << "IndexedDataset accepted a malformed dataset at " << prefix << " (expected '" << field << "')";
}

// The Error message of `f()`; fails the test when nothing is thrown.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& expected) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& part : expected)
      EXPECT_NE(msg.find(part), std::string::npos) << "expected '" << part << "' in: " << msg;
    return;
  }
  FAIL() << "no ampipe::Error thrown (expected '" << (expected.empty() ? "" : expected[0]) << "')";
}

Docs mixed_documents(int32_t max_id, uint64_t seed) {
  Rng rng(seed);
  auto random_doc = [&](size_t n) {
    std::vector<int32_t> doc(n);
    for (auto& t : doc) t = static_cast<int32_t>(rng.next_u64() % (static_cast<uint64_t>(max_id) + 1));
    return doc;
  };
  Docs docs;
  docs.push_back({});                  // empty first
  docs.push_back({max_id});            // one token at the dtype's limit
  docs.push_back(random_doc(100000));  // long
  docs.push_back({});                  // empty in the middle
  docs.push_back({0});
  docs.push_back(random_doc(17));
  docs.push_back({0, max_id, 1, max_id - 1});
  docs.push_back({});  // empty last
  return docs;
}

void expect_round_trip(const std::string& prefix, IndexedDType dtype, const Docs& docs) {
  int64_t total = 0;
  for (const auto& d : docs) total += static_cast<int64_t>(d.size());
  {
    IndexedDatasetWriter writer(prefix, dtype);
    for (const auto& doc : docs) writer.add_document(doc);
    EXPECT_EQ(writer.documents(), static_cast<int64_t>(docs.size()));
    EXPECT_EQ(writer.tokens(), total);
    writer.finalize();
  }
  IndexedDataset ds(prefix);
  EXPECT_EQ(ds.prefix(), prefix);
  EXPECT_EQ(ds.dtype(), dtype);
  EXPECT_EQ(ds.num_sequences(), static_cast<int64_t>(docs.size()));
  EXPECT_EQ(ds.num_documents(), static_cast<int64_t>(docs.size()));
  EXPECT_EQ(ds.total_tokens(), total);
  for (size_t i = 0; i <= docs.size(); ++i) EXPECT_EQ(ds.document_indices()[i], static_cast<int64_t>(i));
  for (size_t i = 0; i < docs.size(); ++i)
    EXPECT_EQ(ds.sequence_length(static_cast<int64_t>(i)), (int64_t)docs[i].size());
  EXPECT_EQ(read_documents(ds), docs);
  EXPECT_EQ(fs::file_size(indexed_bin_path(prefix)),
            static_cast<uintmax_t>(total) * (dtype == IndexedDType::U8 || dtype == IndexedDType::I8     ? 1
                                             : dtype == IndexedDType::I16 || dtype == IndexedDType::U16 ? 2
                                             : dtype == IndexedDType::I32                               ? 4
                                                                                                        : 8));
}

// ---------------------------------------------------------------------------------------------

TEST(IndexedDTypeTest, NamesPathsAndMegatronsVocabRule) {
  EXPECT_STREQ(indexed_dtype_name(IndexedDType::U16), "uint16");
  EXPECT_STREQ(indexed_dtype_name(IndexedDType::I32), "int32");
  EXPECT_STREQ(indexed_dtype_name(IndexedDType::F64), "float64");
  EXPECT_STREQ(indexed_dtype_name(static_cast<IndexedDType>(9)), "unknown");
  EXPECT_EQ(token_dtype_for_vocab(1), IndexedDType::U16);
  EXPECT_EQ(token_dtype_for_vocab(32000), IndexedDType::U16);
  EXPECT_EQ(token_dtype_for_vocab(65499), IndexedDType::U16);
  EXPECT_EQ(token_dtype_for_vocab(65500), IndexedDType::I32);
  EXPECT_EQ(token_dtype_for_vocab(151936), IndexedDType::I32);
  EXPECT_THROW(token_dtype_for_vocab(0), Error);
  EXPECT_EQ(indexed_bin_path("data/corpus_text_document"), "data/corpus_text_document.bin");
  EXPECT_EQ(indexed_idx_path("data/corpus_text_document"), "data/corpus_text_document.idx");
}

TEST_F(IndexedDatasetTest, RoundTrip_U16_EmptyOneTokenAndLongDocuments) {
  expect_round_trip(path("u16"), IndexedDType::U16, mixed_documents(65535, 1));
  IndexedDataset ds(path("u16"));
  ds.check_vocab(65536);  // every id is in [0, 65536)
}

TEST_F(IndexedDatasetTest, RoundTrip_I32_LargeIdsAtTheLimit) {
  Docs docs = mixed_documents(kInt32Max, 2);
  docs.push_back({kInt32Min, -1, kInt32Max});  // int32 holds negative ids too
  expect_round_trip(path("i32"), IndexedDType::I32, docs);
}

TEST_F(IndexedDatasetTest, RoundTrip_U8) {
  expect_round_trip(path("u8"), IndexedDType::U8, mixed_documents(255, 3));
}

TEST_F(IndexedDatasetTest, RoundTrip_EveryIntegerDType_ValuesAtItsLimits) {
  struct Case {
    IndexedDType dtype;
    int32_t lo, hi;
  };
  for (const Case& c :
       {Case{IndexedDType::U8, 0, 255}, Case{IndexedDType::I8, -128, 127},
        Case{IndexedDType::I16, -32768, 32767}, Case{IndexedDType::U16, 0, 65535},
        Case{IndexedDType::I32, kInt32Min, kInt32Max}, Case{IndexedDType::I64, kInt32Min, kInt32Max}}) {
    SCOPED_TRACE(indexed_dtype_name(c.dtype));
    expect_round_trip(path(indexed_dtype_name(c.dtype)), c.dtype, {{c.lo, c.hi, 0, 1}, {}, {c.hi}, {c.lo}});
  }
}

TEST_F(IndexedDatasetTest, ZeroDocumentsAndAllEmptyDocuments_EmptyBin) {
  expect_round_trip(path("none"), IndexedDType::U16, {});
  EXPECT_EQ(fs::file_size(path("none.bin")), 0u);
  EXPECT_EQ(fs::file_size(path("none.idx")), 34u + 8u);  // header + document index [0]
  expect_round_trip(path("empty"), IndexedDType::I32, {{}, {}, {}});
  EXPECT_EQ(fs::file_size(path("empty.bin")), 0u);
  IndexedDataset ds(path("empty"));
  ds.check_vocab(1);
}

TEST_F(IndexedDatasetTest, ByteLayout_IsMegatronsExactly) {
  write_dataset(path("d"), IndexedDType::U16, {{1, 2, 3}, {}, {65535, 7}});
  // .idx: magic, version 1, code 8 (uint16), S = 3, D = 4, lengths, pointers (bytes), doc indices.
  std::string idx("MMIDIDX\0\0", 9);
  put<uint64_t>(idx, 1);
  put<uint8_t>(idx, 8);
  put<uint64_t>(idx, 3);
  put<uint64_t>(idx, 4);
  for (int32_t v : {3, 0, 2}) put(idx, v);
  for (int64_t v : {0, 6, 6}) put(idx, v);
  for (int64_t v : {0, 1, 2, 3}) put(idx, v);
  EXPECT_EQ(read_file(path("d.idx")), idx);
  std::string bin;
  for (uint16_t v : {1, 2, 3, 65535, 7}) put(bin, v);
  EXPECT_EQ(read_file(path("d.bin")), bin);
  EXPECT_EQ(RawIndex::of(8, 2, {3, 0, 2}).bytes(), idx);
}

TEST_F(IndexedDatasetTest, ReadsSentenceSplitDocuments_ManySequencesPerDocument) {
  // Megatron with --split-sentences: document 0 = sequences 0, 1; document 1 = sequence 2; document
  // 2 = none (an empty document); document 3 = sequence 3.
  RawIndex r = RawIndex::of(4, 4, {2, 1, 3, 1});
  r.doc_idx = {0, 2, 3, 3, 4};
  write_raw(path("s.idx"), r.bytes());
  std::string bin;
  for (int32_t v : {10, 11, 12, 20, 21, 22, 30}) put(bin, v);
  write_raw(path("s.bin"), bin);
  IndexedDataset ds(path("s"));
  EXPECT_EQ(ds.num_sequences(), 4);
  EXPECT_EQ(ds.num_documents(), 4);
  EXPECT_EQ(read_documents(ds), (Docs{{10, 11, 12}, {20, 21, 22}, {}, {30}}));
  expect_error([&] { ds.check_vocab(30); },
               {path("s.bin"), "document 3 (sequence 3) token 0", "id 30", "[0, 30)"});
  expect_error([&] { ds.check_vocab(12); }, {"document 0 (sequence 1) token 0", "id 12"});
}

TEST_F(IndexedDatasetTest, Read_PartialRangesAndBounds) {
  write_dataset(path("d"), IndexedDType::U16, {{5, 6, 7, 8}, {}, {9}});
  IndexedDataset ds(path("d"));
  std::vector<int32_t> out(4, -1);
  ds.read(0, 1, 2, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{6, 7, -1, -1}));
  ds.read(0, 4, 0, out.data());  // empty range at the end
  ds.read(1, 0, 0, out.data());  // empty sequence
  expect_error([&] { ds.read(0, 3, 2, out.data()); }, {"outside sequence 0 of length 4"});
  expect_error([&] { ds.read(0, -1, 1, out.data()); }, {"outside sequence 0"});
  expect_error([&] { ds.read(0, 1, std::numeric_limits<int64_t>::max(), out.data()); },
               {"outside sequence 0"});
  expect_error([&] { ds.read(3, 0, 0, out.data()); }, {"sequence 3 out of range [0, 3)"});
  expect_error([&] { ds.read(-1, 0, 0, out.data()); }, {"sequence -1 out of range"});
  expect_error([&] { ds.sequence_length(3); }, {"sequence 3 out of range"});
}

TEST_F(IndexedDatasetTest, CheckVocab_RefusesIdsOutsideTheVocabularyNamingTheDocument) {
  write_dataset(path("d"), IndexedDType::U16, {{1, 2}, {}, {3, 4, 5, 99, 6}, {7}});
  IndexedDataset ds(path("d"));
  ds.check_vocab(100);
  expect_error([&] { ds.check_vocab(99); }, {path("d.bin"), "document 2", "token 3", "id 99", "[0, 99)"});
  expect_error([&] { ds.check_vocab(0); }, {"vocabulary size must be positive"});

  write_dataset(path("neg"), IndexedDType::I32, {{1}, {2, -5}});
  IndexedDataset neg(path("neg"));
  expect_error([&] { neg.check_vocab(1000); }, {"document 1", "token 1", "id -5"});
}

TEST_F(IndexedDatasetTest, Writer_RefusesTokenIdsThatDoNotFitTheDType_NamingTheDocument) {
  const std::string prefix = path("d");
  {
    IndexedDatasetWriter writer(prefix, IndexedDType::U16);
    writer.add_document({1, 2, 3});
    expect_error([&] { writer.add_document({4, 65536}); }, {"document 1", "token 1", "id 65536", "uint16"});
    expect_error([&] { writer.add_document({-1}); }, {"document 1", "id -1", "uint16"});
    // A refused document leaves nothing behind: the writer goes on.
    writer.add_document({65535});
    EXPECT_EQ(writer.documents(), 2);
    EXPECT_EQ(writer.tokens(), 4);
    writer.finalize();
  }
  IndexedDataset ds(prefix);
  EXPECT_EQ(read_documents(ds), (Docs{{1, 2, 3}, {65535}}));

  IndexedDatasetWriter u8(path("u8"), IndexedDType::U8);
  expect_error(
      [&] {
        u8.add_document({0, 255, 256});
      },
      {"document 0", "token 2", "id 256", "uint8 [0, 255]"});
  IndexedDatasetWriter i8(path("i8"), IndexedDType::I8);
  expect_error([&] { i8.add_document({-129}); }, {"document 0", "int8 [-128, 127]"});
}

TEST_F(IndexedDatasetTest, Writer_RefusesFloatDTypesAndUseAfterFinalize) {
  expect_error([&] { IndexedDatasetWriter w(path("f"), IndexedDType::F32); }, {"float32", "not an integer"});
  expect_error([&] { IndexedDatasetWriter w(path("f"), static_cast<IndexedDType>(0)); }, {"dtype code 0"});
  IndexedDatasetWriter writer(path("d"), IndexedDType::U16);
  writer.add_document({1});
  writer.finalize();
  expect_error([&] { writer.add_document({2}); }, {"add_document() after finalize()"});
  expect_error([&] { writer.finalize(); }, {"finalize() after finalize()"});
  expect_error([&] { IndexedDatasetWriter w(path("no/such/dir/d"), IndexedDType::U16); },
               {"no/such/dir/d.bin"});
}

TEST_F(IndexedDatasetTest, UnfinalizedWriter_LeavesNoFiles) {
  {
    IndexedDatasetWriter writer(path("d"), IndexedDType::I32);
    writer.add_document(std::vector<int32_t>(300000, 7));  // more than one write buffer
    writer.add_document({1, 2});
  }
  EXPECT_TRUE(files().empty()) << files()[0];
  { IndexedDatasetWriter writer(path("d"), IndexedDType::U16); }
  EXPECT_TRUE(files().empty());
}

TEST_F(IndexedDatasetTest, Finalize_IsAtomic_NoIdxBeforeFinalize_ReplacesAnOldDataset) {
  write_dataset(path("d"), IndexedDType::U16, {{1, 2, 3}});
  {
    IndexedDatasetWriter writer(path("d"), IndexedDType::I32);
    writer.add_document({4, 5});
    writer.add_document({6});
    // Until finalize, the old pair stands untouched and no new final file exists.
    EXPECT_EQ(read_documents(IndexedDataset(path("d"))), (Docs{{1, 2, 3}}));
    writer.finalize();
  }
  IndexedDataset ds(path("d"));
  EXPECT_EQ(ds.dtype(), IndexedDType::I32);
  EXPECT_EQ(read_documents(ds), (Docs{{4, 5}, {6}}));
  std::vector<std::string> names = files();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"d.bin", "d.idx"}));  // no temporaries left

  IndexedDatasetWriter writer(path("n"), IndexedDType::U16);
  writer.add_document({1});
  EXPECT_FALSE(fs::exists(path("n.idx")));
  EXPECT_FALSE(fs::exists(path("n.bin")));
  writer.finalize();
  EXPECT_TRUE(fs::exists(path("n.idx")));
  EXPECT_TRUE(fs::exists(path("n.bin")));
}

// ---------------------------------------------------------------------------------------------
// Malformed pairs. The valid base: uint16, documents of 3, 0, 2 and 5 tokens.

class IndexedDatasetCorruptTest : public IndexedDatasetTest {
 protected:
  void SetUp() override {
    IndexedDatasetTest::SetUp();
    prefix_ = path("c");
    write_dataset(prefix_, IndexedDType::U16, {{1, 2, 3}, {}, {4, 5}, {6, 7, 8, 9, 10}});
    idx_ = prefix_ + ".idx";
    bin_ = prefix_ + ".bin";
    valid_ = RawIndex::of(8, 2, {3, 0, 2, 5});
    ASSERT_EQ(read_file(idx_), valid_.bytes());
  }

  void write_idx(const RawIndex& r) { write_raw(idx_, r.bytes()); }

  std::string prefix_, idx_, bin_;
  RawIndex valid_;
};

TEST_F(IndexedDatasetCorruptTest, TruncatedBin) {
  std::string bin = read_file(bin_);
  write_raw(bin_, bin.substr(0, bin.size() - 1));
  expect_open_error(prefix_, bin_, "sequence 3 (length 5, uint16) ends at byte 20");
  expect_open_error(prefix_, idx_, "past its size 19");
  write_raw(bin_, "");
  expect_open_error(prefix_, bin_, "sequence 0 (length 3, uint16) ends at byte 6");
}

TEST_F(IndexedDatasetCorruptTest, BinWithTrailingBytes) {
  write_raw(bin_, read_file(bin_) + "xx");
  expect_open_error(prefix_, bin_, "the file has 22 bytes, but the lengths in");
}

TEST_F(IndexedDatasetCorruptTest, MissingBin) {
  fs::remove(bin_);
  expect_open_error(prefix_, bin_, "cannot open");
}

TEST_F(IndexedDatasetCorruptTest, TruncatedIdx) {
  const std::string idx = read_file(idx_);
  write_raw(idx_, idx.substr(0, idx.size() - 1));
  expect_open_error(prefix_, idx_, "document index count 5 needs 40 bytes");
  write_raw(idx_, idx.substr(0, 34 + 4 * 4));  // lengths only
  expect_open_error(prefix_, idx_, "sequence count 4 needs 48 bytes of lengths (int32) and pointers (int64)");
  write_raw(idx_, idx.substr(0, 20));
  expect_open_error(prefix_, idx_, "truncated header: the file has 20 bytes");
  write_raw(idx_, "");
  expect_open_error(prefix_, idx_, "truncated header: the file has 0 bytes");
}

TEST_F(IndexedDatasetCorruptTest, IdxWithTrailingBytes_MultimodalModes) {
  write_raw(idx_, valid_.bytes() + std::string(4, '\0'));  // int8 sequence modes
  expect_open_error(prefix_, idx_, "trailing bytes");
}

TEST_F(IndexedDatasetCorruptTest, BadMagic) {
  RawIndex r = valid_;
  r.magic = std::string("MMIDIDX\0\1", 9);
  write_idx(r);
  expect_open_error(prefix_, idx_, "bad magic");
  write_raw(idx_, "PK\3\4 this is a zip file");
  expect_open_error(prefix_, idx_, "bad magic");
}

TEST_F(IndexedDatasetCorruptTest, WrongVersion) {
  RawIndex r = valid_;
  r.version = 2;
  write_idx(r);
  expect_open_error(prefix_, idx_, "version 2 is not supported");
}

TEST_F(IndexedDatasetCorruptTest, UnknownDTypeCode) {
  for (uint8_t code : {0, 9, 255}) {
    RawIndex r = valid_;
    r.code = code;
    write_idx(r);
    expect_open_error(prefix_, idx_, "unknown dtype code " + std::to_string(code));
  }
}

TEST_F(IndexedDatasetCorruptTest, CountsThatOverflowWhenMultiplied) {
  // 12 * (2^62 + 1) wraps to 12 and 8 * (2^61 + 5) wraps to 40: a reader that multiplies in 64 bits
  // would find these counts fit the file exactly.
  RawIndex r = valid_;
  r.lengths = {3};
  r.pointers = {0};
  r.doc_idx = {0, 1};
  r.seq_count = (uint64_t{1} << 62) + 1;
  write_idx(r);
  expect_open_error(prefix_, idx_,
                    "sequence count 4611686018427387905 needs more than 18446744073709551615 bytes");

  r = valid_;
  r.doc_count = (uint64_t{1} << 61) + 5;
  write_idx(r);
  expect_open_error(prefix_, idx_, "document index count 2305843009213693957 needs more than");

  r = valid_;
  r.seq_count = std::numeric_limits<uint64_t>::max();
  r.doc_count = std::numeric_limits<uint64_t>::max();
  write_idx(r);
  expect_open_error(prefix_, idx_, "sequence count 18446744073709551615");
}

TEST_F(IndexedDatasetCorruptTest, ZeroDocumentIndices) {
  RawIndex r = RawIndex::of(8, 2, {});
  r.doc_idx = {};
  write_idx(r);
  write_raw(bin_, "");
  expect_open_error(prefix_, idx_, "document index count 0");
}

TEST_F(IndexedDatasetCorruptTest, PointerNotContiguous) {
  RawIndex r = valid_;
  r.pointers[2] += 2;  // a gap after the empty sequence
  write_idx(r);
  expect_open_error(prefix_, idx_,
                    "sequence 2 pointer 8 is not contiguous: the previous sequence ends at byte 6");
  r = valid_;
  r.pointers[0] = 2;
  write_idx(r);
  expect_open_error(prefix_, idx_,
                    "sequence 0 pointer 2 is not contiguous: the first sequence must start at byte 0");
  r = valid_;
  r.pointers[3] = 0;  // overlapping
  write_idx(r);
  expect_open_error(prefix_, idx_, "sequence 3 pointer 0 is not contiguous");
}

TEST_F(IndexedDatasetCorruptTest, LengthsSummingPastTheBin) {
  RawIndex r = valid_;
  r.lengths[3] = 6;
  write_idx(r);
  expect_open_error(prefix_, idx_,
                    "sequence 3 (length 6, uint16) ends at byte 22 of " + bin_ + ", past its size 20");
  r = valid_;
  r.lengths[0] = kInt32Max;
  write_idx(r);
  expect_open_error(prefix_, idx_, "sequence 0 (length 2147483647, uint16) ends at byte 4294967294");
}

TEST_F(IndexedDatasetCorruptTest, NegativeLength) {
  RawIndex r = valid_;
  r.lengths[1] = -1;
  write_idx(r);
  expect_open_error(prefix_, idx_, "sequence 1 has negative length -1");
}

TEST_F(IndexedDatasetCorruptTest, DocumentIndicesNotEndingAtS_NotStartingAtZero_Decreasing) {
  RawIndex r = valid_;
  r.doc_idx.back() = 3;
  write_idx(r);
  expect_open_error(
      prefix_, idx_,
      "the last document index (4) is 3, but document indices must end at the sequence count 4");
  r = valid_;
  r.doc_idx.back() = 5;
  write_idx(r);
  expect_open_error(prefix_, idx_, "must end at the sequence count 4");
  r = valid_;
  r.doc_idx[0] = 1;
  write_idx(r);
  expect_open_error(prefix_, idx_, "document index 0 is 1, but document indices must start at 0");
  r = valid_;
  r.doc_idx[2] = 0;
  write_idx(r);
  expect_open_error(prefix_, idx_, "document index 2 is 0, less than the previous 1");
}

TEST_F(IndexedDatasetCorruptTest, FloatDTypeOpensButReadRefuses) {
  RawIndex r = RawIndex::of(7, 4, {2, 1});
  write_idx(r);
  std::string bin;
  for (float v : {1.0f, 2.0f, 3.0f}) put(bin, v);
  write_raw(bin_, bin);
  IndexedDataset ds(prefix_);
  EXPECT_EQ(ds.dtype(), IndexedDType::F32);
  EXPECT_EQ(ds.total_tokens(), 3);
  int32_t out[2];
  expect_error([&] { ds.read(0, 0, 2, out); }, {prefix_, "dtype float32"});
  expect_error([&] { ds.check_vocab(10); }, {prefix_, "dtype float32"});
}

TEST_F(IndexedDatasetCorruptTest, Int64TokenOutsideInt32_RefusedOnRead) {
  RawIndex r = RawIndex::of(5, 8, {2});
  write_idx(r);
  std::string bin;
  put<int64_t>(bin, 5);
  put<int64_t>(bin, int64_t{1} << 40);
  write_raw(bin_, bin);
  IndexedDataset ds(prefix_);
  int32_t out[2];
  ds.read(0, 0, 1, out);
  EXPECT_EQ(out[0], 5);
  expect_error([&] { ds.read(0, 0, 2, out); },
               {bin_, "sequence 0 token 1 is 1099511627776", "does not fit int32"});
  expect_error([&] { ds.check_vocab(100); }, {"document 0 (sequence 0) token 1 has id 1099511627776"});
}

// ---------------------------------------------------------------------------------------------
// The independent Python reader.

#ifdef AMPIPE_SOURCE_DIR
// stdout of `command` and its exit status.
std::string run_command(const std::string& command, int* status) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *status = -1;
    return "";
  }
  std::string out;
  char chunk[1 << 16];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof(chunk), pipe)) > 0) out.append(chunk, n);
  *status = ::pclose(pipe);
  return out;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find('\n', start);
    if (end == std::string::npos) end = s.size();
    lines.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string join_tokens(const std::vector<int32_t>& doc) {
  std::string line;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (i > 0) line.push_back(' ');
    line.append(std::to_string(doc[i]));
  }
  return line;
}
#endif

TEST_F(IndexedDatasetTest, PythonReader_AgreesDocumentByDocument) {
#ifndef AMPIPE_SOURCE_DIR
  GTEST_SKIP() << "AMPIPE_SOURCE_DIR is not defined: cannot find tests/scripts/read_indexed_dataset.py";
#else
  if (std::system("python3 -c pass >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 on PATH";
  const std::string script = std::string(AMPIPE_SOURCE_DIR) + "/tests/scripts/read_indexed_dataset.py";
  for (IndexedDType dtype : {IndexedDType::U16, IndexedDType::I32, IndexedDType::U8}) {
    SCOPED_TRACE(indexed_dtype_name(dtype));
    const int32_t max_id = dtype == IndexedDType::U8 ? 255 : dtype == IndexedDType::U16 ? 65535 : kInt32Max;
    Docs docs = mixed_documents(max_id, 4);
    for (int i = 0; i < 12; ++i) docs.push_back(std::vector<int32_t>(static_cast<size_t>(i), i));
    const std::string prefix = path(std::string("py_") + indexed_dtype_name(dtype));
    write_dataset(prefix, dtype, docs);

    int status = 0;
    const std::string out = run_command("python3 '" + script + "' '" + prefix + "' --dump", &status);
    ASSERT_EQ(status, 0) << out;
    std::vector<std::string> lines = split_lines(out);
    ASSERT_EQ(lines.size(), docs.size() + 1) << out.substr(0, 500);
    const nlohmann::json summary = nlohmann::json::parse(lines[0]);
    EXPECT_EQ(summary["dtype"], indexed_dtype_name(dtype));
    EXPECT_EQ(summary["sequences"], docs.size());
    EXPECT_EQ(summary["documents"], docs.size());
    int64_t total = 0;
    std::string tokens_le;
    for (const auto& d : docs) {
      total += static_cast<int64_t>(d.size());
      for (int32_t t : d) put<int64_t>(tokens_le, t);
    }
    EXPECT_EQ(summary["tokens"], total);
    std::vector<int64_t> head;
    for (size_t i = 0; i < 10 && i < docs.size(); ++i) head.push_back(static_cast<int64_t>(docs[i].size()));
    EXPECT_EQ(summary["document_lengths_head"].get<std::vector<int64_t>>(), head);
    for (size_t d = 0; d < docs.size(); ++d)
      EXPECT_EQ(lines[d + 1], join_tokens(docs[d])) << "document " << d;

    // sha256_of_tokens: over every token as int64 little-endian (hashed by Python's hashlib here).
    write_raw(path("tokens_le"), tokens_le);
    const std::string sha = run_command(
        "python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],\"rb\").read()).hexdigest())' "
        "'" +
            path("tokens_le") + "'",
        &status);
    ASSERT_EQ(status, 0);
    EXPECT_EQ(summary["sha256_of_tokens"].get<std::string>() + "\n", sha);
  }

  // The script refuses a malformed pair (a pointer with a gap) with exit status 1.
  RawIndex r = RawIndex::of(8, 2, {1, 1});
  r.pointers[1] = 4;
  write_raw(path("bad.idx"), r.bytes());
  write_raw(path("bad.bin"), std::string(4, '\0'));
  int status = 0;
  run_command("python3 '" + script + "' '" + path("bad") + "' 2>/dev/null", &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
#endif
}

}  // namespace
}  // namespace ampipe
