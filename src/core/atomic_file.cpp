#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <streambuf>
#include <system_error>
#include <vector>

#include "core/error.h"

namespace ampipe {

namespace {

// strerror text, thread-safe.
std::string os_error(int err) { return std::error_code(err, std::generic_category()).message(); }


// An output streambuf over a POSIX file descriptor that remembers the errno of the first failed
// write, so the caller can report ENOSPC and friends precisely (std::ofstream loses them).
class FdStreambuf : public std::streambuf {
 public:
  explicit FdStreambuf(int fd) : fd_(fd), buffer_(size_t{1} << 16) { reset_put_area(); }
  int error() const { return error_; }

 protected:
  int_type overflow(int_type ch) override {
    if (!flush_buffer()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }

  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n < static_cast<std::streamsize>(buffer_.size()) / 2) return std::streambuf::xsputn(s, n);
    // Large blocks (tensor data) bypass the buffer.
    if (!flush_buffer()) return 0;
    error_ = write_all(fd_, s, static_cast<size_t>(n));
    return error_ == 0 ? n : 0;
  }

  int sync() override { return flush_buffer() ? 0 : -1; }

 private:
  int fd_;
  std::vector<char> buffer_;
  int error_ = 0;

  void reset_put_area() { setp(buffer_.data(), buffer_.data() + buffer_.size()); }

  bool flush_buffer() {
    if (error_ != 0) return false;
    error_ = write_all(fd_, pbase(), static_cast<size_t>(pptr() - pbase()));
    reset_put_area();
    return error_ == 0;
  }
};

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw Error("cannot write '" + path + "': " + what + ": " + os_error(err));
}

}  // namespace

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "creating temporary file '" + tmp + "' failed", errno);
  try {
    FdStreambuf buf(fd);
    std::ostream out(&buf);
    write(out);
    out.flush();
    if (!out) {
      if (buf.error() != 0) fail(path, "writing '" + tmp + "' failed", buf.error());
      throw Error("cannot write '" + path + "': the output stream reported a failure");
    }
    if (::fsync(fd) != 0) fail(path, "fsync of '" + tmp + "' failed", errno);
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) fail(path, "closing '" + tmp + "' failed", errno);
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail(path, "renaming '" + tmp + "' over it failed", errno);
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }

  // Make the rename itself durable.
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = std::filesystem::path(".");
  try {
    fsync_directory(dir.string());
  } catch (const Error& e) {
    throw Error("'" + path + "' was written, but " + e.what());
  }
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open directory '" + dir + "' to fsync it: " + os_error(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) throw Error("fsync of directory '" + dir + "' failed: " + os_error(err));
}

int write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t written = ::write(fd, p, n);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (written == 0) return EIO;
    p += written;
    n -= static_cast<size_t>(written);
  }
  return 0;
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  write_file_atomically(
      path, [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot read '" + path + "': " + os_error(errno));
  std::string contents;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) contents.reserve(static_cast<size_t>(st.st_size));
  char chunk[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw Error("cannot read '" + path + "': " + os_error(err));
    }
    if (n == 0) break;
    contents.append(chunk, static_cast<size_t>(n));
  }
  ::close(fd);
  return contents;
}

void prepare_output_file(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  const std::string where = flag + " '" + path + "'";
  AMPIPE_CHECK(!path.empty()) << flag << " needs a file name";
  std::error_code ec;
  AMPIPE_CHECK(!fs::is_directory(path, ec)) << where << " is a directory; give a file name";
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  fs::create_directories(parent, ec);
  if (ec) throw Error(where + ": cannot create the directory '" + parent.string() + "': " + ec.message());
  AMPIPE_CHECK(fs::is_directory(parent, ec)) << where << ": '" << parent.string() << "' is not a directory";
  if (fs::exists(path, ec) && ::access(path.c_str(), W_OK) != 0)
    throw Error(where + ": the file exists and cannot be written: " + os_error(errno));
  const std::string probe = (parent / (".ampipe-probe." + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(where + ": cannot create a file in '" + parent.string() + "': " + os_error(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace ampipe
