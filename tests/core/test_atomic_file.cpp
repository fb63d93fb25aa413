// write_file_atomically: either the old or the complete new contents, never a temp file left behind.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "test_util.h"

namespace ampipe {
namespace {

using testing::error_of;

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "ampipe_atomic_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Names of all entries in the temp directory, sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
};

TEST_F(AtomicFileTest, WritesNewFileFromStreamAndFromBytes) {
  write_file_atomically(path("a"), [](std::ostream& out) { out << "hello " << 42; });
  EXPECT_EQ(read_file(path("a")), "hello 42");
  write_file_atomically(path("b"), std::string_view("raw\0bytes", 9));
  EXPECT_EQ(read_file(path("b")), std::string("raw\0bytes", 9));
  EXPECT_EQ(listing(), (std::vector<std::string>{"a", "b"}));
}

TEST_F(AtomicFileTest, ReplacesExistingFile) {
  write_file_atomically(path("f"), std::string_view("old contents that are longer"));
  write_file_atomically(path("f"), std::string_view("new"));
  EXPECT_EQ(read_file(path("f")), "new");
  EXPECT_EQ(listing(), (std::vector<std::string>{"f"}));
}

TEST_F(AtomicFileTest, LargeAndSmallWritesInterleaved_RoundTrip) {
  std::string big(300000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7919 % 251);
  std::string expected;
  write_file_atomically(path("big"), [&](std::ostream& out) {
    for (int i = 0; i < 3; ++i) {
      out << "header" << i;
      out.write(big.data(), static_cast<std::streamsize>(big.size() - i));
    }
  });
  for (int i = 0; i < 3; ++i) expected += "header" + std::to_string(i) + big.substr(0, big.size() - i);
  EXPECT_EQ(read_file(path("big")), expected);
}

TEST_F(AtomicFileTest, ExceptionFromWriter_LeavesPreviousFileIntactAndNoTempFile) {
  write_file_atomically(path("f"), std::string_view("previous"));
  EXPECT_THROW(write_file_atomically(path("f"),
                                     [](std::ostream& out) {
                                       out << std::string(100000, 'x');  // some of it reaches the disk
                                       throw std::runtime_error("writer failed midway");
                                     }),
               std::runtime_error);
  EXPECT_EQ(read_file(path("f")), "previous");
  EXPECT_EQ(listing(), (std::vector<std::string>{"f"}));
}

TEST_F(AtomicFileTest, ExceptionFromWriter_WithoutPreviousFile_CreatesNothing) {
  EXPECT_THROW(write_file_atomically(path("f"),
                                     [](std::ostream& out) {
                                       out << "partial";
                                       throw Error("stop");
                                     }),
               Error);
  EXPECT_TRUE(listing().empty());
}

TEST_F(AtomicFileTest, StreamFailureSetByWriter_IsAnError) {
  write_file_atomically(path("f"), std::string_view("previous"));
  std::string msg = error_of(
      [&] { write_file_atomically(path("f"), [](std::ostream& out) { out.setstate(std::ios::failbit); }); });
  EXPECT_NE(msg.find(path("f")), std::string::npos) << msg;
  EXPECT_NE(msg.find("stream reported a failure"), std::string::npos) << msg;
  EXPECT_EQ(read_file(path("f")), "previous");
  EXPECT_EQ(listing(), (std::vector<std::string>{"f"}));
}

TEST_F(AtomicFileTest, MissingDirectory_ErrorNamesPathAndOsError) {
  const std::string target = path("no_such_dir/f");
  std::string msg = error_of([&] { write_file_atomically(target, std::string_view("x")); });
  EXPECT_NE(msg.find(target), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(ENOENT)), std::string::npos) << msg;
}

// A full disk, simulated with a file-size limit: write(2) then fails with EFBIG instead of ENOSPC,
// through the same code path.
TEST_F(AtomicFileTest, WriteFailsMidway_ErrorNamesOsError_PreviousFileIntact_NoTempFile) {
  write_file_atomically(path("f"), std::string_view("previous"));
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = 100000;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  std::string msg = error_of([&] {
    write_file_atomically(path("f"), [](std::ostream& out) {
      for (int i = 0; i < 100; ++i) out << std::string(10000, 'y');
    });
  });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, saved_handler);
  EXPECT_NE(msg.find(path("f")), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(EFBIG)), std::string::npos) << msg;
  EXPECT_EQ(read_file(path("f")), "previous");
  EXPECT_EQ(listing(), (std::vector<std::string>{"f"}));
}

TEST_F(AtomicFileTest, RelativePathWithoutDirectory_Works) {
  const fs::path saved = fs::current_path();
  fs::current_path(dir_);
  write_file_atomically("plain_name", std::string_view("here"));
  fs::current_path(saved);
  EXPECT_EQ(read_file(path("plain_name")), "here");
  EXPECT_EQ(listing(), (std::vector<std::string>{"plain_name"}));
}

TEST_F(AtomicFileTest, ReadFile_MissingOrDirectory_ErrorNamesPathAndOsError) {
  std::string msg = error_of([&] { read_file(path("missing")); });
  EXPECT_NE(msg.find(path("missing")), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(ENOENT)), std::string::npos) << msg;
  msg = error_of([&] { read_file(dir_); });
  EXPECT_NE(msg.find(dir_), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(EISDIR)), std::string::npos) << msg;
}

TEST_F(AtomicFileTest, ReadFile_EmptyFile) {
  write_file_atomically(path("empty"), std::string_view());
  EXPECT_EQ(read_file(path("empty")), "");
}

TEST_F(AtomicFileTest, PrepareOutputFileCreatesMissingDirectoriesAndLeavesNoFileBehind) {
  prepare_output_file("--trace", path("a/b/t.json"));
  EXPECT_TRUE(fs::is_directory(path("a/b")));
  EXPECT_FALSE(fs::exists(path("a/b/t.json"))) << "only readied, not written";
  EXPECT_TRUE(fs::is_empty(path("a/b"))) << "the probe file is removed";
  write_file_atomically(path("kept"), "old");
  prepare_output_file("--metrics-file", path("kept"));  // an existing writable file is fine, untouched
  EXPECT_EQ(read_file(path("kept")), "old");
}

TEST_F(AtomicFileTest, PrepareOutputFileRefusesAPathThatCannotBeWrittenNamingFlagAndPath) {
  write_file_atomically(path("file"), "x");
  try {
    prepare_output_file("--json-out", path("file/sub/out.jsonl"));
    FAIL() << "a path below a regular file was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--json-out '" + path("file/sub/out.jsonl") + "'"), std::string::npos) << what;
    EXPECT_NE(what.find("cannot create the directory"), std::string::npos) << what;
  }
  fs::create_directories(path("dir"));
  try {
    prepare_output_file("--trace", path("dir"));
    FAIL() << "a directory was accepted as an output file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ampipe
