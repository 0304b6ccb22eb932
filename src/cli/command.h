// The CLI's shape: one table of subcommands (commands.cc), each a name, a one-line summary and a
// setup function that declares its flags and returns the function that runs it after parsing.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <iosfwd>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::cli {

// What every command may use. Owned by main(); outlives every Runner.
struct Globals {
  Env* env = nullptr;
  std::ostream* out = nullptr;  // results (text or JSON)
  std::ostream* err = nullptr;  // diagnostics and progress
  bool json = false;            // set by commands that accept --json
};

using Runner = std::function<Status()>;

struct Command {
  const char* name;
  const char* summary;
  Runner (*setup)(CLI::App& app, Globals& g);
};

// The one table of subcommands, in the order `diskseal --help` lists them.
std::span<const Command> CommandTable();

// For commands with their own subcommands (keyslot add|remove ...): runs the one that was parsed.
Runner Dispatch(std::vector<std::pair<CLI::App*, Runner>> subs);

}  // namespace ds::cli
