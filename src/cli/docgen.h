// Man pages and bash completion generated from the CLI11 tree that main() builds from the command
// table (commands.cc): the same names, flags and help strings as --help, so they cannot drift.
// Reached through hidden arguments of the binary itself (scripts/package runs them):
//   diskseal --help-man DIR          writes DIR/diskseal.8 and DIR/diskseal-<command>.8
//   diskseal --help-bash-completion  prints the bash completion script
#pragma once

#include <CLI/CLI.hpp>

#include <map>
#include <string>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::cli {

// Page file name -> roff text: "diskseal.8" for the program, one "diskseal-<command>.8" per
// top-level command (a command's own subcommands, such as keyslot add, are sections of its page).
// `version` goes into each page's footer.
std::map<std::string, std::string> ManPages(CLI::App& app, const std::string& version);

// A bash completion script for `diskseal`: commands, subcommands and each one's flags; after a
// flag that takes a value, and for positional arguments, bash's default (file names).
std::string BashCompletion(CLI::App& app);

// Writes ManPages() into `dir` (which must exist), one file each, 0644.
Status WriteManPages(Env& env, CLI::App& app, const std::string& version, const std::string& dir);

}  // namespace ds::cli
