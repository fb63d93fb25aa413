#include "cli/command_line.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>

namespace ampipe {
namespace {

// Edits (insert, delete, replace, swap two neighbours) that turn a into b.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] =
          std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

std::vector<CLI::App*> subcommands_of(CLI::App& app) {
  return app.get_subcommands([](CLI::App* sub) { return !sub->get_name().empty(); });
}

CLI::App* find_subcommand(CLI::App& app, const std::string& name) {
  for (CLI::App* sub : subcommands_of(app))
    if (sub->get_name() == name) return sub;
  return nullptr;
}

std::string command_names(CLI::App& app) {
  std::string names;
  for (CLI::App* sub : subcommands_of(app)) names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

// The deepest subcommand named in argv, and its words ("tokenizer train"; "" for ampipe itself).
struct Command {
  CLI::App* app = nullptr;
  std::string path;
  std::string unknown;  // a word where a subcommand was expected, not one
};

Command named_command(CLI::App& root, int argc, char** argv) {
  Command c;
  c.app = &root;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.empty() || arg[0] == '-') break;
    if (subcommands_of(*c.app).empty()) break;
    CLI::App* sub = find_subcommand(*c.app, arg);
    if (sub == nullptr) {
      c.unknown = arg;
      break;
    }
    c.app = sub;
    c.path += (c.path.empty() ? "" : " ") + arg;
  }
  return c;
}

// The long flag names of a command (its own and its option groups').
std::vector<std::string> flag_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::Option* opt : app.get_options())
    for (const std::string& name : opt->get_lnames()) names.push_back("--" + name);
  return names;
}

// "train: " before a subcommand's message; "ampipe train --help".
std::string prefix(const Command& c) { return c.path.empty() ? "" : c.path + ": "; }
std::string help(const Command& c) { return "ampipe " + (c.path.empty() ? "" : c.path + " ") + "--help"; }

// The first flag of argv that `command` does not know, with the nearest known one.
std::string unknown_flag_message(const Command& command, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") continue;
    arg = arg.substr(0, arg.find('='));
    if (command.app->get_option_no_throw(arg) != nullptr) continue;
    std::string text = prefix(command) + "unknown flag '" + arg + "'";
    const std::string near = nearest_name(arg, flag_names(*command.app));
    if (!near.empty()) text += "; did you mean " + near + "?";
    return text + " (" + help(command) + " lists them)";
  }
  return "";
}

std::string describe(CLI::App& app, const CLI::ParseError& e, int argc, char** argv) {
  const Command command = named_command(app, argc, argv);
  if (!command.unknown.empty()) {
    std::string text = prefix(command) + "unknown command '" + command.unknown + "'";
    std::vector<std::string> names;
    for (CLI::App* sub : subcommands_of(*command.app)) names.push_back(sub->get_name());
    const std::string near = nearest_name(command.unknown, names);
    if (!near.empty()) text += "; did you mean " + near + "?";
    return text + " (the commands: " + command_names(*command.app) + ")";
  }
  if (!subcommands_of(*command.app).empty() && command.app->get_subcommands().empty() &&
      dynamic_cast<const CLI::RequiredError*>(&e) != nullptr)
    return prefix(command) + "a command is needed: " + command_names(*command.app) + " (" + help(command) +
           ")";
  const std::string flag = unknown_flag_message(command, argc, argv);
  if (!flag.empty()) return flag;
  return prefix(command) + e.what() + " (" + help(command) + ")";
}

}  // namespace

std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(1, name.size() / 3) + 1;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(name, c);
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

int parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "ampipe: error: %s\n", describe(app, e, argc, argv).c_str());
    return 1;
  } catch (const std::exception& e) {  // a flag's own check (ampipe::Error)
    std::fprintf(stderr, "ampipe: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace ampipe
