// How a run ends on SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C).
//
// install_exit_signal_handlers(true) (train --exit-signal-handler, Megatron-LM's flag): the first
// SIGTERM or SIGINT is only recorded, with a line on stderr; the trainer polls
// exit_signal_received() at each step boundary, agrees with the other ranks, saves a checkpoint and
// ends normally. A second signal ends the process at once (exit status 128 + the signal).
// install_exit_signal_handlers(false, hint): the signal is named on stderr (followed by `hint`, a
// string that must outlive the process, e.g. how to save a checkpoint instead) and then ends the
// process as it would have without a handler (killed by that signal), so no run ends without a word.
// The handlers only write to stderr and store an int: async-signal-safe. Call from the main thread.
#pragma once

namespace ampipe {

void install_exit_signal_handlers(bool graceful, const char* hint = "");

// The first SIGTERM / SIGINT received since install_exit_signal_handlers(true); 0 for none.
int exit_signal_received();

// "SIGTERM", "SIGINT", else "another signal".
const char* exit_signal_name(int signal);

}  // namespace ampipe
