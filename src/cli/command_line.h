// Parsing ampipe's command line, and what a user sees when it is wrong: every refusal is one line
// on stderr ("ampipe: error: ...") and exit status 1 (docs/USAGE.md), an unknown flag or command
// comes with the nearest known one ("did you mean --num-layers?"), and --help / --version print
// and exit 0.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace ampipe {

// Parses argv into `app` (whose subcommands and flags are registered). Returns -1 when the command
// should run, else the exit status (0 after --help / --version, 1 after a refusal, printed).
int parse_command_line(CLI::App& app, int argc, char** argv);

// The candidate nearest to `name` by edit distance, if near enough to be a likely typo
// (at most a third of its length, and at least 1, of edits); "" otherwise.
std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates);

}  // namespace ampipe
