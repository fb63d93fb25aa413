// Helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp).
//
// Contract of every harness: a parser may refuse an input only by throwing ampipe::Error; the harness
// catches that and nothing else, so any other exception ends the process (std::terminate -> abort,
// which libFuzzer reports as a crash). Crashes, sanitizer reports, timeouts and allocations past
// -malloc_limit_mb / -rss_limit_mb are findings too, as is a broken invariant of an accepted input
// (reported with fuzz::finding, which aborts).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"

namespace ampipe::fuzz {

// The input as a string (any bytes, NULs included).
inline std::string text_of(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// A scratch directory of this process: $TMPDIR (or /tmp)/ampipe-fuzz-<pid>, created on first use and
// removed when the process exits normally (a crashed run leaves it for inspection).
inline const std::string& scratch_dir() {
  // Never destroyed: the exit handler below runs after the destructors of function-local statics
  // constructed before it was registered, so it must not use one.
  static const std::string* const dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::filesystem::path p =
        std::filesystem::path(tmp && *tmp ? tmp : "/tmp") / ("ampipe-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    auto* path = new std::string(p.string());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return path;
  }();
  return *dir;
}

// Writes bytes to `path`, replacing it; aborts if that fails (the harness, not the parser, is broken).
inline void write_bytes(const std::string& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// An accepted input broke the parser's stated contract.
[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what.c_str());
  std::abort();
}

// Runs fn, swallowing ampipe::Error (a refusal) only. True if fn returned normally.
template <class Fn>
bool accepts(Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const ampipe::Error&) {
    return false;
  }
}

}  // namespace ampipe::fuzz
