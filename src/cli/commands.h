// Setup functions of every subcommand, one per table entry in commands.cc. Each declares the
// command's flags on `app` and returns the Runner that does the work.
#pragma once

#include "cli/command.h"
#include "cli/vault_options.h"

namespace ds::cli {

Runner SetupBenchmark(CLI::App& app, Globals& g);
// LUKS2 (cmd_luks.cc)
Runner SetupFormat(CLI::App& app, Globals& g);
Runner SetupDump(CLI::App& app, Globals& g);
Runner SetupTestKey(CLI::App& app, Globals& g);
Runner SetupKeyslot(CLI::App& app, Globals& g);
Runner SetupToken(CLI::App& app, Globals& g);
Runner SetupHeader(CLI::App& app, Globals& g);
Runner SetupRepair(CLI::App& app, Globals& g);
Runner SetupImport(CLI::App& app, Globals& g);
Runner SetupExport(CLI::App& app, Globals& g);
// In-place engine (cmd_engine.cc)
Runner SetupEncrypt(CLI::App& app, Globals& g);
Runner SetupDecrypt(CLI::App& app, Globals& g);
Runner SetupReencrypt(CLI::App& app, Globals& g);
Runner SetupResume(CLI::App& app, Globals& g);
Runner SetupRecover(CLI::App& app, Globals& g);
// Key vault (cmd_vault.cc)
Runner SetupVault(CLI::App& app, Globals& g);
// Opening volumes (cmd_open.cc)
Runner SetupOpen(CLI::App& app, Globals& g);
Runner SetupClose(CLI::App& app, Globals& g);
Runner SetupList(CLI::App& app, Globals& g);
// Machine checks (cmd_machine.cc)
Runner SetupDoctor(CLI::App& app, Globals& g);
// The machine workflow (cmd_enable.cc)
Runner SetupEnable(CLI::App& app, Globals& g);
Runner SetupDisable(CLI::App& app, Globals& g);
Runner SetupStatus(CLI::App& app, Globals& g);
// resume --all: every volume the state directory records (cmd_enable.cc).
Status ResumeAll(Globals& g, const std::string& state_dir, const VaultOptions& vault, uint64_t hotzone,
                 bool progress_json, int freeze_at_percent = -1);

}  // namespace ds::cli
