// Errors a user can act on.
//
// AMPIPE_CHECK(cond) << "message" throws ampipe::Error when cond is false; the message should name
// the bad value and say what is allowed ("--moe-top-k 5 exceeds --moe-num-experts 4; top-k must be
// in [1, experts]"). Errors are exceptions inside the engine; the CLI catches them at its edge and
// turns them into one line on stderr and a non-zero exit.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace ampipe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
// Collects a message with operator<< and throws it when destroyed (only built on failure).
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition) {
    (void)file;
    (void)line;
    (void)condition;
  }
  template <class T>
  CheckFailure& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }
  [[noreturn]] ~CheckFailure() noexcept(false) { throw Error(stream_.str()); }

 private:
  std::ostringstream stream_;
};
}  // namespace detail

}  // namespace ampipe

// Usage: AMPIPE_CHECK(n > 0) << "n must be positive, got " << n;
#define AMPIPE_CHECK(cond) \
  if (cond) {              \
  } else                   \
    ::ampipe::detail::CheckFailure(__FILE__, __LINE__, #cond)
