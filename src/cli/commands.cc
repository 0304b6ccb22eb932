#include "cli/command.h"
#include "cli/commands.h"

namespace ds::cli {

Runner Dispatch(std::vector<std::pair<CLI::App*, Runner>> subs) {
  return [subs = std::move(subs)]() -> Status {
    for (const auto& [app, run] : subs)
      if (app->parsed()) return run();
    return InvalidArgument("no command given (see --help)");
  };
}

// The one table. Each entry's setup lives with its area (cmd_*.cc).
static const Command kCommands[] = {
    {"benchmark", "measure PBKDF and cipher speed on this machine", SetupBenchmark},
    {"vault", "run the key vault, manage its tokens, use it from scripts", SetupVault},
};

std::span<const Command> CommandTable() { return kCommands; }

}  // namespace ds::cli
