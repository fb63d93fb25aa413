// Running the `ampipe` binary from a test: its exit status and everything it printed.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace ampipe::testing {

struct RunResult {
  int status = -1;
  std::string output;  // stdout and stderr together
};

// The binary under test: $AMPIPE_BINARY (set by CTest), else ./ampipe.
inline std::string ampipe_binary() {
  const char* env = std::getenv("AMPIPE_BINARY");
  return env ? env : "./ampipe";
}

// Runs `ampipe ARGS` through the shell (ARGS is shell text) and collects its output.
inline RunResult run_ampipe(const std::string& args) {
  RunResult r;
  const std::string cmd = ampipe_binary() + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace ampipe::testing
