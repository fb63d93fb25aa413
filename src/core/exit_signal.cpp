#include "core/exit_signal.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

namespace ampipe {
namespace {

volatile std::sig_atomic_t g_received = 0;
const char* g_hint = "";  // set before the handlers are installed, then only read

void write_stderr(const char* text) {
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

void graceful_handler(int signal) {
  if (g_received != 0) {
    write_stderr("ampipe: a second signal: ending the run now, without a checkpoint\n");
    ::_exit(128 + signal);
  }
  g_received = signal;
  write_stderr("ampipe: received ");
  write_stderr(exit_signal_name(signal));
  write_stderr(
      ": saving a checkpoint and exiting at the next step boundary (a second signal ends the run at once)\n");
}

void naming_handler(int signal) {
  write_stderr("ampipe: received ");
  write_stderr(exit_signal_name(signal));
  write_stderr(": ending now");
  write_stderr(g_hint);
  write_stderr("\n");
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

}  // namespace

const char* exit_signal_name(int signal) {
  if (signal == SIGTERM) return "SIGTERM";
  if (signal == SIGINT) return "SIGINT";
  return "another signal";
}

void install_exit_signal_handlers(bool graceful, const char* hint) {
  g_hint = hint != nullptr ? hint : "";
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = graceful ? graceful_handler : naming_handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a read or write under way goes on
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

int exit_signal_received() { return g_received; }

}  // namespace ampipe
