// safetensors: round trips, the exact byte layout, and refusal of every kind of malformed file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "test_util.h"
#include "train/safetensors.h"

namespace ampipe {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "ampipe_safetensors_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

std::string length_prefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return prefix;
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

// A file with the given JSON header (unpadded) followed by `data_bytes` zero bytes.
std::string raw_file(const std::string& header, size_t data_bytes) {
  return length_prefix(header.size()) + header + std::string(data_bytes, '\0');
}

// The message of the ampipe::Error that reading `path` throws; fails the test if none.
std::string read_error(const std::string& path) {
  try {
    read_safetensors(path);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "read_safetensors accepted a malformed file";
  return "";
}

void expect_read_error(const std::string& path, const std::string& expected) {
  const std::string msg = read_error(path);
  EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
  EXPECT_NE(msg.find(expected), std::string::npos) << "expected '" << expected << "' in: " << msg;
}

std::vector<int32_t> int_values(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

TEST_F(SafetensorsTest, RoundTrip_F32AndI32_MultipleTensorsAndMetadata) {
  Tensor weight = testing::random_tensor({3, 4}, 1);
  Tensor bias = testing::random_tensor({4}, 2);
  Tensor experts = testing::random_tensor({2, 3, 5}, 3);
  Tensor ids = Tensor::from_ints({2, 3}, {1, -2, 3, 2147483647, -2147483647 - 1, 0});
  Tensor scalar = Tensor::from({}, {0.5f});
  std::map<std::string, std::string> metadata = {{"hidden_size", "4"}, {"tokenizer", "byte"}, {"empty", ""}};
  write_safetensors(path("m.safetensors"),
                    {{"blocks.0.attn.proj.weight", weight},
                     {"blocks.0.attn.proj.bias", bias},
                     {"blocks.0.moe.fc1.weight", experts},
                     {"ids", ids},
                     {"scalar", scalar}},
                    metadata);

  SafetensorsFile file = read_safetensors(path("m.safetensors"));
  EXPECT_EQ(file.metadata, metadata);
  ASSERT_EQ(file.tensors.size(), 5u);
  for (const auto& [name, original] :
       std::vector<std::pair<std::string, Tensor>>{{"blocks.0.attn.proj.weight", weight},
                                                   {"blocks.0.attn.proj.bias", bias},
                                                   {"blocks.0.moe.fc1.weight", experts},
                                                   {"scalar", scalar}}) {
    const Tensor& t = file.tensors.at(name);
    EXPECT_EQ(t.dtype(), DType::F32) << name;
    EXPECT_EQ(t.shape(), original.shape()) << name;
    EXPECT_EQ(t.to_vector(), original.to_vector()) << name;  // bit-exact
  }
  const Tensor& read_ids = file.tensors.at("ids");
  EXPECT_EQ(read_ids.dtype(), DType::I32);
  EXPECT_EQ(read_ids.shape(), (Shape{2, 3}));
  EXPECT_EQ(int_values(read_ids), int_values(ids));
}

TEST_F(SafetensorsTest, RoundTrip_NonContiguousViews) {
  Tensor fused = testing::random_tensor({4, 9}, 7);  // e.g. a QKV buffer; take the K columns
  Tensor k = fused.cols(3, 6);
  ASSERT_FALSE(k.is_contiguous());
  Tensor ints = Tensor::from_ints({3, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  Tensor int_cols = ints.cols(1, 3);
  write_safetensors(path("v.safetensors"), {{"k", k}, {"rows", fused.rows(1, 3)}, {"int_cols", int_cols}},
                    {});

  SafetensorsFile file = read_safetensors(path("v.safetensors"));
  EXPECT_TRUE(file.metadata.empty());
  EXPECT_EQ(file.tensors.at("k").shape(), (Shape{4, 3}));
  EXPECT_EQ(file.tensors.at("k").to_vector(), k.to_vector());
  EXPECT_EQ(file.tensors.at("rows").to_vector(), fused.rows(1, 3).to_vector());
  EXPECT_EQ(int_values(file.tensors.at("int_cols")), (std::vector<int32_t>{1, 2, 5, 6, 9, 10}));
}

TEST_F(SafetensorsTest, RoundTrip_ZeroElementTensorsAndEmptyFile) {
  write_safetensors(path("z.safetensors"),
                    {{"a", Tensor::zeros({0, 4})},
                     {"b", Tensor::from({2}, {1.5f, -2.5f})},
                     {"c", Tensor::zeros({3, 0}, DType::I32)}},
                    {{"k", "v"}});
  SafetensorsFile file = read_safetensors(path("z.safetensors"));
  EXPECT_EQ(file.tensors.at("a").shape(), (Shape{0, 4}));
  EXPECT_EQ(file.tensors.at("c").shape(), (Shape{3, 0}));
  EXPECT_EQ(file.tensors.at("c").dtype(), DType::I32);
  EXPECT_EQ(file.tensors.at("b").to_vector(), (std::vector<float>{1.5f, -2.5f}));

  write_safetensors(path("empty.safetensors"), {}, {});
  EXPECT_EQ(read_file(path("empty.safetensors")), length_prefix(8) + "{}      ");
  file = read_safetensors(path("empty.safetensors"));
  EXPECT_TRUE(file.tensors.empty());
  EXPECT_TRUE(file.metadata.empty());
}

// Hand-computed: the header JSON below is 133 bytes, padded with 3 spaces to 136 = 0x88; tensors in
// the given order (not sorted by name); 1.0f = 00 00 80 3f, 2.0f = 00 00 00 40, 7 = 07 00 00 00.
TEST_F(SafetensorsTest, ByteLayout_TinyFile_MatchesHandComputedBytes) {
  write_safetensors(path("t.safetensors"),
                    {{"w", Tensor::from({2}, {1.0f, 2.0f})}, {"b", Tensor::from_ints({1}, {7})}},
                    {{"k", "v"}});
  const std::string header = R"({"__metadata__":{"k":"v"},)"
                             R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}})";
  ASSERT_EQ(header.size(), 133u);
  const std::string expected = std::string("\x88\0\0\0\0\0\0\0", 8) + header + "   " +
                               std::string("\0\0\x80\x3f\0\0\0\x40\x07\0\0\0", 12);
  const std::string actual = read_file(path("t.safetensors"));
  ASSERT_EQ(actual.size(), 156u);
  EXPECT_EQ(actual, expected);
}

TEST_F(SafetensorsTest, WriteReplacesExistingFileAtomically) {
  write_safetensors(path("f"), {{"a", Tensor::from({1}, {1.0f})}}, {});
  write_safetensors(path("f"), {{"b", Tensor::from({1}, {2.0f})}}, {});
  SafetensorsFile file = read_safetensors(path("f"));
  ASSERT_EQ(file.tensors.size(), 1u);
  EXPECT_EQ(file.tensors.at("b").to_vector(), (std::vector<float>{2.0f}));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(SafetensorsTest, WriteRefusesDuplicateOrReservedNames) {
  Tensor t = Tensor::from({1}, {1.0f});
  EXPECT_THROW(write_safetensors(path("f"), {{"a", t}, {"a", t}}, {}), Error);
  EXPECT_THROW(write_safetensors(path("f"), {{"__metadata__", t}}, {}), Error);
  EXPECT_THROW(write_safetensors(path("f"), {{"u", Tensor()}}, {}), Error);
  EXPECT_FALSE(fs::exists(path("f")));
}

TEST_F(SafetensorsTest, Read_MissingFile_NamesOsError) {
  expect_read_error(path("missing"), std::strerror(ENOENT));
}

TEST_F(SafetensorsTest, Read_TruncatedAtAnyPoint_IsRefused) {
  write_safetensors(path("t"), {{"w", Tensor::from({2}, {1.0f, 2.0f})}, {"b", Tensor::from_ints({1}, {7})}},
                    {{"k", "v"}});
  const std::string full = read_file(path("t"));  // 8 + 136 + 12 = 156 bytes
  const std::vector<std::pair<size_t, std::string>> cuts = {{0, "shorter than the 8-byte header length"},
                                                            {5, "shorter than the 8-byte header length"},
                                                            {8, "larger than the file"},
                                                            {50, "larger than the file"},
                                                            {143, "larger than the file"},
                                                            {144, "beyond the data buffer"},
                                                            {150, "beyond the data buffer"},
                                                            {155, "beyond the data buffer"}};
  for (const auto& [size, expected] : cuts) {
    SCOPED_TRACE("truncated to " + std::to_string(size) + " bytes");
    write_raw(path("cut"), full.substr(0, size));
    expect_read_error(path("cut"), expected);
  }
}

TEST_F(SafetensorsTest, Read_WrongHeaderLength_IsRefused) {
  write_safetensors(path("t"), {{"w", Tensor::from({2}, {1.0f, 2.0f})}, {"b", Tensor::from_ints({1}, {7})}},
                    {{"k", "v"}});
  const std::string full = read_file(path("t"));
  const std::vector<std::pair<uint64_t, std::string>> lengths = {
      {136 | (uint64_t{1} << 56), "absurd"},  // high byte flipped
      {uint64_t{1} << 63, "absurd"},
      {100'000'001, "absurd"},
      {100000, "larger than the file"},
      {130, "not valid JSON"},   // cuts the JSON short
      {137, "NUL byte"},         // swallows the first data byte (0x00)
      {135, "trailing bytes"}};  // valid JSON, but the buffer starts one byte early
  for (const auto& [length, expected] : lengths) {
    SCOPED_TRACE("header length " + std::to_string(length));
    write_raw(path("bad"), length_prefix(length) + full.substr(8));
    expect_read_error(path("bad"), expected);
  }
}

TEST_F(SafetensorsTest, Read_MalformedHeaders_AreRefusedWithTheProblemNamed) {
  const std::string ok = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  struct Case {
    std::string header;
    size_t data_bytes;
    std::string expected;
  };
  const std::vector<Case> cases = {
      // Not JSON, or not an object.
      {"", 0, "not valid JSON"},
      {"{", 0, "not valid JSON"},
      {R"({"a":{)" + ok + "}} x", 8, "not valid JSON"},
      {"{\"\xff\":1}", 0, "not valid JSON"},  // invalid UTF-8
      {"[1,2]", 0, "not a JSON object"},
      {R"({"a":{)" + ok + R"(},"a":{)" + ok + "}}", 8, "'a' twice"},
      {R"({"a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8, "'dtype' twice"},
      // Entries with missing fields or wrong JSON types.
      {R"({"a":5})", 0, "entry is not a JSON object"},
      {R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8, "missing \"dtype\""},
      {R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8, "missing \"shape\""},
      {R"({"a":{"dtype":"F32","shape":[2]}})", 8, "missing \"data_offsets\""},
      {R"({"a":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", 8, "\"dtype\" is not a string"},
      {R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", 8, "unsupported dtype 'BF16'"},
      {R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", 8, "unsupported dtype 'f32'"},
      {R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8, "\"shape\" is not an array"},
      {R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8, "non-integer"},
      {R"({"a":{"dtype":"F32","shape":[true],"data_offsets":[0,8]}})", 8, "non-integer"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "negative dimension"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, "overflows"},
      {R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8, "overflows"},
      {R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8, "overflows"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8, "is not [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8, "is not [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", 8, "is not [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":{"begin":0}}})", 8, "is not [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8, "is not [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, "begin > end"},
      // Offsets that disagree with the buffer or with each other.
      {R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, "beyond the data buffer"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", 8,
       "beyond the data buffer"},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "wrong length"},
      {R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,8]}})", 8, "wrong length"},
      {R"({"a":{)" + ok + R"(},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, "overlap"},
      {R"({"a":{)" + ok + R"(},"b":{)" + ok + "}}", 8, "overlap"},
      {R"({"a":{)" + ok + R"(},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20, "gap"},
      {R"({"a":{)" + ok + "}}", 12, "4 trailing bytes"},
      // Metadata.
      {R"({"__metadata__":{"k":1}})", 0, "metadata value for 'k' is not a string"},
      {R"({"__metadata__":{"k":null}})", 0, "metadata value for 'k' is not a string"},
      {R"({"__metadata__":["k","v"]})", 0, "\"__metadata__\" is not a JSON object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    write_raw(path("bad"), raw_file(c.header, c.data_bytes));
    expect_read_error(path("bad"), c.expected);
  }
}

// Fuzzing finding (tests/fuzz/fuzz_safetensors.cpp): a zero-element tensor whose other dimensions
// multiply past int64 passed the header checks, and Tensor::empty overflowed computing its strides
// (signed overflow, UBSan). Both readers refuse it now, naming the shape.
TEST_F(SafetensorsTest, Read_ZeroElementShapeWhoseStridesOverflow_IsRefused) {
  for (const std::string shape :
       {"[0,4294967296,4294967296]", "[4294967296,0,4294967296]", "[3,0,9223372036854775807]"}) {
    SCOPED_TRACE(shape);
    write_raw(path("bad"),
              raw_file(R"({"a":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,0]}})", 0));
    expect_read_error(path("bad"), "tensor 'a': shape " + shape + " overflows");
    try {
      read_safetensors_header(path("bad"));
      ADD_FAILURE() << "read_safetensors_header accepted " << shape;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("overflows"), std::string::npos) << e.what();
    }
  }
  // Zero elements with dimensions that do fit are fine.
  write_raw(path("ok"),
            raw_file(R"({"a":{"dtype":"F32","shape":[0,4294967296,2],"data_offsets":[0,0]}})", 0));
  EXPECT_EQ(read_safetensors(path("ok")).tensors.at("a").shape(), (Shape{0, 4294967296, 2}));
}

TEST_F(SafetensorsTest, Read_AcceptsValidFilesFromOtherWriters) {
  // Unpadded header, whitespace, tensors listed out of buffer order, an extra field, no metadata.
  const std::string header =
      "{ \"b\": {\"dtype\": \"I32\", \"shape\": [], \"data_offsets\": [8, 12]},\n"
      "  \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8], \"extra\": 1} }";
  write_raw(path("other"),
            length_prefix(header.size()) + header + std::string("\0\0\x80\x3f\0\0\0\x40\x07\0\0\0", 12));
  SafetensorsFile file = read_safetensors(path("other"));
  EXPECT_EQ(file.tensors.at("a").to_vector(), (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(file.tensors.at("b").shape(), Shape{});
  EXPECT_EQ(int_values(file.tensors.at("b")), (std::vector<int32_t>{7}));
}

}  // namespace
}  // namespace ampipe
