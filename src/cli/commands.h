// Setup functions of every subcommand, one per table entry in commands.cc. Each declares the
// command's flags on `app` and returns the Runner that does the work.
#pragma once

#include "cli/command.h"

namespace ds::cli {

Runner SetupBenchmark(CLI::App& app, Globals& g);
Runner SetupVault(CLI::App& app, Globals& g);

}  // namespace ds::cli
